package lock

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/leasehold/leasehold/internal/contract"
)

// MaxSemaphoreSize bounds N in name=N: each slot is a Lease, watched by every Pod that
// declares the semaphore, so N costs N watches per Pod. It is below SlotTokenBase.
const MaxSemaphoreSize = contract.MaxSemaphoreSize

// SlotTokenBase composes a semaphore's fencing token from its slot's: token =
// slot's leaseTransitions × SlotTokenBase + slot number, so token 305 is slot 5's
// third acquisition. Tokens grow per slot (a store fences a semaphore per slot:
// token % SlotTokenBase), and the holds of one semaphore never share a token, so a
// release or renew names its hold by token alone.
const SlotTokenBase = 100

// SlotName is the Lease of slot i (1..N) of semaphore name.
func SlotName(name string, i int) string { return contract.SlotName(name, i) }

// Semaphore is a counting lock: N slots, each a Lease taken and fenced exactly like a
// mutex (a slot is a Lock in ModeSemaphore). An acquisition takes any free slot; the
// answer names the slot and carries the composed token (SlotTokenBase).
//
// Fairness is that of the mutex: whichever Pod's write lands first wins a freed slot.
type Semaphore struct {
	name  string
	slots []*Lock
	// first is the slot this Pod tries first, from its identity: Pods spread over
	// the slots instead of all racing for slot 1.
	first int
	// turn serializes this Pod's acquisitions of the semaphore (like a Lock's local
	// slot, but for the whole semaphore): waiters queue in order.
	turn  chan struct{}
	clock clock.Clock
	// retry is the slots' retry-period: how soon a wait tries again after an API error.
	retry time.Duration
	// closing is closed by Shutdown: waiters give up with ErrShutdown.
	closing     chan struct{}
	closingOnce sync.Once

	mu sync.Mutex
	// changed is closed, and made anew, when any slot's state changes (relay).
	changed chan struct{}
}

// newSemaphore makes the semaphore cfg.Name of size slots, each a Lock made from cfg.
// The slots' events and holder changes are reported under the semaphore's name, with
// Event.Slot naming the slot and the token composed (SlotTokenBase).
func newSemaphore(cfg Config, size int) (*Semaphore, error) {
	if size < 1 || size > MaxSemaphoreSize {
		return nil, fmt.Errorf("semaphore %s=%d: N must be between 1 and %d", cfg.Name, size, MaxSemaphoreSize)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	onEvent, onHolderChange := cfg.OnEvent, cfg.OnHolderChange
	if onEvent == nil {
		onEvent = func(Event) {}
	}
	if onHolderChange == nil {
		onHolderChange = func(string) {}
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(cfg.Identity))
	s := &Semaphore{name: cfg.Name, slots: make([]*Lock, size), first: int(h.Sum32() % uint32(size)),
		turn: make(chan struct{}, 1), clock: cfg.Clock, retry: cfg.RetryPeriod,
		closing: make(chan struct{}), changed: make(chan struct{})}
	for i := range s.slots {
		n := int64(i + 1)
		slot := cfg
		slot.Name, slot.Mode, slot.Semaphore = SlotName(cfg.Name, i+1), ModeSemaphore, cfg.Name
		slot.OnEvent = func(ev Event) {
			ev.Slot, ev.Lock = ev.Lock, cfg.Name
			if ev.Token > 0 {
				ev.Token = ev.Token*SlotTokenBase + n
			}
			onEvent(ev)
		}
		slot.OnHolderChange = func(string) { onHolderChange(cfg.Name) }
		l, err := New(slot)
		if err != nil {
			return nil, err
		}
		s.slots[i] = l
	}
	return s, nil
}

// Name is the semaphore's name.
func (s *Semaphore) Name() string { return s.name }

// Mode is ModeSemaphore.
func (s *Semaphore) Mode() Mode { return ModeSemaphore }

// Size is N.
func (s *Semaphore) Size() int { return len(s.slots) }

// Leases are the slots' Leases, name.1 .. name.N.
func (s *Semaphore) Leases() []string {
	out := make([]string, len(s.slots))
	for i, l := range s.slots {
		out[i] = l.Name()
	}
	return out
}

// Ready is nil once every slot is synced and its last write was allowed.
func (s *Semaphore) Ready() error { return readyAll(s.slots) }

// Run runs every slot, and relays their changes to Changed, until ctx ends.
func (s *Semaphore) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range s.slots {
		wg.Go(func() { l.Run(ctx) })
		wg.Go(func() { s.relay(ctx, l) })
	}
	wg.Wait()
}

