package lock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/clock"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/sidecar/api/wire"
)

// Mode says how a lock is taken (the local API's wire.Mode: one definition).
type Mode = wire.Mode

const (
	// ModeMutex is a lock the application takes on demand (acquire, release).
	ModeMutex = wire.ModeMutex
	// ModeLeader is a lock the agent holds continuously while the Pod lives.
	ModeLeader = wire.ModeLeader
	// ModeSemaphore is a counting lock: N slot Leases, each taken like a mutex
	// (semaphore.go). A slot Lock has this mode.
	ModeSemaphore = wire.ModeSemaphore
)

// What the agent writes on a Lease besides the record: the contract's keys
// (internal/contract), defined there once.
const (
	LabelManagedBy          = contract.LabelManagedBy
	ManagedBy               = contract.ManagedBy
	AnnotationMode          = contract.AnnotationMode
	AnnotationSemaphore     = contract.AnnotationSemaphore
	AnnotationRenewDeadline = contract.AnnotationRenewDeadline
	AnnotationGrace         = contract.AnnotationGrace
)

// LeaseClient is the part of the Kubernetes API the engine uses: the Leases of one
// namespace. k8s.io/client-go's typed coordinationv1.LeaseInterface satisfies it.
type LeaseClient interface {
	List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error)
	Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error)
}

// Config configures one lock.
type Config struct {
	// Namespace and Name of the Lease; Name is the lock's name.
	Namespace, Name string
	// Identity is written as holderIdentity: unique per Pod incarnation (name_uid).
	Identity string
	Mode     Mode
	// Semaphore is the semaphore a ModeSemaphore slot belongs to.
	Semaphore string
	// LeaseDuration, RenewDeadline and RetryPeriod as client-go's leader election.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Grace is how long a hold may stay in jeopardy (PhaseJeopardy): after
	// renew-deadline passed while the API server was unavailable, the agent keeps
	// sending the same conditional renewal for up to Grace before the hold is lost.
	// 0 turns jeopardy off: the hold is lost at renew-deadline.
	Grace  time.Duration
	Client LeaseClient
	// Clock defaults to the real clock.
	Clock clock.WithDelayedExecution
	Log   logr.Logger
	// OnEvent is called for acquired, lost, released and shutdown. It is called with
	// the lock's state mutex held: it must not block and must not call into the Lock.
	OnEvent func(Event)
	// OnHolderChange is called when this agent sees the Lease name a holder other than
	// the last one it saw (for metrics), with the same constraints as OnEvent.
	OnHolderChange func(lock string)
}

