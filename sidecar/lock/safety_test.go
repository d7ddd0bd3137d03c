package lock

import (
	"context"
	"errors"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"
)

// The regression tests of the engine's safety paths (issue 7 of the tracker): each one
// failed before its fix. They pin the edge with the in-memory API and a fake clock; the
// chaos suite (internal/testing/chaos) checks the same properties on a real API server.

// eventually polls cond in real time: the engine's goroutines run on the real scheduler
// even when its clock is fake.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(time.Millisecond, 5*time.Second, cond) {
		t.Fatalf("timed out waiting until %s", what)
	}
}

func ended(h *Hold) bool {
	select {
	case <-h.Done():
		return true
	default:
		return false
	}
}

func eventTypes(l *Lock, events *[]Event) []EventType {
	l.mu.Lock() // OnEvent runs under l.mu, so this orders reads after it
	defer l.mu.Unlock()
	var out []EventType
	for _, e := range *events {
		out = append(out, e.Type)
	}
	return out
}

// validFor never promises past the ttl: the ttl ends the hold and hands the lock over.
func TestValidForNeverPassesTheTTL(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	l, _ := startLock(t, &memClient{}, clk)
	_, s, err := l.Acquire(context.Background(), AcquireOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if s.ValidForMillis != 3000 {
		t.Fatalf("acquire with ttl 3s: want validFor 3s (renew-deadline is 10s), got %+v", s)
	}
	clk.Step(2500 * time.Millisecond)
	if s := l.State(); !s.Held || s.ValidForMillis != 500 {
		t.Fatalf("2.5s into a 3s ttl: want held for 500ms, got %+v", s)
	}
	// The background renew keeps the Lease fresh; it must not stretch the promise.
	l.renewOnce(context.Background())
	if s := l.State(); s.ValidForMillis > 500 {
		t.Fatalf("a background renew stretched validFor past the ttl: %+v", s)
	}
	l.writeMu.Lock() // hold back the ttl's release write: the state alone must say it
	clk.Step(500 * time.Millisecond)
	s = l.State()
	l.writeMu.Unlock()
	if s.Held || s.ValidForMillis != 0 {
		t.Fatalf("at the ttl, before the release write: want not held, got %+v", s)
	}
}

// A late release from a client whose ttl ended must not end the next client's hold.
func TestLateReleaseDoesNotEndTheNextHold(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	x, _, err := l.Acquire(context.Background(), AcquireOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clk.Step(3 * time.Second)
	eventually(t, "the ttl ends X's hold", func() bool { return ended(x) })
	y, sy, err := l.Acquire(context.Background(), AcquireOptions{Wait: time.Second})
	if err != nil || !sy.Held {
		t.Fatalf("Y acquire after X's ttl: %+v %v", sy, err)
	}
	updates := c.updates
	_, err = l.Release(context.Background(), x.Token())
	if !errors.Is(err, ErrStaleToken) {
		t.Fatalf("X's late release with its token %d: want ErrStaleToken, got %v", x.Token(), err)
	}
	if ended(y) || !l.State().Held || c.updates != updates {
		t.Fatalf("X's late release changed Y's hold: ended=%v state=%+v writes=%d", ended(y), l.State(), c.updates-updates)
	}
	if _, err := l.Renew(x.Token(), time.Minute); !errors.Is(err, ErrStaleToken) {
		t.Fatalf("X's late renew: want ErrStaleToken, got %v", err)
	}
	if _, err := l.Release(context.Background(), y.Token()); err != nil || !ended(y) {
		t.Fatalf("Y's release with its token: %v (ended %v)", err, ended(y))
	}
}

// The Lease is deleted after the server applied our acquire write and before the engine
// read the answer: held must not be set (before the fix the renew loop then spun forever).
func TestAcquireOvertakenByDeletion(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startLock(t, c, clk)
	c.afterWrite = func() {
		c.mu.Lock()
		c.afterWrite = nil
		c.mu.Unlock()
		c.remove(true)
		eventually(t, "the watch delivers the deletion", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.lease == nil && l.rv == uint64(c.rv)
		})
	}
	h, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err == nil || s.Held {
		t.Fatalf("acquire whose Lease was deleted before the answer arrived: want not acquired, got %+v %v (hold %v)", s, err, h)
	}
	if types := eventTypes(l, events); len(types) != 0 {
		t.Fatalf("events for an acquisition that never held: %v", types)
	}
	// The lock stays usable: the next try creates the Lease again.
	if _, s, err := l.Acquire(context.Background(), AcquireOptions{}); err != nil || !s.Held {
		t.Fatalf("acquire after the deletion: %+v %v", s, err)
	}
}

// Someone else's write overtakes our acquire's answer: held must not be set, and no
// later renew may overwrite the other holder's record (the token would go down).
func TestAcquireOvertakenByAnotherWriter(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	c.afterWrite = func() {
		c.mu.Lock()
		c.afterWrite = nil
		c.mu.Unlock()
		c.rewrite("other_pod")
		eventually(t, "the watch delivers the other write", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.rv == uint64(c.rv)
		})
	}
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err == nil || s.Held {
		t.Fatalf("acquire overtaken by another holder's write: want not acquired, got %+v %v", s, err)
	}
	clk.Step(6 * time.Second) // past renew-deadline/2: a renew would be due
	l.renewOnce(context.Background())
	c.mu.Lock()
	holder, token := *c.lease.Spec.HolderIdentity, *c.lease.Spec.LeaseTransitions
	c.mu.Unlock()
	if holder != "other_pod" || token != 2 {
		t.Fatalf("the other holder's record was overwritten: holder %q token %d", holder, token)
	}
}

