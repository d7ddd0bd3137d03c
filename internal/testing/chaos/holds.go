package chaos

import (
	"context"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// holdPoll is how often a holdObserver reads the Leases.
const holdPoll = 20 * time.Millisecond

// holdObserver follows the Leases of the mutex and the leader lock across one fault
// that takes the API server away, with the admin client (which reaches kube-apiserver
// directly, not through the agents' proxies). Polling, not a watch: a watch from the
// resourceVersion read before the fault would not survive a kube-apiserver restart (the
// new API server's watch cache starts at the current revision and answers an older one
// with 410 Gone), and a Get every 20 ms misses a version only when two writes land
// within 20 ms (see HoldFate).
type holdObserver struct {
	h *Harness
	// start is the wall-clock time after the first reads: a renewal whose renewTime
	// (the holder's send time) is not before it was sent after the fault began.
	start time.Time
	stop  chan struct{}
	done  chan struct{}

	mu    sync.Mutex
	fates []HoldFate
	rv    []string // the resourceVersion last read, per fate
}

// leaseHold is the holder and token a Lease names ("" and the token when released).
func leaseHold(l *coordinationv1.Lease) (string, int64) {
	var holder string
	var tok int64
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if l.Spec.LeaseTransitions != nil {
		tok = int64(*l.Spec.LeaseTransitions)
	}
	return holder, tok
}

// getLease reads a Lease with a short timeout.
func (h *Harness) getLease(ctx context.Context, lock string) (*coordinationv1.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return h.admin.CoordinationV1().Leases(h.cfg.Namespace).Get(ctx, lock, metav1.GetOptions{})
}

// observeHolds reads the mutex's and the leader lock's Leases (just before a fault)
// and follows them until finish.
func (h *Harness) observeHolds(ctx context.Context) *holdObserver {
	o := &holdObserver{h: h, stop: make(chan struct{}), done: make(chan struct{})}
	started := map[string]time.Time{} // running agents: identity -> process start
	for _, s := range h.slots {
		started[s.identity()] = s.started
	}
	for _, lock := range []string{h.cfg.Mutex, h.cfg.Leader} {
		f := HoldFate{Lock: lock, Outcome: HoldFree}
		var rv string
		if l, err := h.getLease(ctx, lock); err == nil {
			f.Holder, f.Token = leaseHold(l)
			f.AfterHolder, f.AfterToken = f.Holder, f.Token
			rv = l.ResourceVersion
			at, running := started[f.Holder]
			switch {
			case f.Holder == "":
			case !running || l.Spec.RenewTime == nil || l.Spec.RenewTime.Time.Before(at):
				// Not a running agent's, or renewed last by an earlier incarnation of a
				// restarted container: nobody is there to keep it.
				f.Outcome = HoldGone
			default:
				f.Outcome = HoldUndecided
			}
		}
		o.fates = append(o.fates, f)
		o.rv = append(o.rv, rv)
	}
	o.start = time.Now()
	go o.poll(ctx)
	return o
}

// poll reads the Leases of the undecided holds every holdPoll until each is decided
// or stop is closed.
func (o *holdObserver) poll(ctx context.Context) {
	defer close(o.done)
	t := time.NewTicker(holdPoll)
	defer t.Stop()
	for {
		undecided := 0
		for i := range o.fates {
			o.mu.Lock()
			f := o.fates[i]
			o.mu.Unlock()
			if f.Outcome != HoldUndecided {
				continue
			}
			undecided++
			l, err := o.h.getLease(ctx, f.Lock)
			o.mu.Lock()
			switch {
			case apierrors.IsNotFound(err):
				o.fates[i].Outcome, o.fates[i].AfterHolder, o.fates[i].AfterToken, o.fates[i].Decided = HoldChanged, "", 0, Now()
			case err != nil || l.ResourceVersion == o.rv[i]:
				// Unreachable (a restart) or not written since the last read.
			default:
				o.rv[i] = l.ResourceVersion
				o.fates[i].decide(l, o.start)
			}
			o.mu.Unlock()
		}
		if undecided == 0 {
			return
		}
		select {
		case <-o.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// decide takes a new version l of the Lease of an undecided hold, the fault having
// begun at start (wall clock).
func (f *HoldFate) decide(l *coordinationv1.Lease, start time.Time) {
	holder, tok := leaseHold(l)
	f.AfterHolder, f.AfterToken = holder, tok
	switch {
	case holder == f.Holder && tok == f.Token:
		// The same hold: decided only by a renewal sent after the fault began (not by a
		// waiter's queue write, which keeps the renewTime).
		if l.Spec.RenewTime != nil && !l.Spec.RenewTime.Time.Before(start) {
			f.Outcome, f.Decided = HoldKept, Now()
		}
	case holder == "" && tok == f.Token:
		f.Outcome, f.Decided = HoldCleared, Now()
	default:
		f.Outcome, f.Decided = HoldChanged, Now()
	}
}

// finish waits, after the fault was healed, until every hold is decided or settle has
// passed, and returns the fates.
func (o *holdObserver) finish(settle time.Duration) []HoldFate {
	t := time.NewTimer(settle)
	defer t.Stop()
	select {
	case <-o.done:
	case <-t.C:
		close(o.stop)
		<-o.done
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]HoldFate(nil), o.fates...)
}
