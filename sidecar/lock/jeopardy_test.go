package lock

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"
)

// The transitions of jeopardy.go, each pinned with the in-memory API and a fake clock.
// Each of these tests failed before jeopardy existed (the hold was lost at
// renew-deadline whatever the cause; a waiter took over as soon as it could write).

const testGrace = 30 * time.Second

func startGraceLock(t *testing.T, c *memClient, clk *clocktesting.FakeClock) (*Lock, *[]Event) {
	t.Helper()
	return startLockWith(t, c, clk, func(cfg *Config) { cfg.Grace = testGrace })
}

func setFail(c *memClient, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail = err
}

func phaseIs(l *Lock, p Phase) func() bool {
	return func() bool { return l.State().Phase == p }
}

// acquireHeld takes the lock (token want) and fails the test otherwise.
func acquireHeld(t *testing.T, l *Lock, want int64) *Hold {
	t.Helper()
	h, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || !s.Held || s.Token != want || s.Phase != PhaseHeld {
		t.Fatalf("acquire: want held with token %d, got %+v %v", want, s, err)
	}
	return h
}

// enterJeopardy makes every write fail with err and moves the clock to renew-deadline:
// the renewal at renew-deadline/2 fails, and at renew-deadline the hold is in jeopardy.
func enterJeopardy(t *testing.T, c *memClient, clk *clocktesting.FakeClock, l *Lock, err error) {
	t.Helper()
	setFail(c, err)
	clk.Step(5 * time.Second)
	eventually(t, "the renewal at renew-deadline/2 failed", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.m.failing })
	clk.Step(5 * time.Second)
	eventually(t, "jeopardy at renew-deadline", phaseIs(l, PhaseJeopardy))
}

// holdInJeopardy starts a lock with a grace period, takes it (token 1) and puts the
// hold in jeopardy (every write answered 503).
func holdInJeopardy(t *testing.T) (*clocktesting.FakeClock, *memClient, *Lock, *[]Event, *Hold) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startGraceLock(t, c, clk)
	h := acquireHeld(t, l, 1)
	enterJeopardy(t, c, clk, l, apierrors.NewServiceUnavailable("down"))
	return clk, c, l, events, h
}

func TestUnavailableAtRenewDeadlineIsJeopardyAndARenewalResumesWithTheSameToken(t *testing.T) {
	refused := &url.Error{Op: "Put", URL: "https://127.0.0.1:6443/apis", Err: errors.New("connect: connection refused")}
	for name, cause := range map[string]error{
		"connection refused": refused,
		"503":                apierrors.NewServiceUnavailable("kube-apiserver is restarting"),
		"429":                apierrors.NewTooManyRequests("slow down", 1),
		"timeout":            apierrors.NewTimeoutError("request timed out", 1),
	} {
		t.Run(name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
			c := &memClient{}
			l, events := startGraceLock(t, c, clk)
			h := acquireHeld(t, l, 1)
			enterJeopardy(t, c, clk, l, cause)
			s := l.State()
			if s.Held || s.ValidForMillis != 0 || s.Token != 1 || s.Phase != PhaseJeopardy {
				t.Fatalf("in jeopardy: want not held, validFor 0, token 1, state jeopardy; got %+v", s)
			}
			if ended(h) {
				t.Fatalf("the hold ended in jeopardy: %s", h.Reason())
			}
			clk.Step(4 * time.Second) // still unavailable: the renewals go on failing
			if s := l.State(); s.Phase != PhaseJeopardy {
				t.Fatalf("4 s into jeopardy: want jeopardy, got %+v", s)
			}
			setFail(c, nil)
			clk.Step(2 * time.Second) // the next renewal lands
			eventually(t, "safe again after a renewal landed", phaseIs(l, PhaseHeld))
			s = l.State()
			if !s.Held || s.Token != 1 || s.ValidForMillis != 10000 {
				t.Fatalf("resumed: want held with the same token 1, valid 10s from the renewal's send; got %+v", s)
			}
			if ended(h) {
				t.Fatalf("the hold ended: %s", h.Reason())
			}
			if got, want := eventTypes(l, events), []EventType{EventAcquired, EventJeopardy, EventSafe}; !slices.Equal(got, want) {
				t.Fatalf("events: got %v, want %v", got, want)
			}
		})
	}
}

