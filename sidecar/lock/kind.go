package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Locker is one declared lock, of any kind: a mutex, a leader lock or a semaphore.
// The manager keeps one per declared name and the local API drives it, neither knowing
// which kind it is: what differs between the kinds is behind these methods (NoToken,
// Tie), never a switch on Mode in a caller.
type Locker interface {
	// Name is the declared name (a semaphore's own name, not its slots').
	Name() string
	// Mode names the kind, for the State on the wire and for metrics labels.
	Mode() Mode
	// State reports the lock now.
	State() State
	// Acquire takes the lock for one local client, waiting up to opts.Wait (0: try
	// once). The Hold is nil when the kind gives the client no hold of its own (a
	// leader lock: the agent holds it).
	Acquire(ctx context.Context, opts AcquireOptions) (*Hold, State, error)
	// Release ends the hold that token names.
	Release(ctx context.Context, token int64) (State, error)
	// Renew restarts the ttl of the hold that token names.
	Renew(token int64, ttl time.Duration) (State, error)
	// ReleaseHold ends h if it is still a hold of this lock (a connection closed).
	ReleaseHold(ctx context.Context, h *Hold, reason string)
	// NoToken is the error of a release or renew that names no hold: ErrTokenRequired
	// where holds are named by their fencing token, ErrLeaderLock where a client has
	// no hold to name.
	NoToken() error
	// Tie is what a connection hold (the API's hold=connection) follows once Acquire
	// answered h and s.
	Tie(h *Hold, s State) Tie
	// Changed is closed at the next change of the lock's state.
	Changed() <-chan struct{}
	// Leases are the names of the Leases the lock is made of.
	Leases() []string
	// Ready is nil once every Lease of the lock was read from the API server and the
	// last writes were allowed.
	Ready() error
	// Run watches and renews the lock's Leases until ctx ends.
	Run(ctx context.Context)
	// Shutdown ends every hold and clears the Leases this agent holds.
	Shutdown(ctx context.Context) error
}

// The three kinds.
var (
	_ Locker = mutex{}
	_ Locker = leader{}
	_ Locker = (*Semaphore)(nil)
)

// ErrTokenRequired: a release or renew named no hold by its fencing token.
var ErrTokenRequired = errors.New("fencing token required")

// Tie is what a connection hold follows: the kind decides what ends it. Closing the
// connection calls ReleaseHold with the acquire's Hold, which ends a client's hold and
// leaves a leader lock held (it has none).
type Tie interface {
	// Done is closed when the hold ends; nil when only Ended and EndedBy tell its end.
	Done() <-chan struct{}
	// Reason says why the hold ended, once Done is closed.
	Reason() string
	// Ended says whether the hold had already ended in now, a State read after the
	// acquire, and why.
	Ended(now State) (reason string, ended bool)
	// EndedBy says whether ev, an event that carries the hold's token, ends it.
	EndedBy(ev Event) bool
}

// clientTie follows a client's own hold (mutex, semaphore slot): it ends when the hold
// does, and the hold tells why.
type clientTie struct{ h *Hold }

func (t clientTie) Done() <-chan struct{}      { return t.h.Done() }
func (t clientTie) Reason() string             { return t.h.Reason() }
func (t clientTie) Ended(State) (string, bool) { return "", false }
func (t clientTie) EndedBy(Event) bool         { return false }

// termTie follows the agent's term of a leader lock: there is no client hold, so it
// ends when the term does (the lock lost or given up at shutdown), or had already ended
// when the state no longer shows the term's token held.
type termTie struct{ token int64 }

func (t termTie) Done() <-chan struct{} { return nil }
func (t termTie) Reason() string        { return "" }

func (t termTie) Ended(now State) (string, bool) {
	if now.Phase == PhaseNotHeld || now.Token != t.token {
		return "this Pod no longer leads", true
	}
	return "", false
}

func (t termTie) EndedBy(ev Event) bool { return ev.Type == EventLost || ev.Type == EventShutdown }

// mutex is a lock the application takes on demand: each acquisition is one client's
// hold, named by its fencing token.
type mutex struct{ *Lock }

func (mutex) NoToken() error             { return ErrTokenRequired }
func (mutex) Tie(h *Hold, _ State) Tie   { return clientTie{h} }
func newMutex(cfg Config) (mutex, error) { l, err := newKind(cfg, ModeMutex); return mutex{l}, err }

// leader is a lock the agent holds continuously while the Pod lives: an acquire waits
// until the agent leads and gives no hold; release and renew do not apply.
type leader struct{ *Lock }

func (leader) NoToken() error              { return ErrLeaderLock }
func (leader) Tie(_ *Hold, s State) Tie    { return termTie{s.Token} }
func newLeader(cfg Config) (leader, error) { l, err := newKind(cfg, ModeLeader); return leader{l}, err }

func newKind(cfg Config, mode Mode) (*Lock, error) {
	cfg.Mode = mode
	return New(cfg)
}

// The methods below are what the kinds (and a semaphore's slots) ask of a Lock beyond
// lock.go's exported ones; they read nothing but the Lock's exported methods and the
// Hold's owner.

// Leases is the lock's one Lease.
func (l *Lock) Leases() []string { return []string{l.Name()} }

// Ready is nil once the Lease was read from the API server and the last write was
// allowed.
func (l *Lock) Ready() error {
	if !l.Synced() {
		return fmt.Errorf("%w: lock %s not yet synced with the API server", ErrUnavailable, l.Name())
	}
	if l.Forbidden() {
		return fmt.Errorf("%w: lock %s", ErrForbidden, l.Name())
	}
	return nil
}

// owns says whether h is a hold of this Lock (of any age).
func (l *Lock) owns(h *Hold) bool { return h != nil && h.lock == l }

// readyAll is the first of parts' Ready errors (a manager's locks, a semaphore's slots).
func readyAll[P interface{ Ready() error }](parts []P) error {
	for _, p := range parts {
		if err := p.Ready(); err != nil {
			return err
		}
	}
	return nil
}

// shutdownAll shuts every part down at once.
func shutdownAll[P interface{ Shutdown(context.Context) error }](ctx context.Context, parts []P) error {
	var wg sync.WaitGroup
	errs := make([]error, len(parts))
	for i, p := range parts {
		wg.Go(func() { errs[i] = p.Shutdown(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