func (c *Config) validate() error {
	if err := c.validateNames(); err != nil {
		return err
	}
	if err := c.validateTimings(); err != nil {
		return err
	}
	if c.Client == nil {
		return fmt.Errorf("lock %s: no Lease client", c.Name)
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.OnEvent == nil {
		c.OnEvent = func(Event) {}
	}
	if c.OnHolderChange == nil {
		c.OnHolderChange = func(string) {}
	}
	return nil
}

func (c *Config) validateNames() error {
	switch {
	case c.Name == "" || c.Namespace == "":
		return errors.New("lock needs a namespace and a name")
	case c.Identity == "":
		return errors.New("lock needs a holder identity")
	case c.Mode != ModeMutex && c.Mode != ModeLeader && c.Mode != ModeSemaphore:
		return fmt.Errorf("lock %s: mode %q is none of %q, %q, %q", c.Name, c.Mode, ModeMutex, ModeLeader, ModeSemaphore)
	case c.Mode == ModeSemaphore && c.Semaphore == "":
		return fmt.Errorf("lock %s: a semaphore slot needs its semaphore's name", c.Name)
	}
	return nil
}

func (c *Config) validateTimings() error {
	switch {
	case c.LeaseDuration < time.Second:
		return fmt.Errorf("lock %s: lease-duration %s must be at least 1s (Leases count whole seconds)", c.Name, c.LeaseDuration)
	case c.RenewDeadline <= 0 || c.RetryPeriod <= 0:
		return fmt.Errorf("lock %s: renew-deadline %s and retry-period %s must be greater than 0", c.Name, c.RenewDeadline, c.RetryPeriod)
	case len(contract.BrokenTimingRules(c.LeaseDuration, c.RenewDeadline, c.RetryPeriod)) > 0:
		// The contract's rules, the same the webhook and the agent's flags apply.
		rule := contract.BrokenTimingRules(c.LeaseDuration, c.RenewDeadline, c.RetryPeriod)[0]
		return fmt.Errorf("lock %s: lease-duration %s, renew-deadline %s, retry-period %s break the rule %s, %s",
			c.Name, c.LeaseDuration, c.RenewDeadline, c.RetryPeriod, rule, rule.Why())
	case c.Grace < 0:
		return fmt.Errorf("lock %s: grace %s must not be negative (0 turns jeopardy off)", c.Name, c.Grace)
	}
	return nil
}

// EventType names what happened to a lock (wire.EventType: one definition).
type EventType = wire.EventType

// The events of a lock (wire's).
const (
	EventAcquired = wire.EventAcquired
	EventLost     = wire.EventLost
	EventReleased = wire.EventReleased
	EventShutdown = wire.EventShutdown
	EventJeopardy = wire.EventJeopardy
	EventSafe     = wire.EventSafe
)

// EventTypes are every EventType, for metrics.
var EventTypes = []EventType{EventAcquired, EventLost, EventReleased, EventShutdown, EventJeopardy, EventSafe}

// Phase is where this agent's hold of a lock is. Every State carries it.
//
//	not-held --acquire write lands--> held
//	held --renew-deadline passes, the API server unavailable--> jeopardy
//	held --renew-deadline passes after a refusal (403, 4xx), or grace 0--> not-held (lost)
//	jeopardy --a renewal lands--> held (same token)
//	jeopardy --grace passes, a conflict, a 403, the Lease taken or deleted--> not-held (lost)
//	held, jeopardy --release, ttl, shutdown, conflict, taken, deleted--> not-held
type Phase = wire.Phase

// The phases of a hold (wire's).
const (
	PhaseNotHeld  = wire.PhaseNotHeld
	PhaseHeld     = wire.PhaseHeld
	PhaseJeopardy = wire.PhaseJeopardy
)

// Event is one change of a lock, as seen by this agent (wire.Event: its fields
// Cause, HeldFor, Handover and HandoverFrom are for metrics and never sent).
type Event = wire.Event

// Kinds of loss (Event.Cause of a lost event), a bounded set for metrics labels.
const (
	// LossRenewDeadline: renew-deadline passed without a successful write.
	LossRenewDeadline = "renew_deadline"
	// LossTakenOver: the Lease names another holder.
	LossTakenOver = "taken_over"
	// LossRewritten: the Lease was rewritten by someone else (another token).
	LossRewritten = "rewritten"
	// LossDeleted: the Lease was deleted.
	LossDeleted = "deleted"
	// LossConflict: a renew was refused as a conflict (the Lease changed since read).
	LossConflict = "conflict"
	// LossGrace: the hold was in jeopardy for the whole grace period without a
	// successful renewal.
	LossGrace = "grace_expired"
)

// LossCauses are every Cause of a lost event.
var LossCauses = []string{LossRenewDeadline, LossTakenOver, LossRewritten, LossDeleted, LossConflict, LossGrace}

// State is what the agent knows of a lock (wire.State, what the local API sends).
// Held means held by this Pod, now.
type State = wire.State

// Errors the engine returns; the API maps them to status codes.
var (
	// ErrNotAcquired: a try found the lock held (by another Pod or another local client).
	ErrNotAcquired = errors.New("not acquired")
	// ErrTimeout: the wait ended before the lock was acquired.
	ErrTimeout = errors.New("wait timed out")
	// ErrUnavailable: the API server did not answer, refused, or is not synced yet.
	ErrUnavailable = errors.New("API server unavailable")
	// ErrForbidden: the agent may not write Leases (RBAC).
	ErrForbidden = errors.New("not allowed to write Leases")
	// ErrShutdown: the agent is shutting down.
	ErrShutdown = errors.New("agent shutting down")
	// ErrLeaderLock: the call does not apply to a leader lock.
	ErrLeaderLock = errors.New("leader lock")
	// ErrStaleToken: release or renew named a hold (by its fencing token) that is not
	// the current one. Nothing was changed.
	ErrStaleToken = errors.New("stale token")
	// ErrJeopardy: the hold a renew named is in jeopardy (the API server unavailable
	// past renew-deadline): its ttl was restarted, but it may not be relied on now.
	ErrJeopardy = errors.New("hold in jeopardy")
	// ErrTokensExhausted: the Lease's leaseTransitions is at its maximum, so no new
	// acquisition can get a greater fencing token.
	ErrTokensExhausted = errors.New("fencing tokens exhausted")
)

// StaleTokenError says which hold a release or renew named and what is current.
type StaleTokenError struct {
	// Token is the token the call named.
	Token int64
	// Current is the token of this Pod's current hold; 0 when there is none.
	Current int64
	// Ended says how the named hold ended, when this agent remembers it.
	Ended string
}

func (e *StaleTokenError) Error() string {
	msg := fmt.Sprintf("token %d does not name the current hold", e.Token)
	if e.Ended != "" {
		msg = fmt.Sprintf("the hold with token %d has already ended (%s)", e.Token, e.Ended)
	}
	if e.Current > 0 {
		return msg + fmt.Sprintf("; the current hold has token %d", e.Current)
	}
	return msg + "; this Pod holds no hold now"
}

// Is makes errors.Is(err, ErrStaleToken) true.
func (e *StaleTokenError) Is(target error) bool { return target == ErrStaleToken }

// HeldError tells who holds the lock when it was not acquired.
type HeldError struct {
	Holder   string
	ValidFor time.Duration
	// Local is true when another client of this same Pod holds it.
	Local bool
	// Lost is true when a hold of this Pod was lost (the Lease deleted or rewritten by
	// someone else) while its client may still rely on it for ValidFor.
	Lost bool
	// Queued is how many waiters of other Pods are queued ahead (queue.go): the lock
	// is free but theirs for up to ValidFor; Holder is the first of them.
	Queued int
}

func (e *HeldError) Error() string {
	switch {
	case e.Local:
		return "held by another client of this Pod"
	case e.Lost:
		return fmt.Sprintf("still promised for up to %s more to a client of this Pod whose hold was lost "+
			"(the Lease was deleted or rewritten by someone else)", e.ValidFor.Round(time.Millisecond))
	case e.Queued > 0:
		return fmt.Sprintf("free, but its turn goes first to the %d waiter(s) of other Pods queued ahead (next: %s) "+
			"for up to %s more", e.Queued, e.Holder, e.ValidFor.Round(time.Millisecond))
	}
	return fmt.Sprintf("held by %s for up to %s more", e.Holder, e.ValidFor.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrNotAcquired) true for a HeldError.
func (e *HeldError) Is(target error) bool { return target == ErrNotAcquired }

var errConflict = errors.New("the Lease changed or was deleted since it was read")

// Hold is one local client's hold of a mutex lock.
type Hold struct {
	lock  *Lock
	token int64
	// timer ends the hold when its ttl passes (the machine knows when).
	timer  clock.Timer
	done   chan struct{}
	reason string
}

// Done is closed when the hold ends (released, lost, ttl, shutdown).
func (h *Hold) Done() <-chan struct{} { return h.done }

// Token is the fencing token of the acquisition.
func (h *Hold) Token() int64 { return h.token }

// Reason says why the hold ended; read it after Done is closed.
func (h *Hold) Reason() string {
	h.lock.mu.Lock()
	defer h.lock.mu.Unlock()
	return h.reason
}

// Lock is one lock: its cache of the Lease, its loops and its callers, driving the
// machine of its hold (machine.go). Create it with New; Run it.
type Lock struct {
	cfg        Config
	durSeconds int32
	// slot serializes the clients of this Pod: whoever holds a token in the channel
	// is the one local client acquiring or holding. Blocked senders queue in order.
	slot chan struct{}
	// wanting counts the clients of this Pod waiting for the lock (for the local slot
	// or for the Lease).
	wanting atomic.Int32
	// writeMu serializes this agent's writes of the Lease.
	writeMu sync.Mutex
	// noWatchList: the API server does not serve watch-list, so the watch loop lists
	// and then watches (loops.go). Only the watch loop uses it.
	noWatchList bool

	mu         sync.Mutex
	synced     bool
	closed     bool
	lease      *coordinationv1.Lease // last known; nil when absent
	rv         uint64
	observedAt time.Time // when this agent saw the record change
	lastHolder string    // the last non-empty holder seen, for OnHolderChange
	// m is the hold's phase and everything its transitions decide on (machine.go);
	// it changes only through stepLocked.
	m machine
	// outage: this agent lost the API server (a watch or a write got no answer or a 5xx)
	// and has not read the Lease since. Until its watch is back it takes over no hold
	// that it judged expired (the holder shared the outage), and the expiry it measures
	// restarts when it is back (jeopardy.go).
	outage bool
	// rewatch is closed to make the watch loop start a new watch (a write found the
	// API server gone while the watch said nothing: it may be dead without knowing).
	rewatch   chan struct{}
	forbidden bool
	apiErr    error
	// queueRefused: the API server refused a queue write (403), so this agent waits
	// without queueing (queue.go).
	queueRefused bool
	hold         *Hold
	// unanswered are the send times of this process's acquisition writes whose outcome
	// is unknown (a timeout, a 5xx): such a write may have landed, leaving a record
	// that names this agent although nobody was told it holds. Recognised by its
	// acquireTime, that record is taken over at once instead of waited out.
	unanswered []time.Time
	// gone is what this agent last saw of a Lease that was deleted: whose hold to wait
	// out before creating it again, and the token to go on from.
	gone goneLease
	// cappedRV is the last record whose leaseDurationSeconds was logged as capped.
	cappedRV string
	changed  chan struct{}
	// closing is closed by Shutdown: waiters give up with ErrShutdown.
	closing     chan struct{}
	closingOnce sync.Once
}

// New validates cfg and returns the lock. It makes no API call.
func New(cfg Config) (*Lock, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Lock{
		cfg:        cfg,
		durSeconds: int32(math.Ceil(cfg.LeaseDuration.Seconds())),
		slot:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
		closing:    make(chan struct{}),
		rewatch:    make(chan struct{}),
		m: machine{cfg: machineConfig{identity: cfg.Identity, renewDeadline: cfg.RenewDeadline,
			retryPeriod: cfg.RetryPeriod, grace: cfg.Grace}},
	}, nil
}

// Name is the lock's (and its Lease's) name.
func (l *Lock) Name() string { return l.cfg.Name }

// Mode is the lock's mode.
func (l *Lock) Mode() Mode { return l.cfg.Mode }

// Synced is true once the lock's Lease was read from the API server.
func (l *Lock) Synced() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.synced
}

// Forbidden is true when the last write was refused with 403.
func (l *Lock) Forbidden() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.forbidden
}