// relay wakes the semaphore's waiters at every change of slot l: a fan-in of the
// slots' change channels into the semaphore's one. It takes l's channel before it
// broadcasts, so a change is never missed: a waiter reads the slots after taking
// Changed, and any change after that read closes the channel it waits on.
func (s *Semaphore) relay(ctx context.Context, l *Lock) {
	for {
		ch := l.Changed()
		select {
		case <-ch:
			s.mu.Lock()
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
		case <-ctx.Done():
			return
		}
	}
}

// Changed is closed at the next change of any slot's state (while Run runs).
func (s *Semaphore) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Shutdown wakes every waiter with ErrShutdown and shuts every slot down at once (see
// Lock.Shutdown).
func (s *Semaphore) Shutdown(ctx context.Context) error {
	s.closingOnce.Do(func() { close(s.closing) })
	return shutdownAll(ctx, s.slots)
}

// NoToken: a semaphore's holds are named by their composed tokens.
func (s *Semaphore) NoToken() error { return ErrTokenRequired }

// Tie: a connection hold of a semaphore follows its slot's hold.
func (s *Semaphore) Tie(h *Hold, _ State) Tie { return clientTie{h} }

// ReleaseHold releases h if it still holds one of the slots (a connection closed).
func (s *Semaphore) ReleaseHold(ctx context.Context, h *Hold, reason string) {
	for _, l := range s.slots {
		if l.owns(h) {
			l.ReleaseHold(ctx, h, reason)
			return
		}
	}
}

// State reports the semaphore: held when this Pod holds a slot (the first one it
// holds then gives Slot, Token and ValidFor), else in jeopardy when a slot of this Pod
// is (that slot in front), and every slot's state.
func (s *Semaphore) State() State {
	st := State{Name: s.name, Mode: ModeSemaphore, ValidFor: "0s", Phase: PhaseNotHeld, Size: len(s.slots)}
	front := -1
	for i, l := range s.slots {
		ls := l.State()
		if ls.Token > 0 {
			ls.Token = ls.Token*SlotTokenBase + int64(i+1)
		}
		st.Slots = append(st.Slots, ls)
		if front < 0 && ls.Held || front >= 0 && !st.Slots[front].Held && ls.Held || front < 0 && ls.Phase == PhaseJeopardy {
			front = i
		}
	}
	if front >= 0 {
		putInFront(&st, st.Slots[front])
	}
	return st
}

// putInFront puts a slot's hold in front of the semaphore's state.
func putInFront(st *State, ls State) {
	st.Held, st.Phase, st.Holder, st.Token, st.ValidFor, st.ValidForMillis, st.Slot =
		ls.Held, ls.Phase, ls.Holder, ls.Token, ls.ValidFor, ls.ValidForMillis, ls.Name
}

// stateOf is the semaphore's State with the hold of slot i (0-based) in front.
func (s *Semaphore) stateOf(i int) State {
	st := s.State()
	putInFront(&st, st.Slots[i])
	return st
}

// Acquire takes a free slot for one local client, waiting up to opts.Wait (0: try
// each slot once). Waiters are woken by the watch of any slot, or when the hold
// they saw runs out.
func (s *Semaphore) Acquire(ctx context.Context, opts AcquireOptions) (*Hold, State, error) {
	if opts.Wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Wait)
		defer cancel()
		select {
		case s.turn <- struct{}{}:
		case <-s.closing:
			return nil, s.State(), ErrShutdown
		case <-ctx.Done():
			return nil, s.State(), ctxErr(ctx)
		}
	} else {
		select {
		case s.turn <- struct{}{}:
		default:
			return nil, s.State(), &HeldError{Local: true}
		}
	}
	defer func() { <-s.turn }()

	for {
		// The change channel is taken before the tries, so no change between a try
		// and the wait is missed.
		changed := s.Changed()
		h, st, retryIn, err := s.tryEach(ctx, opts.TTL, opts.Wait > 0)
		if err == nil || opts.Wait == 0 || errors.Is(err, ErrShutdown) {
			return h, st, err
		}
		timer := s.clock.NewTimer(retryIn)
		select {
		case <-changed:
		case <-timer.C():
		case <-s.closing:
			timer.Stop()
			return nil, s.State(), ErrShutdown
		case <-ctx.Done():
			timer.Stop()
			return nil, s.State(), ctxErr(ctx)
		}
		timer.Stop()
	}
}

