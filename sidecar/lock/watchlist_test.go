package lock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
)

// ignoringClient is memClient as an API server that does not know sendInitialEvents
// and ignores it: the watch starts, and the bookmark that ends the initial events
// never comes.
type ignoringClient struct{ *memClient }

func (c ignoringClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.SendInitialEvents = nil
	return c.memClient.Watch(ctx, opts)
}

// A watch-list whose initial events do not end within the List's timeout is given up,
// and the lock lists, then watches, from then on: it does not wait for ever for a
// bookmark the API server will not send.
func TestWatchListWithoutItsBookmarkFallsBackToList(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := ignoringClient{&memClient{}}
	l, err := New(Config{
		Namespace: "ns", Name: "db", Identity: "pod_uid", Mode: ModeMutex,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: c, Clock: clk, Log: logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, 5*time.Second, "the watch is open", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.watches == 1 })
	if l.Synced() {
		t.Fatal("synced without the end of the initial events")
	}
	// Step the clock past the List timeout (and the backoff after it), as the timers
	// are set.
	waitUntil(t, 10*time.Second, "the lock synced by a List", func() bool {
		if clk.HasWaiters() {
			clk.Step(time.Second)
		}
		return l.Synced()
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.listDeadline) != 1 {
		t.Fatalf("%d Lists, want 1", len(c.listDeadline))
	}
	if c.watchLists != 0 {
		t.Fatalf("the fake served %d watch-lists: the test is broken", c.watchLists)
	}
}

// closingClient is memClient whose watches end as soon as they have sent their
// initial events, as a server that closes every watch at once.
type closingClient struct{ *memClient }

func (c closingClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := c.memClient.Watch(ctx, opts)
	if err == nil {
		c.mu.Lock()
		c.w.Stop()
		c.mu.Unlock()
	}
	return w, err
}

// A watch that ends at once, without an error, is not opened again in a tight loop:
// the next one waits watchBackoff (on the lock's clock, which this test does not move).
func TestWatchThatEndsAtOnceIsNotReopenedInALoop(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := closingClient{&memClient{}}
	l, err := New(Config{
		Namespace: "ns", Name: "db", Identity: "pod_uid", Mode: ModeMutex,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: c, Clock: clk, Log: logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, 5*time.Second, "synced", l.Synced)
	time.Sleep(200 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watches != 1 {
		t.Fatalf("%d watches in 200 ms with the clock stopped, want 1", c.watches)
	}
}

// While a holder's renewal is failing, its watch is not opened again: after
// kube-apiserver restarts, the holders' renewals must get through while every agent's
// watches come back. Once a renewal lands, the watch opens.
func TestHolderWithFailingRenewalReopensItsWatchAfterTheRenewal(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	if _, s, err := l.Acquire(context.Background(), AcquireOptions{}); err != nil || !s.Held {
		t.Fatalf("acquire: %+v %v", s, err)
	}
	watches := func() int { c.mu.Lock(); defer c.mu.Unlock(); return c.watches }
	renewFailing := func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.m.failing }
	c.mu.Lock()
	c.fail = apierrors.NewServiceUnavailable("kube-apiserver is restarting")
	c.mu.Unlock()
	clk.Step(5 * time.Second) // the renewal is due, and fails
	waitUntil(t, 5*time.Second, "the renewal failed", renewFailing)
	n := watches()
	c.mu.Lock()
	c.w.Stop() // the connection breaks
	c.mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	if got := watches(); got != n {
		t.Fatalf("the watch was opened again (%d → %d) while the renewal was failing", n, got)
	}
	c.mu.Lock()
	c.fail = nil
	c.mu.Unlock()
	clk.Step(2 * time.Second) // the next renewal lands
	waitUntil(t, 5*time.Second, "the watch opened again after the renewal", func() bool { return watches() > n })
	if s := l.State(); !s.Held {
		t.Fatalf("not held after the renewal: %+v", s)
	}
}

// A renewal that reached no API server (connection refused, as while kube-apiserver
// restarts) is tried again after a quarter of retry-period, so that it is among the
// first requests the restarted server gets; one the server answered with an error is
// tried again after retry-period.
func TestRenewalThatReachedNoServerIsTriedAgainSooner(t *testing.T) {
	refused := &url.Error{Op: "Put", URL: "https://127.0.0.1:6443/apis", Err: errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")}
	for _, tc := range []struct {
		err   error
		retry time.Duration
	}{
		{refused, 500 * time.Millisecond},
		{apierrors.NewServiceUnavailable("not ready"), 2 * time.Second},
	} {
		clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
		c := &memClient{}
		l, _ := startLock(t, c, clk)
		if _, s, err := l.Acquire(context.Background(), AcquireOptions{}); err != nil || !s.Held {
			t.Fatalf("acquire: %+v %v", s, err)
		}
		calls := func() int { c.mu.Lock(); defer c.mu.Unlock(); return c.updateCalls }
		c.mu.Lock()
		c.fail = tc.err
		c.mu.Unlock()
		clk.Step(5 * time.Second) // the renewal is due, and fails
		waitUntil(t, 5*time.Second, "the first renewal", func() bool { return calls() == 1 })
		waitUntil(t, 5*time.Second, "the retry is scheduled", clk.HasWaiters)
		clk.Step(tc.retry - time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		if n := calls(); n != 1 {
			t.Fatalf("%v: %d renewals %s after the failed one, want 1", tc.err, n, tc.retry-time.Millisecond)
		}
		clk.Step(time.Millisecond)
		waitUntil(t, 5*time.Second, fmt.Sprintf("%v: the renewal tried again after %s", tc.err, tc.retry), func() bool { return calls() == 2 })
	}
}