// State reports the lock now. Held is computed from the clock at each call, so it
// turns false at renew-deadline even if the renew goroutine is stuck.
func (l *Lock) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stateLocked(l.cfg.Clock.Now())
}

func (l *Lock) stateLocked(now time.Time) State {
	s := State{Name: l.cfg.Name, Mode: l.cfg.Mode, ValidFor: "0s", Phase: l.m.reported(now)}
	if l.lease != nil {
		s.Holder, s.Token = holderOf(l.lease), tokenOf(l.lease)
	}
	if left := l.m.validFor(now); left > 0 {
		s.Held = true
		s.Token = l.m.token
		s.ValidFor = left.Round(time.Millisecond).String()
		s.ValidForMillis = left.Milliseconds()
		s.HeldFor = now.Sub(l.m.heldSince)
	}
	if s.Phase == PhaseJeopardy {
		s.Token = l.m.token
	}
	return s
}

func (l *Lock) broadcastLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *Lock) emitLocked(t EventType, reason string) {
	l.emitEventLocked(Event{Type: t, Reason: reason})
}

// emitEventLocked fills in the lock, token, holder and time of ev and emits it.
func (l *Lock) emitEventLocked(ev Event) {
	ev.Lock, ev.Token, ev.Time = l.cfg.Name, l.m.token, time.Now()
	if l.lease != nil {
		ev.Holder = holderOf(l.lease)
	}
	l.cfg.OnEvent(ev)
}

