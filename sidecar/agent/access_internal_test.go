package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"

	"github.com/leasehold/leasehold/sidecar/kubeapi"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// An access review that waits in a busy API server's queues for longer than a few
// seconds is waited for, not given up and asked again (each ask is work the server does
// in full). The server here answers the rules review after 6 s.
func TestSlowAccessReviewIsNotAskedTwice(t *testing.T) {
	var reviews atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/selfsubjectrulesreviews") {
			http.Error(w, "unexpected", http.StatusNotFound)
			return
		}
		reviews.Add(1)
		select {
		case <-time.After(6 * time.Second):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":{"resourceRules":[{"verbs":["*"],"apiGroups":["*"],"resources":["*"]}],"incomplete":false}}`))
	}))
	defer srv.Close()
	kc, err := kubeapi.New(&rest.Config{Host: srv.URL}, "ns")
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := lock.NewManager(lock.ManagerConfig{Namespace: "ns", Identity: "p_u", Mutexes: []string{"db"},
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, Client: kc, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{Manager: mgr, m: newMetrics()}
	o := NewOptions()
	o.Namespace = "ns"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.checkAccess(ctx, kc, o, logr.Discard())
	if !e.allowed.Load() {
		t.Fatalf("access not found allowed before the test's deadline; the server was asked %d times", reviews.Load())
	}
	if n := reviews.Load(); n != 1 {
		t.Fatalf("the rules review was sent %d times, want once", n)
	}
}