// A refusal among the failures (403, or another 4xx) means the write was not made and
// will not be: renew-deadline loses the hold, no jeopardy.
func TestRefusalBeforeRenewDeadlineLosesTheHold(t *testing.T) {
	for name, cause := range map[string]error{
		"403": apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "db", errors.New("RBAC")),
		"422": apierrors.NewInvalid(schema.GroupKind{Group: "coordination.k8s.io", Kind: "Lease"}, "db", nil),
	} {
		t.Run(name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
			c := &memClient{}
			l, events := startGraceLock(t, c, clk)
			h := acquireHeld(t, l, 1)
			setFail(c, cause)
			clk.Step(5 * time.Second)
			eventually(t, "the renewal failed", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.m.failing })
			clk.Step(5 * time.Second)
			eventually(t, "the hold lost at renew-deadline", func() bool { return ended(h) })
			if got, want := eventTypes(l, events), []EventType{EventAcquired, EventLost}; !slices.Equal(got, want) {
				t.Fatalf("events: got %v, want %v", got, want)
			}
			if cause := (*events)[1].Cause; cause != LossRenewDeadline {
				t.Fatalf("loss cause %q, want %q", cause, LossRenewDeadline)
			}
		})
	}
}

// A 403 while in jeopardy ends the hold at once.
func TestRefusalInJeopardyLosesTheHoldAtOnce(t *testing.T) {
	clk, c, _, _, h := holdInJeopardy(t)
	setFail(c, apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "db", errors.New("RBAC")))
	clk.Step(2 * time.Second)
	eventually(t, "the hold lost on the 403", func() bool { return ended(h) })
}

// Jeopardy lasts at most the grace period.
func TestJeopardyEndsAfterTheGracePeriod(t *testing.T) {
	clk, _, l, events, h := holdInJeopardy(t)
	for i := 0; i < 14; i++ { // 28 s of failing renewals, every retry-period
		clk.Step(2 * time.Second)
		time.Sleep(2 * time.Millisecond)
	}
	clk.Step(2*time.Second - time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	if s := l.State(); s.Phase != PhaseJeopardy || ended(h) {
		t.Fatalf("1 ms before the grace ends: want jeopardy, got %+v", s)
	}
	clk.Step(time.Millisecond)
	eventually(t, "lost when the grace ended", func() bool { return ended(h) })
	if s := l.State(); s.Phase != PhaseNotHeld {
		t.Fatalf("after the grace: want not-held, got %+v", s)
	}
	l.mu.Lock()
	last := (*events)[len(*events)-1]
	l.mu.Unlock()
	if last.Type != EventLost || last.Cause != LossGrace {
		t.Fatalf("last event %+v, want lost with cause %s", last, LossGrace)
	}
}

// A renewal in jeopardy that finds the Lease written by someone else (conflict, then
// another holder) ends the hold at once: never safe.
func TestConflictInJeopardyLosesTheHold(t *testing.T) {
	clk, c, l, events, h := holdInJeopardy(t)
	c.mu.Lock()
	c.w.Stop() // the agent's watch is gone: it does not see the next write
	c.mu.Unlock()
	c.rewrite("other_pod")
	setFail(c, nil)
	clk.Step(2 * time.Second)
	eventually(t, "lost on the conflict", func() bool { return ended(h) })
	if got := eventTypes(l, events); slices.Contains(got, EventSafe) {
		t.Fatalf("events %v: a hold whose Lease was taken over must never be safe", got)
	}
}

// A renewal that landed but whose answer was lost (a timeout) must not cost the hold:
// the next renewal's conflict shows the Lease as this agent wrote it, and the agent goes
// on from it.
func TestRenewalThatLandedUnseenIsAdoptedInJeopardy(t *testing.T) {
	clk, c, l, events, h := holdInJeopardy(t)
	c.mu.Lock()
	c.w.Stop() // the watch is gone, so the landed write is not seen
	c.fail = nil
	c.landThenFail = apierrors.NewTimeoutError("answer lost", 1)
	c.mu.Unlock()
	clk.Step(2 * time.Second)
	eventually(t, "the renewal landed unseen", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.updates == 1 })
	c.mu.Lock()
	c.landThenFail = nil
	c.mu.Unlock()
	clk.Step(2 * time.Second)
	eventually(t, "safe again", phaseIs(l, PhaseHeld))
	if s := l.State(); s.Token != 1 || ended(h) {
		t.Fatalf("want the same hold with token 1, got %+v", s)
	}
	if got := eventTypes(l, events); slices.Contains(got, EventLost) {
		t.Fatalf("events %v: the agent's own landed renewal cost the hold", got)
	}
}