// Run watches the Lease and renews it while held, and in leader mode keeps it
// acquired. It blocks until ctx ends. Call Shutdown before cancelling ctx to release.
func (l *Lock) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { l.watchLoop(ctx) })
	if l.cfg.Mode == ModeLeader {
		wg.Go(func() { l.leaderLoop(ctx) })
	}
	l.renewLoop(ctx)
	wg.Wait()
}

// AcquireOptions are the options of Acquire.
type AcquireOptions struct {
	// Wait is how long to wait for the lock; 0 tries once.
	Wait time.Duration
	// TTL ends the hold unless renewed or released in time; 0 = no ttl.
	TTL time.Duration
	// readAhead: a try (Wait 0) that is one round of a waiting acquisition (a
	// semaphore's, over its slots) reads ahead of the holder's expiry as a waiting
	// acquisition does (reread).
	readAhead bool
}

// Acquire takes a mutex lock for one local client, or, for a leader lock, waits until
// the agent holds it (returning a nil Hold). The returned State has the token.
func (l *Lock) Acquire(ctx context.Context, opts AcquireOptions) (*Hold, State, error) {
	if opts.Wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Wait)
		defer cancel()
	}
	if l.cfg.Mode == ModeLeader {
		s, err := l.waitLeader(ctx, opts.Wait > 0)
		return nil, s, err
	}
	for {
		h, s, err := l.acquireMutex(ctx, opts)
		if err == nil || opts.Wait == 0 || !errors.Is(err, errLostAtOnce) {
			return h, s, err
		}
		// Lost before the answer: wait for the lock again.
	}
}

// errLostAtOnce: the hold ended between the successful write and the answer.
var errLostAtOnce = fmt.Errorf("%w: the hold was lost right after it was taken", ErrNotAcquired)

func (l *Lock) acquireMutex(ctx context.Context, opts AcquireOptions) (*Hold, State, error) {
	// Our turn among the clients of this Pod.
	if opts.Wait > 0 {
		l.wanting.Add(1)
		defer l.wanting.Add(-1)
		select {
		case l.slot <- struct{}{}:
		case <-l.closing:
			return nil, l.State(), ErrShutdown
		case <-ctx.Done():
			return nil, l.State(), ctxErr(ctx)
		}
	} else {
		select {
		case l.slot <- struct{}{}:
		default:
			return nil, l.State(), &HeldError{Local: true}
		}
	}
	h := &Hold{lock: l, done: make(chan struct{})}
	if err := l.acquireRemote(ctx, opts.Wait == 0, opts.Wait > 0 || opts.readAhead, h); err != nil {
		if opts.Wait > 0 && l.wanting.Load() == 1 {
			// Nobody of this Pod waits on: give the queue's place up.
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.writeTimeout())
			l.leaveQueue(lctx)
			cancel()
		}
		<-l.slot
		return nil, l.State(), err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Clock.Now()
	if l.hold == h {
		// The ttl starts now. Its timer releases in its own goroutine: a clock may run
		// callbacks under its own lock (the fake clock does), and releasing stops it.
		l.stepLocked(answered{ttl: opts.TTL}, now)
	}
	if l.hold != h {
		// Lost (deleted, taken over, shut down) before we could answer: never
		// answer 200 with held false.
		return nil, l.stateLocked(now), fmt.Errorf("%w (%s)", errLostAtOnce, h.reason)
	}
	return h, l.stateLocked(now), nil
}

func (l *Lock) isClosing() bool {
	select {
	case <-l.closing:
		return true
	default:
		return false
	}
}

// startTTLLocked (re)starts the timer that ends hold h after ttl.
func (l *Lock) startTTLLocked(h *Hold, ttl time.Duration) {
	if h.timer != nil {
		h.timer.Stop()
	}
	h.timer = l.cfg.Clock.AfterFunc(ttl, func() { go l.releaseExpired(h) })
}

