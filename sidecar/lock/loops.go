package lock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
)

// renewLoop renews the Lease while held: when healthy once the last successful write
// is older than renew-deadline/2, after a failure every retry-period. When
// renew-deadline passes without a successful write, the hold goes into jeopardy (or
// is lost), and a hold in jeopardy is lost when its grace period passes
// (machine.deadline, machine.go).
func (l *Lock) renewLoop(ctx context.Context) {
	for ctx.Err() == nil {
		l.mu.Lock()
		ch := l.changed
		now := l.cfg.Clock.Now()
		l.stepLocked(deadline{apiErr: l.apiErr}, now)
		at, held := l.m.nextRenew()
		next := at.Sub(now)
		l.mu.Unlock()
		switch {
		case !held:
			select {
			case <-ch:
			case <-ctx.Done():
			}
		case next <= 0:
			l.renewOnce(ctx)
		default:
			t := l.cfg.Clock.NewTimer(next)
			select {
			case <-ch:
			case <-t.C():
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
}

// renewOnce sends the renewal the machine asks for (renewDue) and feeds the answer back
// (renewResult).
func (l *Lock) renewOnce(ctx context.Context) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	send := l.cfg.Clock.Now()
	rec := RecordOf(l.lease)
	out := l.stepLocked(renewDue{present: l.lease != nil, rec: rec, apiErr: l.apiErr}, send)
	if out.write != writeRenew {
		l.mu.Unlock()
		return
	}
	acquired := rec.Acquired
	if acquired.IsZero() {
		acquired = send
	}
	next := withRecord(l.lease, l.cfg.Namespace, l.cfg.Name, l.meta(), l.record(acquired, send, int32(l.m.token)))
	l.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, out.writeTimeout)
	defer cancel()
	// A renewal still in flight at renew-deadline must not hold the jeopardy back: the
	// state says jeopardy from that moment (machine.reported), and so do the events.
	if out.deadlineIn > 0 {
		deadlineTimer := l.cfg.Clock.AfterFunc(out.deadlineIn, func() {
			go func() { // not under the clock's lock (a fake clock runs callbacks under it)
				l.mu.Lock()
				defer l.mu.Unlock()
				l.stepLocked(deadline{apiErr: l.apiErr}, l.cfg.Clock.Now())
			}()
		})
		defer deadlineTimer.Stop()
	}
	resp, err := l.cfg.Client.Update(wctx, next, metav1.UpdateOptions{})
	// unread: a conflict whose current record could not be read. It may be this
	// agent's own renewal that landed unseen (a timeout), so it is no proof that the
	// hold ended: it counts as unavailability, and the next renewal reads again.
	unread := apierrors.IsConflict(err)
	if l.refreshAfterConflict(wctx, err) {
		unread = false
		// Someone wrote since our copy. When it was only the queue (a waiter of
		// another Pod queued), the current record still names this hold: renew on it.
		// Anything else has ended the hold (observed).
		l.mu.Lock()
		cur := l.lease
		ours := l.m.holding() && l.m.ours(cur != nil, RecordOf(cur))
		if ours {
			next = withRecord(cur, l.cfg.Namespace, l.cfg.Name, l.meta(), l.record(acquired, send, int32(l.m.token)))
		}
		l.mu.Unlock()
		if ours {
			resp, err = l.cfg.Client.Update(wctx, next, metav1.UpdateOptions{})
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	var werr error
	switch {
	case !l.m.holding():
	case err == nil:
		l.forbidden = false
		l.apiErr = nil
		l.observeLocked(resp, send)
	default:
		werr = l.writeFailedLocked("renew", err)
	}
	l.stepLocked(renewResult{sent: send, raw: err, unread: unread, err: werr}, l.cfg.Clock.Now())
}

// watchLoop feeds the cache of the one Lease. Every watch it opens first sends the
// Lease as it is now and then its changes (sendInitialEvents, "watch-list": one
// request where a List and a Watch were two), in a state not older than the last
// resourceVersion this lock saw. After a failure (of the open, or an error event) it
// waits watchBackoff, growing while the failures go on.
//
// Why not a watch resumed from the last resourceVersion: when kube-apiserver restarts,
// every agent's watches break at once, and a watch resumed from its old
// resourceVersion is answered 410 by the new watch cache (which starts at etcd's
// current revision); the state was then listed and watched again: three requests per
// lock where one does, with the holders' renewals waiting behind them (BENCHMARKS.md,
// Scale). A watch-list "not older than" the last resourceVersion is served from the
// new watch cache as it is; it costs the API server about what a resumed watch does
// (the one Lease, sent once more).
//
// An API server without watch-list (the WatchList feature gate off, as by default
// before Kubernetes 1.32) refuses the request as invalid; the lock then lists, and
// watches from the listed resourceVersion, resuming from the last one it saw after a
// watch's clean end, as client-go's reflector does.
func (l *Lock) watchLoop(ctx context.Context) {
	st := &watchState{sel: fields.OneTermEqualSelector("metadata.name", l.cfg.Name).String(), backoff: l.watchBackoff()}
	for ctx.Err() == nil {
		l.renewalFirst(ctx)
		if l.noWatchList && st.rv == "" {
			var err error
			if st.rv, err = l.list(ctx, st.sel); err != nil {
				l.watchFailed(err)
				l.sleep(ctx, st.backoff())
			}
			continue
		}
		opts := l.watchOptions(st)
		w, err := l.cfg.Client.Watch(ctx, opts)
		if err != nil {
			l.watchOpenFailed(ctx, st, opts.SendInitialEvents != nil, err)
			continue
		}
		st.failures = 0
		l.watchOnce(ctx, st, w, opts.SendInitialEvents != nil)
	}
}

// watchState is what the watch loop carries from one watch to the next.
type watchState struct {
	sel string
	// rv is the last resourceVersion seen: where a watch-list's state may not be older
	// than, or where a watch resumes without watch-list; "" when the state must be
	// read as the API server has it now.
	rv string
	// failures counts the opens failed in a row.
	failures int
	backoff  wait.DelayFunc
}

// watchOptions are the options of the next watch: a watch-list not older than st.rv,
// or, without watch-list, a watch from st.rv.
func (l *Lock) watchOptions(st *watchState) metav1.ListOptions {
	timeout := int64(300 + rand.IntN(300))
	opts := metav1.ListOptions{FieldSelector: st.sel, AllowWatchBookmarks: true, TimeoutSeconds: &timeout,
		ResourceVersion: st.rv}
	if !l.noWatchList {
		// Not older than what this lock has seen: kube-apiserver serves that from its
		// watch cache; with no resourceVersion (at start, or after a 410), it first
		// asks etcd for the current revision.
		opts.SendInitialEvents = ptr.To(true)
		opts.ResourceVersionMatch = metav1.ResourceVersionMatchNotOlderThan
	}
	return opts
}

// watchOpenFailed takes a watch that could not be opened: a watch-list refused as
// invalid turns watch-list off; a 410 reads the state again at once; anything else
// waits the backoff (the first time plus the reconnect spread).
func (l *Lock) watchOpenFailed(ctx context.Context, st *watchState, watchList bool, err error) {
	gone := apierrors.IsGone(err) || apierrors.IsResourceExpired(err)
	if l.noWatchList || gone {
		st.rv = ""
	}
	if watchList && (apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)) {
		l.cfg.Log.V(1).Info("The API server does not serve watch-list; listing, then watching", "lock", l.cfg.Name, "err", err.Error())
		l.noWatchList = true
		return
	}
	if gone {
		return
	}
	l.watchFailed(err)
	pause := st.backoff()
	if st.failures == 0 {
		pause += l.reconnectSpread()
	}
	st.failures++
	l.sleep(ctx, pause)
}

// watchOnce feeds the cache from w until it ends, and waits the backoff when it failed
// or ended at once, so that a watch is not opened again in a tight loop.
func (l *Lock) watchOnce(ctx context.Context, st *watchState, w watch.Interface, watchList bool) {
	opened := l.cfg.Clock.Now()
	seen, err := l.consume(ctx, w, st.rv, watchList)
	w.Stop()
	if seen != "" {
		st.rv = seen
	}
	lasted := l.cfg.Clock.Since(opened) >= l.cfg.RetryPeriod
	if lasted {
		st.backoff = l.watchBackoff()
	}
	if errors.Is(err, errRewatch) {
		return // at once: the new watch shows when the API server is back
	}
	gone := apierrors.IsGone(err) || apierrors.IsResourceExpired(err)
	if err != nil && !gone {
		l.watchFailed(err)
	}
	if err != nil && (l.noWatchList || gone) {
		st.rv = ""
	}
	if err != nil && !gone || err == nil && !lasted && ctx.Err() == nil {
		l.sleep(ctx, st.backoff())
	}
}

// list reads the Lease (for an API server without watch-list) and returns the
// resourceVersion to watch from.
func (l *Lock) list(ctx context.Context, sel string) (string, error) {
	lctx, cancel := context.WithTimeout(ctx, l.listTimeout())
	defer cancel()
	list, err := l.cfg.Client.List(lctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return "", err
	}
	var item *coordinationv1.Lease
	if len(list.Items) > 0 {
		item = &list.Items[0]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.observeAbsentOrLocked(item, list.ResourceVersion)
	l.endOutageLocked(l.cfg.Clock.Now())
	l.synced = true
	l.broadcastLocked()
	return list.ResourceVersion, nil
}

// reconnectSpread is the extra pause after the first failed attempt to open the watch
// of a lock that is not held: a random duration up to renew-deadline. When
// kube-apiserver restarts, every agent's watches break at the same moment and their
// first attempts fail together (the connection refused, or a 429 or 503 from the
// server shutting down); when it comes back, every watch-list and every agent's TLS
// handshake arrived within a few seconds, while the holders' renewals must land
// before their renew-deadline: at 1,000 Pods on 2 CPUs the renewals waited behind the
// rest and every holder lost its lock (BENCHMARKS.md, Scale). Spread over
// renew-deadline, the watches that nothing depends on right now make room for the
// renewals. A holder's own watch waits for its renewal instead (renewalFirst).
func (l *Lock) reconnectSpread() time.Duration {
	l.mu.Lock()
	held := l.m.holding()
	l.mu.Unlock()
	if held {
		return 0
	}
	return rand.N(l.cfg.RenewDeadline)
}

// noAnswer says whether err is a request that got no answer from the API server (no
// connection, a broken one, a timeout), as opposed to an answer that is an error.
func noAnswer(err error) bool {
	var status apierrors.APIStatus
	return err != nil && !errors.As(err, &status)
}

// renewalFirst waits while this lock is held and its renewal failing: until a
// renewal lands, or the hold ends. A holder needs nothing from its watch to renew (a
// conflict reads the Lease again), and while it cannot renew its hold is running out:
// after kube-apiserver restarts, the renewals of a cluster's holders must get through
// while every agent's watches come back, so the holders' watches wait for them.
func (l *Lock) renewalFirst(ctx context.Context) {
	for {
		l.mu.Lock()
		wait, ch := l.m.holding() && l.m.failing, l.changed
		l.mu.Unlock()
		if !wait {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// watchBackoff returns the pauses between attempts to list or watch the Lease while
// they fail: from retry-period/2, doubling up to 2 × retry-period, each plus up to as
// much again at random (client-go's wait.Backoff with Jitter 1: 1-2 s, 2-4 s, then 4-8 s
// with the default retry-period of 2 s). When kube-apiserver restarts, every agent's
// watches break at the same moment; with a fixed retry-period they came back in step, in
// waves every retry-period, each one all of the cluster's watches at once (BENCHMARKS.md,
// Scale). The cap keeps a waiter's watch, the way it hears of a release, at most 8 s
// behind an API server that is back.
func (l *Lock) watchBackoff() wait.DelayFunc {
	return wait.Backoff{Duration: l.cfg.RetryPeriod / 2, Factor: 2, Jitter: 1, Steps: math.MaxInt32, Cap: 2 * l.cfg.RetryPeriod}.DelayFunc()
}

// listTimeout bounds the List of the Lease. A List is no write, so nothing safe
// depends on a short one; it waits in the API server's queues with everything else
// while a cluster's agents start at once, and one given up after the write timeout
// (5 s by default) was work done for nothing and asked again: at 300 agents starting
// together, 0.8 Lists per agent (BENCHMARKS.md, Scale). A dead connection is still
// found sooner by client-go's HTTP/2 health check.
func (l *Lock) listTimeout() time.Duration {
	return max(l.writeTimeout(), listTimeoutMin)
}

// listTimeoutMin is the least time a List of the Lease is given.
const listTimeoutMin = 30 * time.Second

func (l *Lock) watchFailed(err error) {
	l.cfg.Log.V(1).Info("Failed to watch lease", "lock", l.cfg.Name, "err", err.Error())
	if errors.Is(err, errRewatch) {
		return
	}
	l.mu.Lock()
	l.markOutageLocked()
	l.mu.Unlock()
}

// errRewatch ends a watch that a write found the API server gone under (markOutageLocked).
var errRewatch = errors.New("the API server did not answer a write: watching again")

// consume feeds the cache from w until it ends. With initial (a watch-list), the
// watch first sends the Lease if it exists, then a bookmark marking the end of the
// initial state: from then on the cache is synced, the Lease absent when none came.
// It returns the last resourceVersion seen, and an error when the watch ended in a way
// that needs a new watch-list (or List): an error event, or no end of the initial state
// within listTimeout (then the server ignored sendInitialEvents: from now on the lock
// lists first).
func (l *Lock) consume(ctx context.Context, w watch.Interface, rv string, initial bool) (string, error) {
	c := &consumer{rv: rv, initial: initial}
	l.mu.Lock()
	rewatch := l.rewatch
	l.mu.Unlock()
	if initial {
		c.timer = l.cfg.Clock.NewTimer(l.listTimeout())
		defer c.timer.Stop()
		c.initialDone = c.timer.C()
	}
	for {
		select {
		case <-ctx.Done():
			return c.rv, nil
		case <-rewatch:
			return c.rv, errRewatch
		case <-c.initialDone:
			l.noWatchList = true
			return c.rv, fmt.Errorf("the watch sent no end of its initial events within %s; listing, then watching", l.listTimeout())
		case ev, ok := <-w.ResultChan():
			if !ok {
				// Closed: its timeout, or the connection. Resume from where it was (a
				// 410 then reads the state again); a watch-list that had not finished
				// its initial events has nothing to resume from.
				if c.initial {
					return c.rv, errors.New("the watch ended before the end of its initial events")
				}
				return c.rv, nil
			}
			if err := l.takeEvent(c, ev); err != nil {
				return c.rv, err
			}
		}
	}
}

// consumer is what consume carries from one event of a watch to the next.
type consumer struct {
	rv string
	// seen: the watch sent the Lease; initial: its initial events have not ended yet,
	// and initialDone fires when they took too long.
	seen, initial bool
	timer         clock.Timer
	initialDone   <-chan time.Time
}

// takeEvent takes one event of a watch into the cache; an error event ends the watch.
func (l *Lock) takeEvent(c *consumer, ev watch.Event) error {
	switch ev.Type {
	case watch.Added, watch.Modified:
		lease, ok := ev.Object.(*coordinationv1.Lease)
		if !ok {
			return nil
		}
		c.rv, c.seen = lease.ResourceVersion, true
		l.mu.Lock()
		l.observeAbsentOrLocked(lease, c.rv)
		l.broadcastLocked()
		l.mu.Unlock()
	case watch.Deleted:
		if m, err := meta.Accessor(ev.Object); err == nil {
			c.rv = m.GetResourceVersion()
		}
		l.mu.Lock()
		l.observeAbsentOrLocked(nil, c.rv)
		l.broadcastLocked()
		l.mu.Unlock()
	case watch.Bookmark:
		l.takeBookmark(c, ev)
	case watch.Error:
		return apierrors.FromObject(ev.Object)
	}
	return nil
}

// takeBookmark takes a bookmark; the one that ends a watch-list's initial events
// makes the cache synced, the Lease absent when none came.
func (l *Lock) takeBookmark(c *consumer, ev watch.Event) {
	m, err := meta.Accessor(ev.Object)
	if err != nil {
		return
	}
	c.rv = m.GetResourceVersion()
	if !c.initial || m.GetAnnotations()[metav1.InitialEventsAnnotationKey] != "true" {
		return
	}
	c.initial, c.initialDone = false, nil
	c.timer.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !c.seen {
		l.observeAbsentOrLocked(nil, c.rv)
	}
	l.endOutageLocked(l.cfg.Clock.Now())
	l.synced = true
	l.broadcastLocked()
}

// observeAbsentOrLocked takes a listed or watched record; a nil lease means absent as
// of resourceVersion rv.
func (l *Lock) observeAbsentOrLocked(lease *coordinationv1.Lease, rv string) {
	now := l.cfg.Clock.Now()
	if lease != nil {
		l.observeLocked(lease, now)
		return
	}
	n, newer := newerRV(l.rv, rv)
	if !newer {
		return
	}
	l.rv = n
	if old := l.lease; old != nil {
		// Remember the deleted record: a hold it names may still be relied on until
		// lease-duration after we saw it change, and its token must not come back.
		wrote, ld := l.wroteLocked(old), time.Duration(0)
		if holderOf(old) != "" && !wrote {
			ld = l.leaseDurationLocked()
		}
		l.gone = l.gone.deleted(old, wrote, l.observedAt, ld)
		l.observedAt = now
	}
	l.lease = nil
	l.stepLocked(observed{present: false}, now)
}