// With grace 0 the hold is lost at renew-deadline, as before jeopardy existed.
func TestNoGraceLosesAtRenewDeadline(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startLock(t, c, clk)
	h := acquireHeld(t, l, 1)
	setFail(c, apierrors.NewServiceUnavailable("down"))
	clk.Step(5 * time.Second)
	eventually(t, "the renewal failed", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.m.failing })
	clk.Step(5 * time.Second)
	eventually(t, "lost at renew-deadline", func() bool { return ended(h) })
	if got, want := eventTypes(l, events), []EventType{EventAcquired, EventLost}; !slices.Equal(got, want) {
		t.Fatalf("events: got %v, want %v", got, want)
	}
}

// A renew (ttl) call in jeopardy restarts the ttl but says the hold is in jeopardy.
func TestRenewCallInJeopardyRestartsTheTTLAndSaysSo(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startGraceLock(t, c, clk)
	h, _, err := l.Acquire(context.Background(), AcquireOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	enterJeopardy(t, c, clk, l, apierrors.NewServiceUnavailable("down"))
	s, err := l.Renew(h.Token(), 0)
	if !errors.Is(err, ErrJeopardy) || s.Held || s.Phase != PhaseJeopardy {
		t.Fatalf("renew in jeopardy: want ErrJeopardy and state jeopardy, got %+v %v", s, err)
	}
	l.mu.Lock()
	expires := l.m.expires
	l.mu.Unlock()
	if want := clk.Now().Add(time.Minute); !expires.Equal(want) {
		t.Fatalf("ttl ends at %v, want %v (restarted)", expires, want)
	}
}

// heldByOther is a Lease that another Pod holds with token 4, renewed by its clock an
// hour ago (expiry is judged from this agent's observation).
func heldByOther() *memClient {
	now := time.Unix(1_000_000, 0)
	other, dur, tr := "other_pod", int32(15), int32(4)
	old := metav1.NewMicroTime(now.Add(-time.Hour))
	return &memClient{rv: 7, lease: &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &dur, LeaseTransitions: &tr,
			RenewTime: &old, AcquireTime: &old},
	}}
}

// outage makes the API server unavailable to this agent for reads and writes, and
// breaks its watch; back undoes it.
func outage(c *memClient, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if on {
		err = apierrors.NewServiceUnavailable("the control plane is down")
	}
	c.fail, c.listFail, c.watchFail = err, err, err
	if on && c.w != nil {
		c.w.Stop()
	}
}

// stepUntil steps the clock by d at a time, letting the engine run between steps,
// until cond holds or max has passed; it returns how much it stepped.
func stepUntil(clk *clocktesting.FakeClock, d, limit time.Duration, cond func() bool) time.Duration {
	var stepped time.Duration
	for stepped < limit && !cond() {
		clk.Step(d)
		stepped += d
		time.Sleep(3 * time.Millisecond)
	}
	return stepped
}