// stepLocked feeds in to the machine (machine.go) and does what it asks, but the
// write, which the caller sends: it ends the local hold, emits the events, logs,
// marks an outage, starts the ttl timer and wakes the waiters.
func (l *Lock) stepLocked(in input, now time.Time) output {
	m, out := l.m.step(in, now)
	l.m = m
	if out.endHold {
		l.endHoldLocked(out.endReason)
	}
	if out.outage {
		l.markOutageLocked()
	}
	for _, ev := range out.events {
		l.emitEventLocked(ev)
	}
	for _, line := range out.logs {
		kv := append([]any{"lock", l.cfg.Name}, line.kv...)
		if line.err != nil {
			l.cfg.Log.Error(line.err, line.msg, kv...)
			continue
		}
		l.cfg.Log.V(line.v).Info(line.msg, kv...)
	}
	if out.ttl > 0 && l.hold != nil {
		l.startTTLLocked(l.hold, out.ttl)
	}
	if out.wake {
		l.broadcastLocked()
	}
	return out
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrTimeout
	}
	return ctx.Err()
}

func (l *Lock) waitLeader(ctx context.Context, wait bool) (State, error) {
	for {
		l.mu.Lock()
		ch := l.changed
		now := l.cfg.Clock.Now()
		s := l.stateLocked(now)
		var err error
		if !s.Held && !wait {
			err = leaderRefusal(s, l.synced, l.m.failing, l.apiErr, l.observedAt.Add(l.leaseDurationLocked()).Sub(now))
		}
		l.mu.Unlock()
		if s.Held || err != nil {
			return s, err
		}
		select {
		case <-ch:
		case <-l.closing:
			return l.State(), ErrShutdown
		case <-ctx.Done():
			return l.State(), ctxErr(ctx)
		}
	}
}

// leaseDurationLocked is how long the Lease's holder may go without a renew before other
// Pods may take it: its leaseDurationSeconds, but never more than
// contract.MaxLeaseDuration, so that a Lease created with a squatter's 2^31-1 s (where
// no admission policy refused it) blocks the lock at most that long. A capped record
// is logged once.
func (l *Lock) leaseDurationLocked() time.Duration {
	secs := RecordOf(l.lease).DurationSeconds
	d := time.Duration(secs) * time.Second
	if d <= contract.MaxLeaseDuration {
		return d
	}
	if l.cappedRV != l.lease.ResourceVersion {
		l.cappedRV = l.lease.ResourceVersion
		l.cfg.Log.Info("Capped the lease duration of a Lease at the longest lease-duration", "lock", l.cfg.Name,
			"holder", holderOf(l.lease), "leaseDurationSeconds", secs,
			"maxLeaseDuration", contract.MaxLeaseDuration.String())
	}
	return contract.MaxLeaseDuration
}

// acquireRemote takes the Lease, waiting (if !try) for the watch to show it free or
// for the current holder's lease to expire.
//
// readAhead: a waiting acquisition, which reads the Lease retry-period ahead of its
// holder's expiry and again at it (decideOnRecord, reread).
func (l *Lock) acquireRemote(ctx context.Context, try, readAhead bool, h *Hold) error {
	waited := false
	for {
		changed, wait, err := l.tryAcquire(ctx, h, waited, try, readAhead)
		if err == nil {
			return nil
		}
		waited = waited || errors.Is(err, ErrNotAcquired)
		if err := acquireEnds(err, try, h != nil); err != nil {
			return err
		}
		if err := l.waitToRetry(ctx, changed, err, wait); err != nil {
			return err
		}
	}
}

// acquireEnds is the error that ends an acquisition after an attempt failed with err,
// or nil when it tries again. local: a client of this Pod acquires (not the leader
// loop, which waits for someone to delete a Lease whose tokens are exhausted).
func acquireEnds(err error, try, local bool) error {
	if try && errors.Is(err, errConflict) {
		return fmt.Errorf("%w: another Pod wrote the Lease at the same moment (%v)", ErrNotAcquired, err)
	}
	if try || errors.Is(err, ErrShutdown) || (local && errors.Is(err, ErrTokensExhausted)) {
		return err
	}
	return nil
}

// waitToRetry waits after an attempt that failed with err: for the watch to bring a
// change (changed), and for the lock to come free (wait, on ErrNotAcquired) or for
// retry-period (on other failures). A conflict, or exhausted tokens, wait for the
// watch only: it brings the newer record (for a leader lock whose tokens are
// exhausted: someone deleting the Lease).
func (l *Lock) waitToRetry(ctx context.Context, changed <-chan struct{}, err error, wait time.Duration) error {
	var fire <-chan time.Time
	timed := true
	switch {
	case errors.Is(err, ErrNotAcquired):
	case errors.Is(err, errConflict), errors.Is(err, ErrTokensExhausted):
		timed = false
	default:
		wait = l.cfg.RetryPeriod
	}
	if timed {
		timer := l.cfg.Clock.NewTimer(wait)
		defer timer.Stop()
		fire = timer.C()
	}
	select {
	case <-changed:
	case <-fire:
	case <-l.closing:
	case <-ctx.Done():
		return ctxErr(ctx)
	}
	return nil
}

// writeTimeout bounds one API write.
func (l *Lock) writeTimeout() time.Duration {
	return max(l.cfg.RetryPeriod, l.cfg.RenewDeadline/2)
}