// renew after the ttl fired (its release still queued behind a write) must not answer
// as if the hold went on.
func TestRenewAfterTheTTLFired(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	l, _ := startLock(t, &memClient{}, clk)
	h, _, err := l.Acquire(context.Background(), AcquireOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l.writeMu.Lock() // the ttl's release waits here
	clk.Step(3 * time.Second)
	_, rerr := l.Renew(h.Token(), time.Minute)
	l.writeMu.Unlock()
	if rerr == nil {
		time.Sleep(50 * time.Millisecond)
		if ended(h) {
			t.Fatal("renew after the ttl answered ok, then the hold ended anyway")
		}
	}
	if !errors.Is(rerr, ErrStaleToken) {
		t.Fatalf("renew after the ttl: want not held, got %v", rerr)
	}
}

// A release whose write conflicts (the Lease was already rewritten) has still ended the
// hold: it succeeds, and subscribers hear "released".
func TestReleaseConflictEndsTheHold(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startLock(t, c, clk)
	h, _, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.rv++ // behind the watch's back
	c.lease.ResourceVersion = "999"
	c.mu.Unlock()
	if _, err := l.Release(context.Background(), h.Token()); err != nil {
		t.Fatalf("release that met a conflict: want success (the hold ended), got %v", err)
	}
	if !ended(h) || l.State().Held {
		t.Fatal("hold not ended")
	}
	if types := eventTypes(l, events); len(types) != 2 || types[1] != EventReleased {
		t.Fatalf("events: want [acquired released], got %v", types)
	}
}

// A release whose write fails still ends the hold: subscribers must hear of it.
func TestFailedReleaseWriteEmitsAnEvent(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startLock(t, c, clk)
	h, _, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.fail = errors.New("connection refused")
	c.mu.Unlock()
	_, err = l.Release(context.Background(), h.Token())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("release whose write failed: want ErrUnavailable, got %v", err)
	}
	if !ended(h) || l.State().Held {
		t.Fatal("hold not ended")
	}
	types := eventTypes(l, events)
	if len(types) != 2 || types[1] != EventReleased {
		t.Fatalf("events: want [acquired released], got %v", types)
	}
}

// A renew that finds the Lease deleted loses the lock at once: another Pod may create
// the Lease right away.
func TestRenewFindsLeaseDeleted(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startLock(t, c, clk)
	h, _, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.remove(false) // the watch has not told us yet
	clk.Step(5 * time.Second)
	l.renewOnce(context.Background())
	if s := l.State(); s.Held || !ended(h) {
		t.Fatalf("renew answered NotFound: want lost at once, got %+v", s)
	}
	if types := eventTypes(l, events); len(types) != 2 || types[1] != EventLost {
		t.Fatalf("events: want [acquired lost], got %v", types)
	}
}