// waiterOnAnotherPodsHold starts a lock (with a grace period) on a Lease another Pod
// holds, and one client waiting for it; got receives the State it acquires.
func waiterOnAnotherPodsHold(t *testing.T) (*clocktesting.FakeClock, *memClient, *Lock, <-chan State) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := heldByOther()
	l, _ := startGraceLock(t, c, clk)
	got := make(chan State, 1)
	go func() {
		_, s, err := l.Acquire(context.Background(), AcquireOptions{Wait: 10 * time.Minute})
		if err != nil {
			t.Errorf("acquire: %v", err)
		}
		got <- s
	}()
	eventually(t, "the waiter waits", clk.HasWaiters)
	return clk, c, l, got
}

// A waiter that lost the API server together with the holder does not take the lock
// over when the server is back: the holder's expiry restarts when the waiter's watch is
// back, and a holder that does not renew is replaced lease-duration after that.
func TestWaiterThatSharedTheOutageRestartsTheHoldersExpiry(t *testing.T) {
	clk, c, l, got := waiterOnAnotherPodsHold(t)
	clk.Step(5 * time.Second)
	outage(c, true)
	// The holder's lease-duration runs out during the outage; nothing is written.
	stepUntil(clk, time.Second, 20*time.Second, func() bool { return false })
	outage(c, false)
	// The waiter's watch comes back (after its backoff): from then on it waits a whole
	// lease-duration for the holder, which does not renew (it is dead).
	back := stepUntil(clk, 100*time.Millisecond, 30*time.Second, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return !l.outage
	})
	if back >= 30*time.Second {
		t.Fatal("the waiter's watch never came back")
	}
	c.mu.Lock()
	writes := c.updates
	c.mu.Unlock()
	stepUntil(clk, 500*time.Millisecond, 14*time.Second, func() bool { return false })
	select {
	case s := <-got:
		t.Fatalf("took the lock over %s after the API server was back (want lease-duration, 15s): %+v", back+14*time.Second, s)
	default:
	}
	if c.updates != writes {
		t.Fatalf("%d writes while the restarted expiry ran", c.updates-writes)
	}
	stepUntil(clk, 500*time.Millisecond, 5*time.Second, func() bool { return len(got) > 0 })
	select {
	case s := <-got:
		if !s.Held || s.Token != 5 {
			t.Fatalf("want acquired with token 5 once the restarted expiry ran out, got %+v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a dead holder was not replaced lease-duration after the outage")
	}
}

// The same outage, with a holder that is alive: it renews once the API server is back,
// within retry-period, and keeps its lock.
func TestWaiterThatSharedTheOutageLetsALiveHolderRenew(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := heldByOther()
	l, _ := startGraceLock(t, c, clk)
	got := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _, err := l.Acquire(ctx, AcquireOptions{Wait: 10 * time.Minute})
		got <- err
	}()
	eventually(t, "the waiter waits", clk.HasWaiters)
	clk.Step(5 * time.Second)
	outage(c, true)
	stepUntil(clk, time.Second, 20*time.Second, func() bool { return false })
	outage(c, false)
	stepUntil(clk, 100*time.Millisecond, 30*time.Second, func() bool { l.mu.Lock(); defer l.mu.Unlock(); return !l.outage })
	// The holder's renewal lands within retry-period.
	clk.Step(time.Second)
	c.mu.Lock()
	next := c.lease.DeepCopy()
	rt := metav1.NewMicroTime(time.Unix(1_000_100, 0))
	next.Spec.RenewTime = &rt
	c.store(next)
	c.mu.Unlock()
	stepUntil(clk, 500*time.Millisecond, 14*time.Second, func() bool { return len(got) > 0 })
	select {
	case err := <-got:
		t.Fatalf("the waiter ended its wait (%v): a live holder that renewed after the outage lost its lock", err)
	default:
	}
	if s := l.State(); s.Holder != "other_pod" {
		t.Fatalf("holder %q, want other_pod", s.Holder)
	}
}