// tryAcquire makes at most one write. It returns the change channel to wait on. On
// success h (nil in leader mode) becomes the lock's hold, and owns the local slot.
// waited says that this acquisition found the lock held before (for Event.Handover);
// try that it does not wait (so it does not queue). What to do is decideAcquire's
// (machine.go); this does it.
func (l *Lock) tryAcquire(ctx context.Context, h *Hold, waited, try, readAhead bool) (<-chan struct{}, time.Duration, error) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	changed := l.changed
	cur := l.lease
	d := decideAcquire(l.acquireViewLocked(cur, h != nil, try, readAhead, l.cfg.Clock.Now()), l.cfg.Clock.Now())
	if errors.Is(d.err, ErrTokensExhausted) {
		l.apiErr = d.err
	}
	l.mu.Unlock()
	if wait, err := l.beforeAcquireWrite(ctx, cur, d); err != nil {
		return changed, wait, err
	}

	wctx, cancel := context.WithTimeout(ctx, l.writeTimeout())
	defer cancel()
	send := l.cfg.Clock.Now()
	l.mu.Lock()
	l.stepLocked(acquireSent{}, send)
	l.mu.Unlock()
	var out *coordinationv1.Lease
	var err error
	if cur == nil {
		out, err = l.cfg.Client.Create(wctx, l.newLease(send), metav1.CreateOptions{})
	} else {
		next := withRecord(cur, l.cfg.Namespace, l.cfg.Name, l.meta(), l.record(send, send, RecordOf(cur).Transitions+1))
		if l.fair() && h != nil {
			setQueue(next, d.rest)
		}
		out, err = l.cfg.Client.Update(wctx, next, metav1.UpdateOptions{})
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		return changed, 0, l.acquireFailedLocked(err, send)
	}
	return changed, 0, l.acquiredLocked(h, cur, out, send, waited)
}

// acquireViewLocked is what decideAcquire decides on: the cached Lease cur and what
// this agent knows of it. local: a client of this Pod acquires (not the leader loop).
func (l *Lock) acquireViewLocked(cur *coordinationv1.Lease, local, try, readAhead bool, now time.Time) acquireView {
	rec := RecordOf(cur)
	v := acquireView{
		identity: l.cfg.Identity, namespace: l.cfg.Namespace, name: l.cfg.Name,
		closed: l.closed || l.isClosing(), synced: l.synced, promised: l.m.promised(now),
		present: cur != nil, rec: rec, queue: queueOf(cur), ours: l.wroteLocked(cur) || l.unansweredLocked(cur),
		observedAt: l.observedAt, outage: l.outage, goneHolder: l.gone.holder, goneUntil: l.gone.heldUntil,
		fair: l.fair() && local && cur != nil, try: try, queueRefused: l.queueRefused, turn: l.turn(),
	}
	if readAhead {
		v.lead = l.cfg.RetryPeriod
	}
	if rec.Holder != "" {
		v.leaseDuration = l.leaseDurationLocked()
	}
	return v
}

// beforeAcquireWrite does what d asks before the acquiring write (called with writeMu
// held, mu not held): it returns the error that ends this attempt (with how long to
// wait on a HeldError), or nil to write.
func (l *Lock) beforeAcquireWrite(ctx context.Context, cur *coordinationv1.Lease, d acquireDecision) (time.Duration, error) {
	switch {
	case d.err != nil:
		return 0, d.err
	case d.wait != nil && d.enqueue:
		if err := l.enqueue(ctx, cur); err != nil {
			return 0, err
		}
		return d.waitFor(), d.wait
	case d.wait != nil:
		return d.waitFor(), d.wait
	}
	if len(d.passed) > 0 {
		l.cfg.Log.V(1).Info("Passing queued waiters that did not take their turn", "lock", l.cfg.Name, "passed", d.passed)
	}
	if !d.reread {
		return 0, nil
	}
	same, err := l.reread(ctx, cur, d.confirmAt)
	if err == nil && !same {
		err = fmt.Errorf("acquire lease %s/%s: %w", l.cfg.Namespace, l.cfg.Name, errConflict)
	}
	return 0, err
}

// acquireFailedLocked takes an acquiring write that failed with err, sent at send.
func (l *Lock) acquireFailedLocked(err error, send time.Time) error {
	if unavailable(err) {
		l.markOutageLocked()
	}
	err = l.writeFailedLocked("acquire", err)
	if errors.Is(err, ErrUnavailable) {
		l.unanswered = append(l.unanswered, send)
		if len(l.unanswered) > maxUnanswered {
			l.unanswered = l.unanswered[1:]
		}
	}
	l.stepLocked(acquireFailed{}, l.cfg.Clock.Now())
	return err
}

// acquiredLocked takes an acquiring write that landed as out, replacing cur.
func (l *Lock) acquiredLocked(h *Hold, cur, out *coordinationv1.Lease, send time.Time, waited bool) error {
	l.forbidden = false
	l.apiErr = nil
	l.observeLocked(out, send)
	in := acquired{sent: send, token: tokenOf(out), overtaken: !l.cachedIsLocked(out)}
	if in.overtaken {
		// The watch brought a newer record (deleted, or written by someone else)
		// before this answer: our write is already superseded, so it never held.
		if l.gone.rv == out.ResourceVersion {
			l.gone.heldUntil = time.Time{} // the deleted record was this write: nobody relied on it
		}
		l.stepLocked(in, l.cfg.Clock.Now())
		return fmt.Errorf("acquire lease %s/%s: %w", l.cfg.Namespace, l.cfg.Name, errConflict)
	}
	l.unanswered = nil
	if h != nil {
		h.token = in.token
		l.hold = h
	}
	if waited {
		in.handoverFrom, in.handover = handover(cur, l.cfg.Identity, l.cfg.Clock.Now())
	}
	l.stepLocked(in, l.cfg.Clock.Now())
	return nil
}

