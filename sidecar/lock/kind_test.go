package lock

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	clocktesting "k8s.io/utils/clock/testing"
)

// A semaphore's waiter is woken by the change of a slot, through the fan-in of the
// slots' change channels (relay), not by a timer: the clock never moves here, so
// without the fan-in the waiter would wait out its whole wait.
func TestSemaphoreWaiterIsWokenByASlotChange(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	s, err := newSemaphore(Config{
		Namespace: "ns", Name: "s", Identity: "pod_uid",
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: &memClient{}, Clock: clk, Log: logr.Discard(),
	}, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The semaphore's own retry timer on a clock of its own: it has a waiter exactly
	// while the semaphore's waiter waits.
	waitClk := clocktesting.NewFakeClock(clk.Now())
	s.clock = waitClk
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, 5*time.Second, "synced", func() bool { return s.Ready() == nil })

	_, held, err := s.Acquire(ctx, AcquireOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waiter := acquireAsync(ctx, s)
	// The waiter tried, found the slot held, and waits on the change channel it took
	// before its try; its timer never fires.
	waitUntil(t, 5*time.Second, "the waiter waits", waitClk.HasWaiters)
	if _, err := s.Release(ctx, held.Token); err != nil {
		t.Fatal(err)
	}
	if r := <-waiter; r.err != nil || !r.s.Held || r.s.Token == held.Token {
		t.Fatalf("waiter after the release: %+v %v", r.s, r.err)
	}
}

// A semaphore's waiter tries its slots one at a time (each a try), and each try reads
// ahead of the slot holder's expiry like a waiting mutex acquisition: a blip that ends
// just before the expiry makes that read slow, so a live holder's slot is not taken
// (TestReadAheadOfTheExpiryFindsABlipThatEndsJustBeforeIt is the mutex's case).
func TestSemaphoreWaiterReadsAheadOfTheSlotHoldersExpiry(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := heldByOther()
	s, err := newSemaphore(Config{
		Namespace: "ns", Name: "s", Identity: "pod_uid",
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: c, Clock: clk, Log: logr.Discard(),
	}, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, 5*time.Second, "synced", func() bool { return s.Ready() == nil })
	start := clk.Now()
	blipFrom, blipTo := start.Add(12500*time.Millisecond), start.Add(14500*time.Millisecond)
	c.mu.Lock()
	c.beforeList = func() {
		if now := clk.Now(); !now.Before(blipFrom) && now.Before(blipTo) {
			clk.Step(blipTo.Sub(now))
		}
	}
	c.mu.Unlock()
	got := acquireAsync(ctx, s)
	stepUntil(clk, 100*time.Millisecond, 16*time.Second, func() bool { return len(got) > 0 })
	select {
	case r := <-got:
		t.Fatalf("took the slot over %s after the blip ended, before its holder could renew: %+v %v", clk.Now().Sub(blipTo), r.s, r.err)
	default:
	}
	// A holder that never renews loses the slot at the restarted expiry.
	stepUntil(clk, 100*time.Millisecond, 20*time.Second, func() bool { return len(got) > 0 })
	select {
	case r := <-got:
		if r.err != nil || !r.s.Held {
			t.Fatalf("want the slot acquired, got %+v %v", r.s, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a dead holder's slot was never taken")
	}
}
