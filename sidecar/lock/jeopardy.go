package lock

import (
	"context"
	"errors"
	"net/http"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// Riding out control-plane blips: jeopardy, grace, and patient waiters.
//
// A holder that cannot renew stops saying "held" at renew-deadline, as always (nothing
// is promised past renew-deadline without a successful write). When what kept it from
// renewing was the API server being unavailable (no connection, a reset, a timeout, a
// 5xx or a 429), the hold is not given up but put in jeopardy: not held, validFor 0,
// and the same conditional renewal, based on the resourceVersion of the agent's last
// write, goes on every retry-period. A renewal that lands proves that nobody wrote the
// Lease since that write, so nobody else can have held the lock in between: the hold
// resumes with the same fencing token ("safe"). A conflict, another holder, the Lease
// deleted, a refusal (403 or another 4xx), a ttl that ran out or the grace period
// passing end the hold as lost.
//
// A waiter that lost the API server itself must not blame the holder for the outage
// they shared: until it has read the Lease again (its watch is back), it takes over no
// hold that it judged expired, and the expiry it measures restarts when it is back. A
// live holder then renews within retry-period and keeps the lock; a dead one is
// replaced lease-duration after the outage. A watch can be dead without knowing it (a
// black-holed connection), so a takeover of an expired hold first reads the Lease: a
// read that fails or is slow is an outage, a read that shows a newer record restarts
// the clock; a waiting acquisition reads retry-period ahead of the expiry and again at
// it (reread).

// unavailable says whether err means that the API server could not be reached or could
// not serve (no answer, a timeout, a 5xx, a 429), as opposed to an answer that refuses
// the write (403, 409, another 4xx).
func unavailable(err error) bool {
	if err == nil {
		return false
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true // no answer: refused, reset, timed out
	}
	code := status.Status().Code
	return code >= http.StatusInternalServerError || code == http.StatusTooManyRequests ||
		apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err)
}

// markOutageLocked notes that this agent lost the API server, and has the watch start
// again: the watch of a black-holed connection says nothing, and only a new one shows
// when the API server is back.
func (l *Lock) markOutageLocked() {
	if l.outage {
		return
	}
	l.outage = true
	close(l.rewatch)
	l.rewatch = make(chan struct{})
}

// endOutageLocked is called when the Lease was read again (a watch's initial state, a
// List): after an outage, the expiry of the holder restarts now, as does the turn of
// the queue's head. The holder shared the outage; it may renew from now on.
func (l *Lock) endOutageLocked(now time.Time) {
	if !l.outage {
		return
	}
	l.outage = false
	l.observedAt = now
	l.gone = l.gone.afterOutage(now, l.cfg.LeaseDuration)
}

// reread reads the Lease from the API server before an expired hold is taken over
// (called with writeMu held, mu not held). It returns true when the record is still
// the one that was judged expired. A read that fails is an outage (ErrUnavailable).
//
// A read that was slow (slowRead or more) is an outage too, though it was answered: it
// waited for an API server that was away (a blip of the whole control plane, which the
// silent watch did not show), and the holder's renewals may be waiting behind it in the
// same way. The answer is not proof that the holder is dead: its expiry restarts from
// the answer, and a live holder's renewal lands meanwhile (found by the chaos suite: a
// waiter's read sent into a blip, answered right after it, took a live leader's lock
// before the leader's own renewal landed).
//
// A waiting acquisition reads retry-period ahead of the holder's expiry (confirmAt) and,
// when that read was fast and showed the same record, again at the expiry: a blip that
// ends within that retry-period makes the first read slow, and after one that ended
// earlier the holder has had retry-period to land its renewal (found by the chaos
// suite: 2 of 45 blips lost the leader lock when one read at the expiry came right
// after the blip). The takeover is still no later than the expiry.
func (l *Lock) reread(ctx context.Context, judged *coordinationv1.Lease, confirmAt time.Time) (bool, error) {
	same, err := l.readBeforeTakeover(ctx, judged)
	if err != nil || !same || confirmAt.IsZero() {
		return same, err
	}
	if wait := confirmAt.Sub(l.cfg.Clock.Now()); wait > 0 {
		select {
		case <-ctx.Done():
			return false, ctxErr(ctx)
		case <-l.closing:
			return false, ErrShutdown
		case <-l.cfg.Clock.After(wait):
		}
	}
	return l.readBeforeTakeover(ctx, judged)
}

// readBeforeTakeover is one read of reread.
func (l *Lock) readBeforeTakeover(ctx context.Context, judged *coordinationv1.Lease) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, l.writeTimeout())
	defer cancel()
	sel := fields.OneTermEqualSelector("metadata.name", l.cfg.Name).String()
	sent := l.cfg.Clock.Now()
	list, err := l.cfg.Client.List(rctx, metav1.ListOptions{FieldSelector: sel})
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if unavailable(err) {
			l.markOutageLocked()
		}
		return false, l.writeFailedLocked("read", err)
	}
	var item *coordinationv1.Lease
	if len(list.Items) > 0 {
		item = &list.Items[0]
	}
	now := l.cfg.Clock.Now()
	l.observeAbsentOrLocked(item, list.ResourceVersion)
	l.endOutageLocked(now)
	readRV := ""
	if l.lease != nil {
		readRV = l.lease.ResourceVersion
	}
	same, restart := takeoverRead(judged.ResourceVersion, l.lease != nil, readRV, now.Sub(sent), l.slowRead())
	if restart {
		l.observedAt = now
		l.cfg.Log.V(1).Info("Waiting a lease-duration more: the read before a takeover was slow", "lock", l.cfg.Name,
			"took", now.Sub(sent).String(), "holder", holderOf(l.lease))
	}
	if !same {
		l.broadcastLocked()
	}
	return same, nil
}

// slowRead is how long a read may take and still show the API server available: half
// of retry-period (1 s by default), many times what a read of one Lease takes.
func (l *Lock) slowRead() time.Duration { return l.cfg.RetryPeriod / 2 }