// Every API call has a timeout: List too (on an API server without watch-list).
func TestListHasATimeout(t *testing.T) {
	c := &memClient{noWatchList: true}
	startLock(t, c, clocktesting.NewFakeClock(time.Unix(1_000_000, 0)))
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.listDeadline) == 0 {
		t.Fatal("the lock synced without a List on an API server without watch-list")
	}
	for i, ok := range c.listDeadline {
		if !ok {
			t.Fatalf("List call %d had no deadline", i)
		}
	}
}

// A third party deletes a Lease that another Pod holds. That Pod may not have seen the
// deletion yet and still say held, so a waiter waits out the hold it last observed
// (lease-duration after it saw the record change), as it would for an expiring Lease,
// and creates the Lease again with the next token: tokens do not restart at 1 for an
// agent that saw the deleted record.
func TestDeletedLeaseIsWaitedOutAndTokensGoOn(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clk := clocktesting.NewFakeClock(now)
	other, dur, tr := "other_pod", int32(15), int32(4)
	renewed := metav1.NewMicroTime(now)
	c := &memClient{rv: 7, lease: &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &dur, LeaseTransitions: &tr,
			RenewTime: &renewed, AcquireTime: &renewed},
	}}
	l, _ := startLock(t, c, clk)
	clk.Step(5 * time.Second)
	c.remove(true)
	eventually(t, "the watch delivers the deletion", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.lease == nil
	})
	_, _, err := l.Acquire(context.Background(), AcquireOptions{})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != other || held.ValidFor != 10*time.Second {
		t.Fatalf("try right after another Pod's live Lease was deleted: want held by %s for 10s more, got %v", other, err)
	}
	c.mu.Lock()
	created := c.lease != nil
	c.mu.Unlock()
	if created {
		t.Fatal("the try created the Lease while its last holder may still say held")
	}
	clk.Step(10 * time.Second)
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.Token != 5 {
		t.Fatalf("after the deleted hold ran out: want acquired with token 5 (the deleted record had 4), got %+v %v", s, err)
	}
}

// A hold that is lost (the Lease deleted or rewritten by a third party) was promised to
// its client for validFor: another client of the same Pod gets the lock only once that
// promise has run out (found by the chaos suite: tokens 144 and 145 of one agent
// overlapped by 111 ms after a deletion).
func TestLostHoldsPromiseIsWaitedOutLocally(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	x, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.ValidForMillis != 10000 {
		t.Fatalf("X acquire: %+v %v", s, err)
	}
	clk.Step(4 * time.Second) // X may rely on its hold for 6s more
	c.remove(true)
	eventually(t, "the deletion ends X's hold", func() bool { return ended(x) })
	_, _, err = l.Acquire(context.Background(), AcquireOptions{})
	var held *HeldError
	if !errors.As(err, &held) || held.ValidFor != 6*time.Second {
		t.Fatalf("Y's try while X's lost hold was promised for 6s more: want held for 6s, got %v", err)
	}
	clk.Step(6 * time.Second)
	if _, s, err := l.Acquire(context.Background(), AcquireOptions{}); err != nil || !s.Held || s.Token != 2 {
		t.Fatalf("Y's try after X's promise ran out: want token 2, got %+v %v", s, err)
	}
}

