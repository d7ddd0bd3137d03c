package agent_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// Regression tests of the agent's shutdown and error paths against the real API server
// (issue 7 of the tracker): each failed before its fix.

// A request waiting in acquire when SIGTERM comes gets a JSON 503, never an empty 200:
// `curl -sf .../acquire?wait=30s && work` must not go ahead. Both kinds of waiter: a
// leader-lock waiter, and a mutex waiter queued behind another client of the same Pod.
func TestShutdownAnswersWaitersWith503(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-sd1", "--leader=sd-leader")
	waitFor(t, "A to lead", func() bool { return a.state("sd-leader").Held })
	b := startAgent(t, "pod-sd2", "--leader=sd-leader", "--locks=sd-mutex")
	if _, err := b.c.Acquire(ctx, "sd-mutex", 0, 0); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		code int
		body []byte
		err  error
	}
	leader, mutex := make(chan answer, 1), make(chan answer, 1)
	go func() {
		code, body, err := doPost(b, "/v1/locks/sd-leader/acquire?wait=30s")
		leader <- answer{code, body, err}
	}()
	go func() {
		code, body, err := doPost(b, "/v1/locks/sd-mutex/acquire?wait=30s")
		mutex <- answer{code, body, err}
	}()
	time.Sleep(300 * time.Millisecond) // both wait
	b.signal(syscall.SIGTERM)
	for name, ch := range map[string]chan answer{"leader waiter": leader, "mutex waiter": mutex} {
		select {
		case got := <-ch:
			var body struct {
				Error string `json:"error"`
			}
			if got.err != nil || got.code != 503 || json.Unmarshal(got.body, &body) != nil || !strings.Contains(body.Error, "shutting down") {
				t.Errorf("%s at SIGTERM: want a JSON 503 saying the agent shuts down, got %d %q %v", name, got.code, got.body, got.err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s got no answer within 10s of SIGTERM", name)
		}
	}
	<-b.exited
}

// The LockReleased Event of the holds released at SIGTERM reaches the API server: Events
// are posted until the holds are released (before the fix: "context canceled").
func TestSIGTERMRecordsLockReleasedEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-ev-term", "--locks=ev-term")
	if _, err := a.c.Acquire(ctx, "ev-term", 0, 0); err != nil {
		t.Fatal(err)
	}
	a.signal(syscall.SIGTERM)
	<-a.exited
	sel := fields.OneTermEqualSelector("involvedObject.name", a.pod).String()
	waitFor(t, "the LockReleased Event of the SIGTERM release", func() bool {
		evs, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == "LockReleased" && strings.Contains(e.Message, "shutting down") {
				return true
			}
		}
		return false
	})
}

// A Lease whose leaseTransitions is at its maximum cannot give a greater fencing token:
// acquire answers with the cause and the fix, instead of a 503 "API server unavailable"
// for ever.
func TestTokensExhaustedNamesTheFix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	empty, one, maxed := "", int32(1), int32(math.MaxInt32)
	old := metav1.NewMicroTime(time.Now().Add(-time.Hour))
	_, err := kube.CoordinationV1().Leases("default").Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "exhausted"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &empty, LeaseDurationSeconds: &one, LeaseTransitions: &maxed,
			AcquireTime: &old, RenewTime: &old},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "pod-exhausted", "--locks=exhausted")
	for _, path := range []string{"/v1/locks/exhausted/acquire", "/v1/locks/exhausted/acquire?wait=2s"} {
		code, body, err := doPost(a, path)
		if err != nil || code != 503 || !strings.Contains(string(body), "leaseTransitions") || !strings.Contains(string(body), "delete the Lease") {
			t.Fatalf("%s on a Lease with leaseTransitions at its maximum: want 503 naming the cause and the fix, got %d %s %v", path, code, body, err)
		}
	}
}