// A waiter whose read before a takeover was slow (it waited for an API server that was
// away: a blip the silent watch did not show) does not take over on its answer: the
// holder's renewals were held up the same way. The holder's expiry restarts from the
// answer. Found by the chaos suite (seed 1540733055375751695): the read answered right
// after the blip, and the waiter took a live leader's lock 32 ms later.
func TestSlowReadBeforeATakeoverRestartsTheHoldersExpiry(t *testing.T) {
	clk, c, _, got := waiterOnAnotherPodsHold(t)
	c.mu.Lock()
	writes := c.updates // its entry in the queue
	c.beforeList = func() {
		c.mu.Lock()
		c.beforeList = nil // once
		c.mu.Unlock()
		clk.Step(3 * time.Second) // the read waits 3 s for the API server
	}
	c.mu.Unlock()
	clk.Step(15 * time.Second) // the holder expired by the waiter's clock: it reads before taking over
	time.Sleep(50 * time.Millisecond)
	select {
	case s := <-got:
		t.Fatalf("took the lock over on the answer of a read that waited 3 s: %+v", s)
	default:
	}
	c.mu.Lock()
	after := c.updates
	c.mu.Unlock()
	if after != writes {
		t.Fatalf("%d writes after a slow read", after-writes)
	}
	// A dead holder is replaced lease-duration after the answer.
	stepUntil(clk, 500*time.Millisecond, 16*time.Second, func() bool { return len(got) > 0 })
	select {
	case s := <-got:
		if !s.Held || s.Token != 5 {
			t.Fatalf("want acquired with token 5, got %+v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a dead holder was never replaced after the slow read")
	}
}

// A blip of the whole control plane that the waiter does not notice (its watch is
// silent, it sends nothing) and that ends just before the holder's expiry by the
// waiter's clock: one read at the expiry would be fast and show the unchanged record
// while the live holder's renewal after the blip is still on its way (found by the
// chaos suite: 2 of 45 blips lost the leader lock that way). A waiting acquisition
// reads retry-period ahead of the expiry: that read is sent into the blip, answered
// after it, slow, so the holder's expiry restarts; a dead holder is still replaced at
// the (restarted) expiry, no later.
func TestReadAheadOfTheExpiryFindsABlipThatEndsJustBeforeIt(t *testing.T) {
	clk, c, l, got := waiterOnAnotherPodsHold(t)
	start := clk.Now()
	// The blip: from 12.5 s to 14.5 s a read waits for its end (the expiry is at 15 s,
	// retry-period 2 s).
	blipFrom, blipTo := start.Add(12500*time.Millisecond), start.Add(14500*time.Millisecond)
	c.mu.Lock()
	c.beforeList = func() {
		if now := clk.Now(); !now.Before(blipFrom) && now.Before(blipTo) {
			clk.Step(blipTo.Sub(now))
		}
	}
	c.mu.Unlock()
	stepUntil(clk, 100*time.Millisecond, 16*time.Second, func() bool { return len(got) > 0 })
	select {
	case s := <-got:
		t.Fatalf("took the lock over %s after the blip ended, before the holder could renew: %+v", clk.Now().Sub(blipTo), s)
	default:
	}
	l.mu.Lock()
	restarted := l.observedAt
	l.mu.Unlock()
	if restarted.Before(blipTo) {
		t.Fatalf("the holder's expiry was not restarted by the slow read (observed at %s, the blip ended at %s)",
			restarted.Sub(start), blipTo.Sub(start))
	}
	// A holder that never renews is replaced at the restarted expiry.
	stepUntil(clk, 100*time.Millisecond, 20*time.Second, func() bool { return len(got) > 0 })
	select {
	case s := <-got:
		if !s.Held || s.Token != 5 {
			t.Fatalf("want acquired with token 5, got %+v", s)
		}
		if late := clk.Now().Sub(restarted.Add(15 * time.Second)); late > 500*time.Millisecond {
			t.Errorf("replaced %s after the restarted expiry, want at it", late)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a dead holder was never replaced")
	}
}
