package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// TestSIGTERMStopsEveryPartInOrder runs the agent with every listener on, a lock held
// and an event stream open, and sends SIGTERM: the stream hears "shutdown", the release
// is posted as a Kubernetes Event (the recorder stops after the holds are released),
// the agent exits 0 with no part failing, and both socket files are gone.
func TestSIGTERMStopsEveryPartInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	probeSocket := filepath.Join(t.TempDir(), "probe.sock")
	a := startAgent(t, "pod-order", "--locks=order", "--probe-socket="+probeSocket,
		fmt.Sprintf("--tcp-port=%d", testenv.FreePort(t)), fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", testenv.FreePort(t)))
	if _, err := a.c.Acquire(ctx, "order", 0, 0); err != nil {
		t.Fatal(err)
	}
	events := streamEvents(t, a, "order")

	a.signal(syscall.SIGTERM)
	if !waitEvent(events, lock.EventShutdown, leaseDuration) {
		t.Error("the event stream did not hear shutdown")
	}
	<-a.exited
	if a.err() != nil {
		t.Fatalf("agent exit after SIGTERM: %v", a.err())
	}
	log, _ := os.ReadFile(a.log)
	if strings.Contains(string(log), "Failed to run") || !strings.Contains(string(log), `"msg":"Stopped"`) {
		t.Errorf("want every part stopped without error, then Stopped:\n%s", log)
	}
	for _, sock := range []string{a.socket, probeSocket} {
		if _, err := os.Lstat(sock); err == nil {
			t.Errorf("the socket %s is still there after SIGTERM", sock)
		}
	}
	evs, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.uid", a.uid).String()})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range evs.Items {
		if e.Reason == "LockReleased" && strings.Contains(e.Message, "agent shutting down") {
			return
		}
		reasons = append(reasons, e.Reason+": "+e.Message)
	}
	t.Errorf("no LockReleased Event for the release at shutdown; the Pod's Events: %q", reasons)
}
