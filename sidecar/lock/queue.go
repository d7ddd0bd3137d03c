package lock

import (
	"context"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/leasehold/leasehold/internal/contract"
)

// Fair queueing across Pods, for mutexes.
//
// The waiters of a mutex queue on the Lease itself: the annotation AnnotationQueue
// lists the holder identities of the agents that wait, in the order their entry landed
// (the API server's order, as etcd orders a mutex's waiters by revision).
//
//   - A waiter that finds the lock held and is not in the queue appends itself: one
//     conditional update of the annotation, no change to the record. (One that finds it
//     free but spoken for waits until the head took it, then appends itself.)
//   - The holder's renews and its release keep the queue. A release leaves the Lease
//     free with the queue in place: the head of the queue has it to itself for a turn of
//     RetryPeriod after the others saw it free (for a holder that died: after its
//     lease-duration ran out), and takes it with one write that also removes its entry.
//     The other waiters do not write: one writer per handover, no herd.
//   - A waiter that gave up (its wait ended, its client left, the agent shut down)
//     removes its entry. One that died while queued costs the waiters behind it one turn
//     (RetryPeriod, 2 s by default) when it reaches the head: after the turn anyone may
//     take the lock, and whoever does removes the entries it passed; a live waiter that
//     was passed appends itself again.
//   - A try (no wait) does not pass the queue: while waiters are queued and within their
//     turn, it is refused like a held lock.
//
// The queue only decides whose write comes first; safety does not depend on it: every
// acquisition is still one conditional update, and the record is client-go's. Leader
// locks and semaphore slots do not queue (a client-go elector ignores the annotation
// and keeps it on its writes).
const AnnotationQueue = contract.AnnotationQueue

// MaxQueue bounds the queue's entries (an annotation value is at most 256 KiB with the
// others; an identity is at most 290 bytes). A waiter that finds the queue full waits
// without an entry and takes the lock when it is free and the turn of the head passed.
const MaxQueue = 256

// fair is true for the locks whose waiters queue across Pods.
func (l *Lock) fair() bool { return l.cfg.Mode == ModeMutex }

// turn is how long the head of the queue has a free lock to itself.
func (l *Lock) turn() time.Duration { return l.cfg.RetryPeriod }

// enqueue appends this agent to the queue of cur (one conditional update; called with
// writeMu held, mu not held). A conflict returns errConflict: the caller decides again
// on the newer record.
func (l *Lock) enqueue(ctx context.Context, cur *coordinationv1.Lease) error {
	q := queueOf(cur)
	if slices.Contains(q, l.cfg.Identity) || len(q) >= MaxQueue {
		return nil
	}
	return l.writeQueue(ctx, "queue for", withQueue(cur, append(q, l.cfg.Identity)))
}

// leaveQueue removes this agent's entry, if any, from the cached record (best effort:
// a waiter that gave up, an agent shutting down). Called without locks.
func (l *Lock) leaveQueue(ctx context.Context) {
	if !l.fair() {
		return
	}
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		l.mu.Lock()
		cur := l.lease
		q := queueOf(cur)
		if !slices.Contains(q, l.cfg.Identity) || holderOf(cur) == l.cfg.Identity && l.m.holding() {
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		err := l.writeQueue(ctx, "leave the queue of", withQueue(cur, without(q, l.cfg.Identity)))
		if err == nil || !l.refreshAfterConflict(ctx, err) {
			return
		}
	}
}

// writeQueue writes next, a change of the queue only, and takes the answer into the
// cache.
func (l *Lock) writeQueue(ctx context.Context, what string, next *coordinationv1.Lease) error {
	wctx, cancel := context.WithTimeout(ctx, l.writeTimeout())
	defer cancel()
	send := l.cfg.Clock.Now()
	out, err := l.cfg.Client.Update(wctx, next, metav1.UpdateOptions{})
	l.mu.Lock()
	defer l.mu.Unlock()
	if apierrors.IsForbidden(err) {
		// An admission policy older than the queue (or a stricter one) refuses a Pod's
		// write on a Lease it does not hold. The lock still works without the queue:
		// this agent stops queueing and waits as before, and stays ready.
		if !l.queueRefused {
			l.queueRefused = true
			l.cfg.Log.Info("Waiting without a place in the queue: the API server refused the queue write",
				"lock", l.cfg.Name, "err", err.Error())
		}
		return nil
	}
	if err != nil {
		return l.writeFailedLocked(what, err)
	}
	l.observeLocked(out, send)
	l.broadcastLocked()
	return nil
}

// refreshAfterConflict reads the Lease again when err is a conflict on an update (409:
// someone wrote since our copy, e.g. a waiter queued), so that the caller can decide on
// the current record instead of on the watch's timing. It reports whether it did.
func (l *Lock) refreshAfterConflict(ctx context.Context, err error) bool {
	if !apierrors.IsConflict(err) {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, l.writeTimeout())
	defer cancel()
	sel := fields.OneTermEqualSelector("metadata.name", l.cfg.Name).String()
	list, lerr := l.cfg.Client.List(rctx, metav1.ListOptions{FieldSelector: sel})
	if lerr != nil {
		return false
	}
	var item *coordinationv1.Lease
	if len(list.Items) > 0 {
		item = &list.Items[0]
	}
	l.mu.Lock()
	l.observeAbsentOrLocked(item, list.ResourceVersion)
	l.broadcastLocked()
	l.mu.Unlock()
	return true
}