// cachedIsLocked is true when the cached record is the one written as out: the same
// object, or a later one whose record is unchanged (a waiter queued on it, queue.go).
func (l *Lock) cachedIsLocked(out *coordinationv1.Lease) bool {
	return l.lease != nil && (l.lease.ResourceVersion == out.ResourceVersion || sameRecord(l.lease, out))
}

func (l *Lock) writeFailedLocked(what string, err error) error {
	l.apiErr = err
	switch {
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err):
		return fmt.Errorf("%s lease %s/%s: %w: %w", what, l.cfg.Namespace, l.cfg.Name, errConflict, err)
	case apierrors.IsForbidden(err):
		l.forbidden = true
		return fmt.Errorf("%s lease %s/%s: %w: %w", what, l.cfg.Namespace, l.cfg.Name, ErrForbidden, err)
	default:
		return fmt.Errorf("%s lease %s/%s: %w: %w", what, l.cfg.Namespace, l.cfg.Name, ErrUnavailable, err)
	}
}

// meta is what this agent records on the Leases it writes besides the record.
func (l *Lock) meta() leaseMeta {
	return leaseMeta{mode: l.cfg.Mode, semaphore: l.cfg.Semaphore, renewDeadline: l.cfg.RenewDeadline, grace: l.cfg.Grace}
}

// newLease is the record that creates the Lease. Its token goes on from the last one
// this agent saw on a deleted Lease of the same name (1 when it saw none).
func (l *Lock) newLease(now time.Time) *coordinationv1.Lease {
	l.mu.Lock()
	next := l.gone.transitions + 1
	l.mu.Unlock()
	return withRecord(nil, l.cfg.Namespace, l.cfg.Name, l.meta(), l.record(now, now, next))
}

// record is this agent's record in client-go's LeaseLock shape.
func (l *Lock) record(acquired, renewed time.Time, transitions int32) Record {
	return Record{Holder: l.cfg.Identity, DurationSeconds: l.durSeconds, Acquired: acquired, Renewed: renewed,
		Transitions: transitions}
}

// maxUnanswered bounds the send times kept of writes with an unknown outcome.
const maxUnanswered = 8

// unansweredLocked is true when lease is a record this process wrote in an acquisition
// whose answer never came: it names this agent and carries that write's send time as
// acquireTime (to the microsecond a Lease keeps). Nobody was told it holds, so it may
// be taken over (with the next token) like a free Lease.
func (l *Lock) unansweredLocked(lease *coordinationv1.Lease) bool {
	rec := RecordOf(lease)
	if rec.Holder != l.cfg.Identity {
		return false
	}
	for _, sent := range l.unanswered {
		if d := rec.Acquired.Sub(sent); d > -time.Microsecond && d < time.Microsecond {
			return true
		}
	}
	return false
}

// wroteLocked is true when the record names this agent and this process wrote it. A
// record that names this agent's identity but was written before this process held the
// lock comes from a previous incarnation in the same Pod (a restarted agent container):
// its clients may still rely on the validFor it gave them, so it is treated like any
// other Pod's hold and waited out.
func (l *Lock) wroteLocked(lease *coordinationv1.Lease) bool {
	return lease != nil && holderOf(lease) == l.cfg.Identity && !l.m.lastWrite.IsZero()
}

func parseRV(rv string) uint64 {
	n, _ := strconv.ParseUint(rv, 10, 64)
	return n
}

// observeLocked takes a newer record into the cache (nil = absent) and ends our hold
// when the record no longer names us.
func (l *Lock) observeLocked(lease *coordinationv1.Lease, now time.Time) {
	if lease != nil {
		rv, newer := newerRV(l.rv, lease.ResourceVersion)
		if !newer {
			return
		}
		l.rv = rv
	}
	if !sameRecord(l.lease, lease) {
		l.observedAt = now
	}
	l.lease = lease
	if h := holderOf(lease); h != "" && h != l.lastHolder {
		if l.lastHolder != "" {
			l.cfg.OnHolderChange(l.cfg.Name)
		}
		l.lastHolder = h
	}
	l.stepLocked(observed{present: lease != nil, rec: RecordOf(lease)}, now)
}

func (l *Lock) endHoldLocked(reason string) {
	h := l.hold
	if h == nil {
		return
	}
	l.hold = nil
	if h.timer != nil {
		h.timer.Stop()
	}
	h.reason = reason
	close(h.done)
	<-l.slot
}

// Release ends the hold named by its fencing token and clears the Lease (one write).
// A token that is not the current hold's changes nothing and returns a *StaleTokenError.
// The hold ends even when the write fails (ErrUnavailable): the Lease then runs out
// lease-duration after the last renew.
func (l *Lock) Release(ctx context.Context, token int64) (State, error) {
	if l.cfg.Mode == ModeLeader {
		return l.State(), ErrLeaderLock
	}
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	if err := l.m.checkToken(token); err != nil {
		s := l.stateLocked(l.cfg.Clock.Now())
		l.mu.Unlock()
		return s, err
	}
	return l.clearLocked(ctx, "released")
}

