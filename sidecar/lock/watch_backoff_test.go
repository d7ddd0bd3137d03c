package lock

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
)

// downWatchClient is memClient whose Watch fails, as while kube-apiserver restarts, for
// the first fail calls; it records the (fake) time of every Watch call.
type downWatchClient struct {
	*memClient
	clk   *clocktesting.FakeClock
	fail  int
	err   error // what a failed Watch returns; a 503 from the API server when nil
	mu    sync.Mutex
	calls []time.Time
}

func (d *downWatchClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	d.mu.Lock()
	d.calls = append(d.calls, d.clk.Now())
	n := len(d.calls)
	d.mu.Unlock()
	if n <= d.fail {
		if d.err != nil {
			return nil, d.err
		}
		return nil, apierrors.NewServiceUnavailable("kube-apiserver is restarting")
	}
	return d.memClient.Watch(ctx, opts)
}

func (d *downWatchClient) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.calls)
}

// watchRetryDelays runs one lock whose first fail watches fail and returns the pauses
// between its Watch calls, on the fake clock (to 10 ms).
func watchRetryDelays(t *testing.T, fail int) []time.Duration {
	return watchRetryDelaysErr(t, fail, nil)
}

func watchRetryDelaysErr(t *testing.T, fail int, failErr error) []time.Duration {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &downWatchClient{memClient: &memClient{}, clk: clk, fail: fail, err: failErr}
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
	// Only the watch loop's pause waits on the clock (a mutex not held renews nothing):
	// step it while that timer is pending, and after it fires wait for the next call.
	waitFor := func(cond func() bool) {
		if !pollUntil(time.Millisecond, 10*time.Second, cond) {
			t.Fatalf("the watch loop made %d Watch calls and stopped (want %d)", c.count(), fail+1)
		}
	}
	for n := 1; n <= fail; n++ {
		waitFor(func() bool { return c.count() >= n && clk.HasWaiters() })
		// Step only until the pause after call n ends: stepping on once call n+1 was
		// made would run into the next pause (and count two calls as one).
		for clk.HasWaiters() && c.count() == n {
			clk.Step(10 * time.Millisecond)
		}
		waitFor(func() bool { return c.count() > n })
	}
	var out []time.Duration
	for i := 1; i < len(c.calls); i++ {
		out = append(out, c.calls[i].Sub(c.calls[i-1]))
	}
	return out
}

// When the API server goes away, every agent's watch fails at the same moment. The
// retries must not come back in step (a fixed retry-period made all of a cluster's
// watches return in waves, every 2 s, each all at once): the pauses are jittered, so
// agents that failed together retry at different moments, and they grow while the
// failures go on.
func TestWatchRetriesBackOffWithJitter(t *testing.T) {
	const fail = 5
	var first []time.Duration
	for run := 0; run < 5; run++ {
		d := watchRetryDelays(t, fail)
		if len(d) != fail {
			t.Fatalf("run %d: %d pauses between %d Watch calls", run, len(d), fail+1)
		}
		t.Logf("run %d: pauses %v", run, d)
		// The pause after the first failure has the reconnect spread on top
		// (TestWatchOfALockNotHeldComesBackSpread...); the backoff is what follows.
		d = d[1:]
		if d[len(d)-1] <= d[0] {
			t.Errorf("run %d: pauses %v: the pause after %d failures is not longer than after the second", run, d, fail)
		}
		for i, p := range d {
			if p > 8*time.Second+10*time.Millisecond {
				t.Errorf("run %d: pause %d is %s, more than 4 × retry-period: a waiter would hear of a release too late", run, i, p)
			}
		}
		first = append(first, d[0])
	}
	same := true
	for _, p := range first[1:] {
		same = same && p == first[0]
	}
	if same {
		t.Errorf("five locks whose watch failed at the same moment all retried after exactly %s: a herd", first[0])
	}
}

// deadlineClient is memClient recording how long each List was given.
type deadlineClient struct {
	*memClient
	mu    sync.Mutex
	given []time.Duration
}

func (d *deadlineClient) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	if dl, ok := ctx.Deadline(); ok {
		d.mu.Lock()
		d.given = append(d.given, time.Until(dl))
		d.mu.Unlock()
	}
	return d.memClient.List(ctx, opts)
}

// A List waits in the API server's queues with every other agent's when many start at
// once; given up after the 5 s write timeout, it was work the API server did for
// nothing and then did again. It gets at least listTimeoutMin (and a deadline still:
// TestListHasATimeout). (A List is made only where the API server has no watch-list.)
func TestListIsNotGivenUpAtTheWriteTimeout(t *testing.T) {
	c := &deadlineClient{memClient: &memClient{noWatchList: true}}
	l, err := New(Config{
		Namespace: "ns", Name: "db", Identity: "pod_uid", Mode: ModeMutex,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: c, Log: logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if !pollUntil(time.Millisecond, 5*time.Second, l.Synced) {
		t.Fatal("lock never synced")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.given) == 0 {
		t.Fatal("List was called without a deadline")
	}
	if got := c.given[0]; got < listTimeoutMin-time.Second {
		t.Fatalf("List was given %s, want at least %s (the write timeout is %s)", got.Round(time.Millisecond), listTimeoutMin, l.writeTimeout())
	}
}

// When the API server goes away (kube-apiserver restarting: the connection refused, or
// a 503 while it shuts down), a lock that is not held waits, before its first retry, a
// random extra pause of up to renew-deadline: the watches of a whole cluster then come
// back spread over renew-deadline, and the holders' renewals get through. Later
// retries back off as usual.
func TestWatchOfALockNotHeldComesBackSpreadAfterTheServerWentAway(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "https://127.0.0.1:6443/apis", Err: errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")}
	var first []time.Duration
	for run := 0; run < 6; run++ {
		var failErr error = refused
		if run%2 == 1 {
			failErr = nil // a 503
		}
		d := watchRetryDelaysErr(t, 2, failErr)
		if len(d) != 2 {
			t.Fatalf("run %d: %d pauses between 3 Watch calls", run, len(d))
		}
		t.Logf("run %d: pauses %v", run, d)
		if d[0] < time.Second || d[0] > 12*time.Second+10*time.Millisecond {
			t.Errorf("run %d: first pause %s, want the backoff (1-2 s) plus up to renew-deadline (10 s)", run, d[0])
		}
		if d[1] > 4*time.Second+10*time.Millisecond {
			t.Errorf("run %d: second pause %s, want the backoff alone (2-4 s)", run, d[1])
		}
		first = append(first, d[0])
	}
	spread := false
	for _, p := range first {
		spread = spread || p > 2*time.Second+10*time.Millisecond
	}
	if !spread {
		t.Errorf("first pauses %v: none longer than the backoff alone, no spread", first)
	}
}
