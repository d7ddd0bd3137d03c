package agent

import (
	"context"
	"fmt"
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
	t.Parallel()
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

// reviewServer answers rules reviews with rulesStatus for the first failures asks, then
// with rules that allow everything; and access reviews with allowed. It counts both.
func reviewServer(t *testing.T, rulesStatus, failures int32) (*kubeapi.Client, *atomic.Int32, *atomic.Int32) {
	t.Helper()
	var rules, access atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/selfsubjectrulesreviews"):
			if rules.Add(1) <= failures {
				w.WriteHeader(int(rulesStatus))
				_, _ = fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":%d}`, rulesStatus)
				return
			}
			_, _ = w.Write([]byte(`{"status":{"resourceRules":[{"verbs":["*"],"apiGroups":["*"],"resources":["*"]}],"incomplete":false}}`))
		case strings.HasSuffix(r.URL.Path, "/selfsubjectaccessreviews"):
			access.Add(1)
			_, _ = w.Write([]byte(`{"status":{"allowed":true}}`))
		default:
			http.Error(w, "unexpected", http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	kc, err := kubeapi.New(&rest.Config{Host: srv.URL}, "ns")
	if err != nil {
		t.Fatal(err)
	}
	return kc, &rules, &access
}

func checkAccessOnce(t *testing.T, kc *kubeapi.Client) *engine {
	t.Helper()
	mgr, err := lock.NewManager(lock.ManagerConfig{Namespace: "ns", Identity: "p_u", Mutexes: []string{"db"},
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 200 * time.Millisecond, Client: kc, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{Manager: mgr, m: newMetrics()}
	o := NewOptions()
	o.Namespace, o.RetryPeriod = "ns", 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.checkAccess(ctx, kc, o, logr.Discard())
	if !e.allowed.Load() {
		t.Fatal("access not found allowed before the test's deadline")
	}
	return e
}

// A rules review that a busy API server could not answer (504, 429, 500) is asked
// again after a pause, not answered with one access review per request: that
// multiplied the requests to an API server already too busy (1.7 access reviews per
// agent when 1,000 started at once, BENCHMARKS.md, Scale).
func TestFailedRulesReviewIsAskedAgainNotReplacedByAccessReviews(t *testing.T) {
	t.Parallel()
	for _, code := range []int32{http.StatusGatewayTimeout, http.StatusTooManyRequests, http.StatusInternalServerError} {
		kc, rules, access := reviewServer(t, code, 2)
		checkAccessOnce(t, kc)
		if rules.Load() != 3 || access.Load() != 0 {
			t.Errorf("rules review answered %d twice: then %d rules reviews and %d access reviews, want 3 and 0", code, rules.Load(), access.Load())
		}
	}
}

// A server that will not review rules (403, 404) is asked with access reviews.
func TestRulesReviewRefusedFallsBackToAccessReviews(t *testing.T) {
	t.Parallel()
	for _, code := range []int32{http.StatusForbidden, http.StatusNotFound} {
		kc, rules, access := reviewServer(t, code, 1000)
		checkAccessOnce(t, kc)
		if rules.Load() != 1 || access.Load() == 0 {
			t.Errorf("rules review answered %d: %d rules reviews and %d access reviews, want 1 and some", code, rules.Load(), access.Load())
		}
	}
}