// ReleaseHold releases h if it is still this lock's hold (a connection closed).
func (l *Lock) ReleaseHold(ctx context.Context, h *Hold, reason string) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	if l.hold != h {
		l.mu.Unlock()
		return
	}
	_, _ = l.clearLocked(ctx, reason)
}

// releaseExpired releases h when its ttl has passed (not when it was renewed since).
func (l *Lock) releaseExpired(h *Hold) {
	ctx, cancel := context.WithTimeout(context.Background(), l.writeTimeout())
	defer cancel()
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	if l.hold != h || !l.m.ttlPassed(l.cfg.Clock.Now()) {
		l.mu.Unlock()
		return
	}
	_, _ = l.clearLocked(ctx, "ttl expired")
}

// clearLocked ends the hold and clears the Lease when it names this agent. It is called
// with writeMu and mu held and returns with mu released. Subscribers hear "released"
// whether or not the write succeeds: the hold has ended either way (machine.go).
func (l *Lock) clearLocked(ctx context.Context, reason string) (State, error) {
	cur := l.lease
	out := l.stepLocked(end{reason: reason, namesUs: cur != nil && holderOf(cur) == l.cfg.Identity}, l.cfg.Clock.Now())
	if out.write != writeRelease {
		s := l.stateLocked(l.cfg.Clock.Now())
		l.mu.Unlock()
		return s, nil
	}
	l.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, l.writeTimeout())
	defer cancel()
	now := l.cfg.Clock.Now()
	resp, err := l.cfg.Client.Update(wctx, l.released(cur, now), metav1.UpdateOptions{})
	if l.refreshAfterConflict(wctx, err) {
		// Someone wrote since our copy. When it was only the queue (a waiter queued),
		// the record still names this hold: clear it on the current copy.
		l.mu.Lock()
		cur = l.lease
		ours := l.m.ours(cur != nil, RecordOf(cur))
		l.mu.Unlock()
		if ours {
			now = l.cfg.Clock.Now()
			resp, err = l.cfg.Client.Update(wctx, l.released(cur, now), metav1.UpdateOptions{})
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	var werr error
	if err != nil {
		werr = l.writeFailedLocked("release", err)
	} else {
		l.observeLocked(resp, now)
	}
	out = l.stepLocked(releaseResult{raw: err, err: werr}, l.cfg.Clock.Now())
	return l.stateLocked(l.cfg.Clock.Now()), out.err
}

// released is cur cleared by this agent's release. The queue stays for the waiters;
// when clients of this Pod wait for the lock too, this Pod queues behind the others in
// the same write.
func (l *Lock) released(cur *coordinationv1.Lease, now time.Time) *coordinationv1.Lease {
	next := cur.DeepCopy()
	next.Spec = RecordOf(cur).Released(now).Spec()
	if q, ok := queueOnRelease(queueOf(cur), l.cfg.Identity, l.fair() && l.wanting.Load() > 0 && !l.isClosing()); ok {
		setQueue(next, q)
	}
	return next
}

// Renew restarts the ttl of the hold named by its fencing token: with ttl > 0 as the
// new ttl, with 0 the ttl given at acquire (a hold without ttl stays without). A hold
// whose ttl has already passed cannot be renewed.
func (l *Lock) Renew(token int64, ttl time.Duration) (State, error) {
	if l.cfg.Mode == ModeLeader {
		return l.State(), ErrLeaderLock
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Clock.Now()
	out := l.stepLocked(renewTTL{token: token, ttl: ttl}, now)
	return l.stateLocked(now), out.err
}

// Shutdown stops new acquisitions, ends any hold and clears the Lease if this agent
// holds it, and takes this agent out of the lock's queue. It is called before the Run
// context is cancelled.
func (l *Lock) Shutdown(ctx context.Context) error {
	l.closingOnce.Do(func() { close(l.closing) }) // waiters give up at once
	err := l.shutdown(ctx)
	l.leaveQueue(ctx)
	return err
}

func (l *Lock) shutdown(ctx context.Context) error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	l.closed = true
	l.emitLocked(EventShutdown, "agent shutting down")
	if l.m.holding() || l.hold != nil || l.wroteLocked(l.lease) {
		_, err := l.clearLocked(ctx, "agent shutting down")
		return err
	}
	l.broadcastLocked()
	l.mu.Unlock()
	return nil
}

// Subscribers get events through OnEvent; Changed exposes the change channel for
// callers that wait on the state (tests, leader waiters).
func (l *Lock) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

func (l *Lock) sleep(ctx context.Context, d time.Duration) {
	t := l.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
	case <-ctx.Done():
	}
}

func (l *Lock) leaderLoop(ctx context.Context) {
	for ctx.Err() == nil {
		if err := l.acquireRemote(ctx, false, true, nil); err != nil {
			if errors.Is(err, ErrShutdown) {
				return
			}
			continue
		}
		for {
			l.mu.Lock()
			held, ch := l.m.holding(), l.changed
			l.mu.Unlock()
			if !held {
				break
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}
}
