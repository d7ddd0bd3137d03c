package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// queueOn is the queue annotation of the Lease name (in ns, "default" when empty), as
// identities.
func queueOn(t *testing.T, name string, ns ...string) []string {
	t.Helper()
	namespace := "default"
	if len(ns) > 0 {
		namespace = ns[0]
	}
	lease, err := kube.CoordinationV1().Leases(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v := lease.Annotations[lock.AnnotationQueue]; v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

// waitQueue waits until the Lease's queue is want (identities).
func waitQueue(t *testing.T, name string, want ...string) {
	t.Helper()
	waitQueueIn(t, "default", name, want...)
}

func waitQueueIn(t *testing.T, ns, name string, want ...string) {
	t.Helper()
	wantQueue := strings.Join(want, ",")
	var got string
	matches := func(obj any) (bool, error) {
		lease, ok := obj.(*coordinationv1.Lease)
		if !ok {
			return false, fmt.Errorf("no Lease %s/%s", ns, name)
		}
		got = lease.Annotations[lock.AnnotationQueue]
		return got == wantQueue, nil
	}
	// The Lease's watch tells each change of the queue; nothing is asked in a loop.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lw := cache.NewListWatchFromClient(kube.CoordinationV1().RESTClient(), "leases", ns, fields.OneTermEqualSelector("metadata.name", name))
	_, err := watchtools.UntilWithSync(ctx, lw, &coordinationv1.Lease{}, func(store cache.Store) (bool, error) {
		obj, exists, err := store.GetByKey(ns + "/" + name)
		if err != nil || !exists {
			return false, fmt.Errorf("no Lease %s/%s: %v", ns, name, err)
		}
		return matches(obj)
	}, func(ev watch.Event) (bool, error) {
		if ev.Type == watch.Deleted {
			return false, fmt.Errorf("the Lease %s/%s was deleted", ns, name)
		}
		return matches(ev.Object)
	})
	if err != nil {
		t.Fatalf("queue of %s: want %v, got %v: %v", name, want, got, err)
	}
}

// Waiters of different Pods are served in the order they started waiting, and the Pod
// that releases and asks again goes to the back instead of winning again.
func TestWaitersOfPodsAreServedInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "fair-a", "--locks=queue-db")
	others := []*agentProc{startAgent(t, "fair-b", "--locks=queue-db"), startAgent(t, "fair-c", "--locks=queue-db"),
		startAgent(t, "fair-d", "--locks=queue-db")}
	sa, err := a.c.Acquire(ctx, "queue-db", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	serve := func(p *agentProc) {
		s, err := p.c.Acquire(ctx, "queue-db", 20*time.Second, 0)
		if err != nil {
			t.Errorf("%s: %v", p.pod, err)
			return
		}
		mu.Lock()
		order = append(order, p.pod)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		if _, err := p.c.Release(ctx, "queue-db", s.Token); err != nil {
			t.Errorf("%s release: %v", p.pod, err)
		}
	}
	var ids []string
	for _, p := range others {
		wg.Go(func() { serve(p) })
		ids = append(ids, p.identity())
		waitQueue(t, "queue-db", ids...) // each one queued before the next starts
	}
	// A releases and at once waits again: it goes behind D.
	if _, err := a.c.Release(ctx, "queue-db", sa.Token); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { serve(a) })
	wg.Wait()
	if got := strings.Join(order, " "); got != "fair-b fair-c fair-d fair-a" {
		t.Fatalf("order served: want fair-b fair-c fair-d fair-a, got %s", got)
	}
	waitQueue(t, "queue-db")
}

// A waiter that cannot take its turn (a stopped process) costs the waiters behind it
// one turn (retry-period), not a lease-duration; a try does not pass the queue within
// that turn; the waiter passed over queues again when it comes back.
func TestAWaiterThatCannotTakeItsTurnCostsOneTurn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A turn of 1 s (the retry-period), long enough for C to see the release and try
	// within it on a busy machine.
	const turn = time.Second
	args := []string{"--locks=turn-db", "--retry-period=" + turn.String()}
	a := startAgent(t, "turn-a", args...)
	b := startAgent(t, "turn-b", args...)
	c := startAgent(t, "turn-c", args...)
	sa, err := a.c.Acquire(ctx, "turn-db", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	bDone := make(chan error, 1)
	go func() {
		s, err := b.c.Acquire(ctx, "turn-db", 30*time.Second, 0)
		if err == nil {
			_, err = b.c.Release(ctx, "turn-db", s.Token)
		}
		bDone <- err
	}()
	waitQueue(t, "turn-db", b.identity())
	b.signal(syscall.SIGSTOP)
	defer b.signal(syscall.SIGCONT)

	released := time.Now()
	if _, err := a.c.Release(ctx, "turn-db", sa.Token); err != nil {
		t.Fatal(err)
	}
	// Within B's turn a try from C (once C has seen the release) is refused with the
	// reason.
	waitFor(t, "C to see the release", func() bool { return c.state("turn-db").Holder == "" })
	_, err = c.c.Acquire(ctx, "turn-db", 0, 0)
	if status(err) != http.StatusConflict || !strings.Contains(err.Error(), "queued ahead") {
		t.Fatalf("C's try within B's turn: want 409 naming the queue, got %v", err)
	}
	sc, err := c.c.Acquire(ctx, "turn-db", 10*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	waited := time.Since(released)
	if waited < turn-50*time.Millisecond || waited > leaseDuration {
		t.Fatalf("C took the lock %s after the release: want after B's turn (%s) and well before lease-duration (%s)",
			waited, turn, leaseDuration)
	}
	t.Logf("C took the lock %s after the release, B's turn being %s", waited.Round(time.Millisecond), turn)
	waitQueue(t, "turn-db") // C passed B: B's entry is gone

	// B comes back, finds itself passed over and queues again; it gets the lock after C.
	b.signal(syscall.SIGCONT)
	waitQueue(t, "turn-db", b.identity())
	if _, err := c.c.Release(ctx, "turn-db", sc.Token); err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("B after it came back: %v", err)
	}
}

// A waiter that gives up (its wait runs out) leaves the queue; one that never waited
// (a try) never enters it.
func TestAWaiterThatGivesUpLeavesTheQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "leave-a", "--locks=leave-db")
	b := startAgent(t, "leave-b", "--locks=leave-db")
	if _, err := a.c.Acquire(ctx, "leave-db", 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Acquire(ctx, "leave-db", 0, 0); status(err) != http.StatusConflict {
		t.Fatalf("B's try: want 409, got %v", err)
	}
	if q := queueOn(t, "leave-db"); len(q) != 0 {
		t.Fatalf("a try queued: %v", q)
	}
	if _, err := b.c.Acquire(ctx, "leave-db", 500*time.Millisecond, 0); status(err) != http.StatusRequestTimeout {
		t.Fatalf("B's wait: want 408, got %v", err)
	}
	waitQueue(t, "leave-db")
	// An agent shutting down leaves the queue too.
	done := make(chan error, 1)
	go func() { _, err := b.c.Acquire(ctx, "leave-db", 20*time.Second, 0); done <- err }()
	waitQueue(t, "leave-db", b.identity())
	b.signal(syscall.SIGTERM)
	<-b.exited
	if err := <-done; status(err) != http.StatusServiceUnavailable {
		t.Fatalf("B's waiter at shutdown: want 503, got %v", err)
	}
	waitQueue(t, "leave-db")
}