// tryEach tries every slot once, starting at this Pod's first slot. When none was
// taken it says how soon a try may succeed without a watch event (a hold running out,
// or the retry period after an API error).
// waiting: the semaphore's acquisition waits, so each slot's try reads ahead of its
// holder's expiry as a waiting acquisition of a mutex does.
func (s *Semaphore) tryEach(ctx context.Context, ttl time.Duration, waiting bool) (*Hold, State, time.Duration, error) {
	retryIn := s.retry
	var held []string
	var apiErr error
	for k := range s.slots {
		i := (s.first + k) % len(s.slots)
		l := s.slots[i]
		h, _, err := l.Acquire(ctx, AcquireOptions{TTL: ttl, readAhead: waiting})
		if err == nil {
			return h, s.stateOf(i), 0, nil
		}
		var he *HeldError
		switch {
		case errors.Is(err, ErrShutdown), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return nil, s.State(), 0, err
		case errors.As(err, &he):
			if next := he.ValidFor; next > 0 {
				if waiting && next > s.retry {
					// Try again retry-period ahead of the holder's expiry: that try
					// reads ahead of it (reread).
					next -= s.retry
				}
				retryIn = min(retryIn, next)
			}
			who := he.Holder
			if he.Local {
				who = "another client of this Pod"
			}
			held = append(held, l.Name()+" by "+who)
		case errors.Is(err, ErrNotAcquired):
			held = append(held, l.Name()+" (written by another Pod at the same moment)")
		default:
			apiErr = err
		}
	}
	if apiErr != nil && len(held) == 0 {
		return nil, s.State(), retryIn, apiErr
	}
	return nil, s.State(), max(retryIn, time.Millisecond), fmt.Errorf("%w: all %d slots of %s are held: %s",
		ErrNotAcquired, len(s.slots), s.name, strings.Join(held, ", "))
}

// slotFor is the slot (0-based) and the slot's own token that a composed token names.
func (s *Semaphore) slotFor(token int64) (int, int64, bool) {
	i := int(token%SlotTokenBase) - 1
	if token <= 0 || i < 0 || i >= len(s.slots) {
		return 0, 0, false
	}
	return i, token / SlotTokenBase, true
}

// Release ends the hold named by its token (see Lock.Release).
func (s *Semaphore) Release(ctx context.Context, token int64) (State, error) {
	i, t, ok := s.slotFor(token)
	if !ok {
		return s.State(), s.noSlotError(token)
	}
	_, err := s.slots[i].Release(ctx, t)
	return s.stateOf(i), s.composeStale(i, err)
}

// Renew restarts the ttl of the hold named by its token (see Lock.Renew).
func (s *Semaphore) Renew(token int64, ttl time.Duration) (State, error) {
	i, t, ok := s.slotFor(token)
	if !ok {
		return s.State(), s.noSlotError(token)
	}
	_, err := s.slots[i].Renew(t, ttl)
	return s.stateOf(i), s.composeStale(i, err)
}

// noSlotError: the token names no slot of this semaphore.
func (s *Semaphore) noSlotError(token int64) error {
	return &StaleTokenError{Token: token, Ended: fmt.Sprintf("it names no slot of %s: a semaphore's token is "+
		"the slot's count × %d + the slot number (1-%d)", s.name, SlotTokenBase, len(s.slots))}
}

// composeStale turns slot i's stale-token error into the semaphore's tokens.
func (s *Semaphore) composeStale(i int, err error) error {
	var e *StaleTokenError
	if !errors.As(err, &e) {
		return err
	}
	out := *e
	out.Token = e.Token*SlotTokenBase + int64(i+1)
	if e.Current > 0 {
		out.Current = e.Current*SlotTokenBase + int64(i+1)
	}
	if out.Ended != "" {
		out.Ended += " on slot " + s.slots[i].Name()
	}
	return &out
}