// An acquisition write that landed although its answer timed out leaves a record that
// names this agent, which no client was told it holds: the next acquire takes it over at
// once with the next token, instead of waiting lease-duration as for another Pod's hold
// (or a previous incarnation's).
func TestTimedOutWriteThatLandedIsTakenOverAtOnce(t *testing.T) {
	for _, existing := range []bool{false, true} {
		t.Run(map[bool]string{false: "create", true: "update"}[existing], func(t *testing.T) {
			clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
			c := &memClient{}
			l, _ := startLock(t, c, clk)
			ctx := context.Background()
			if existing {
				h, _, err := l.Acquire(ctx, AcquireOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := l.Release(ctx, h.Token()); err != nil {
					t.Fatal(err)
				}
			}
			before := c.rv
			c.mu.Lock()
			c.landThenFail = apierrors.NewTimeoutError("the write timed out", 1)
			c.mu.Unlock()
			if _, _, err := l.Acquire(ctx, AcquireOptions{}); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("acquire whose answer timed out: want ErrUnavailable, got %v", err)
			}
			c.mu.Lock()
			c.landThenFail = nil
			landed := RecordOf(c.lease)
			c.mu.Unlock()
			if c.rv == before || landed.Holder != "pod_uid" {
				t.Fatalf("the write did not land: %+v", landed)
			}
			eventually(t, "the watch to bring the landed record", func() bool { return l.State().Holder == "pod_uid" })
			if s := l.State(); s.Held {
				t.Fatalf("a write nobody was answered for is reported held: %+v", s)
			}
			h, s, err := l.Acquire(ctx, AcquireOptions{})
			if err != nil {
				t.Fatalf("acquire after the landed write: want it taken over at once, got %v", err)
			}
			if h.Token() != int64(landed.Transitions)+1 || !s.Held {
				t.Fatalf("want held with token %d (the landed record's + 1), got %+v", landed.Transitions+1, s)
			}
		})
	}
}

// A record that names this agent but was not written by this process (a previous
// incarnation of the agent container) is still waited out.
func TestOwnIdentityFromAnotherProcessIsWaitedOut(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	holder, dur, tr := "pod_uid", int32(15), int32(3)
	now := metav1.NewMicroTime(clk.Now())
	c := &memClient{rv: 7, lease: &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, LeaseTransitions: &tr,
			AcquireTime: &now, RenewTime: &now},
	}}
	l, _ := startLock(t, c, clk)
	if _, _, err := l.Acquire(context.Background(), AcquireOptions{}); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("want the previous incarnation's hold waited out (ErrNotAcquired), got %v", err)
	}
}

// A waiter of another Pod queues (an annotation only) on the record of our acquisition
// before its answer reaches us: the watch brings the queued copy first. The record is
// still our write, so the acquisition holds; it must not take its own record for a
// foreign hold and leave the lock unusable for lease-duration.
func TestAcquireOvertakenByAQueuedWaiter(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	c.afterWrite = func() {
		c.mu.Lock()
		c.afterWrite = nil
		c.mu.Unlock()
		c.mu.Lock()
		next := c.lease.DeepCopy()
		next.Annotations = map[string]string{AnnotationQueue: "other_pod"}
		c.store(next)
		c.mu.Unlock()
		eventually(t, "the watch delivers the queued copy", func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.rv == uint64(c.rv)
		})
	}
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || !s.Held || s.Token != 1 {
		t.Fatalf("acquire whose record a waiter queued on: want held with token 1, got %+v %v", s, err)
	}
}

// An admission policy that refuses a Pod's write on a Lease another Pod holds (one
// older than the queue) refuses the waiter's entry in the queue: the agent waits
// without it, stays ready (not forbidden), and does not try again on every wake-up.
func TestQueueWriteRefusedByAnOlderPolicy(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	if _, _, err := l.Acquire(context.Background(), AcquireOptions{}); err != nil {
		t.Fatal(err)
	}
	c.rewrite("other_pod")
	eventually(t, "the watch delivers the other holder", func() bool { return l.State().Holder == "other_pod" })
	clk.Step(11 * time.Second) // past what was promised of the lost hold, before other_pod's runs out
	refused := 0
	c.refuse = func(old, next *coordinationv1.Lease) error {
		if holderOf(old) != "pod_uid" {
			refused++
			return apierrors.NewForbidden(schema.GroupResource{Resource: "leases"}, next.Name, errors.New("denied by policy"))
		}
		return nil
	}
	for range 2 {
		_, _, err := l.tryAcquire(context.Background(), &Hold{lock: l, done: make(chan struct{})}, false, false, true)
		if !errors.Is(err, ErrNotAcquired) {
			t.Fatalf("a waiter whose queue write is refused: want not acquired (held by other_pod), got %v", err)
		}
	}
	if l.Forbidden() || refused != 1 {
		t.Fatalf("after the refused queue write: want not forbidden and 1 refused write, got forbidden %v, %d refused", l.Forbidden(), refused)
	}
}
