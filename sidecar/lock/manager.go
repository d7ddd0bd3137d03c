package lock

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/clock"
)

// ErrUndeclared: the lock is not declared for this Pod.
var ErrUndeclared = errors.New("lock not declared")

// ManagerConfig configures the set of locks of one agent.
type ManagerConfig struct {
	Namespace, Identity string
	Mutexes, Leaders    []string
	// Semaphores are the counting locks: name to N (1..MaxSemaphoreSize).
	Semaphores                                map[string]int
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Grace is how long a hold may stay in jeopardy (Config.Grace).
	Grace  time.Duration
	Client LeaseClient
	Clock  clock.WithDelayedExecution
	Log    logr.Logger
	// OnEvent sees every event of every lock (metrics, Kubernetes Events, logs).
	// It must not block.
	OnEvent func(Event)
	// OnHolderChange sees every change of holder a lock's Lease shows (metrics).
	OnHolderChange func(lock string)
}

// Manager owns the declared locks of one Pod.
type Manager struct {
	locks map[string]*Lock
	sems  map[string]*Semaphore
	// slotOf maps a slot's Lease name to its semaphore's name.
	slotOf map[string]string
	// all are every Lock, slots included, for Run, Ready and Shutdown.
	all     []*Lock
	names   []string
	onEvent func(Event)
	// onHolderChange is ManagerConfig.OnHolderChange (never nil).
	onHolderChange func(string)

	subMu sync.Mutex
	subs  map[string]map[chan Event]struct{}
}

// NewManager validates cfg and creates one Lock per declared name.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	m := &Manager{locks: map[string]*Lock{}, sems: map[string]*Semaphore{}, slotOf: map[string]string{},
		onEvent: cfg.OnEvent, subs: map[string]map[chan Event]struct{}{}}
	if m.onEvent == nil {
		m.onEvent = func(Event) {}
	}
	m.onHolderChange = cfg.OnHolderChange
	if m.onHolderChange == nil {
		m.onHolderChange = func(string) {}
	}
	declared := map[string]bool{}
	newLock := func(name string, mode Mode, semaphore string) (*Lock, error) {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			return nil, fmt.Errorf("lock name %q is not a valid Lease name (DNS-1123 subdomain): %v", name, errs)
		}
		if declared[name] {
			if semaphore != "" {
				return nil, fmt.Errorf("semaphore %s's slot Lease %q is also declared as a lock: rename one of them", semaphore, name)
			}
			return nil, fmt.Errorf("lock %q is declared twice: list each name once, in --locks, --leader or --semaphores", name)
		}
		declared[name] = true
		l, err := New(Config{
			Namespace: cfg.Namespace, Name: name, Identity: cfg.Identity, Mode: mode, Semaphore: semaphore,
			LeaseDuration: cfg.LeaseDuration, RenewDeadline: cfg.RenewDeadline, RetryPeriod: cfg.RetryPeriod, Grace: cfg.Grace,
			Client: cfg.Client, Clock: cfg.Clock, Log: cfg.Log, OnEvent: m.dispatch, OnHolderChange: m.holderChange,
		})
		if err != nil {
			return nil, err
		}
		m.all = append(m.all, l)
		return l, nil
	}
	add := func(name string, mode Mode) error {
		l, err := newLock(name, mode, "")
		if err != nil {
			return err
		}
		m.locks[name] = l
		m.names = append(m.names, name)
		return nil
	}
	for _, n := range cfg.Mutexes {
		if err := add(n, ModeMutex); err != nil {
			return nil, err
		}
	}
	for _, n := range cfg.Leaders {
		if err := add(n, ModeLeader); err != nil {
			return nil, err
		}
	}
	semNames := make([]string, 0, len(cfg.Semaphores))
	for n := range cfg.Semaphores {
		semNames = append(semNames, n)
	}
	sort.Strings(semNames)
	for _, n := range semNames {
		size := cfg.Semaphores[n]
		if size < 1 || size > MaxSemaphoreSize {
			return nil, fmt.Errorf("semaphore %s=%d: N must be between 1 and %d", n, size, MaxSemaphoreSize)
		}
		if declared[n] {
			return nil, fmt.Errorf("lock %q is declared twice: list each name once, in --locks, --leader or --semaphores", n)
		}
		declared[n] = true
		slots := make([]*Lock, size)
		for i := range slots {
			l, err := newLock(SlotName(n, i+1), ModeSemaphore, n)
			if err != nil {
				return nil, err
			}
			slots[i] = l
			m.slotOf[l.Name()] = n
		}
		m.sems[n] = newSemaphore(n, cfg.Identity, slots)
		m.names = append(m.names, n)
	}
	for slot, sem := range m.slotOf {
		if m.locks[slot] != nil {
			return nil, fmt.Errorf("semaphore %s's slot Lease %q is also declared as a lock: rename one of them", sem, slot)
		}
	}
	sort.Strings(m.names)
	return m, nil
}

// holderChange reports a change of holder under the declared name: a semaphore's,
// not its slot's.
func (m *Manager) holderChange(lock string) {
	if sem, ok := m.slotOf[lock]; ok {
		lock = sem
	}
	m.onHolderChange(lock)
}

func (m *Manager) dispatch(ev Event) {
	if sem, ok := m.slotOf[ev.Lock]; ok {
		n, _ := strconv.Atoi(ev.Lock[strings.LastIndexByte(ev.Lock, '.')+1:])
		ev.Slot, ev.Lock = ev.Lock, sem
		if ev.Token > 0 {
			ev.Token = ev.Token*SlotTokenBase + int64(n)
		}
	}
	m.onEvent(ev)
	m.subMu.Lock()
	defer m.subMu.Unlock()
	for ch := range m.subs[ev.Lock] {
		select {
		case ch <- ev:
		default:
			// A subscriber that does not read is dropped, never waited for.
			delete(m.subs[ev.Lock], ch)
			close(ch)
		}
	}
}

// Subscribe streams the events of lock name until cancel is called. The channel is
// closed when the subscriber falls behind or cancel is called.
func (m *Manager) Subscribe(name string) (<-chan Event, func(), error) {
	if _, ok := m.locks[name]; !ok && m.sems[name] == nil {
		return nil, nil, ErrUndeclared
	}
	ch := make(chan Event, 64)
	m.subMu.Lock()
	if m.subs[name] == nil {
		m.subs[name] = map[chan Event]struct{}{}
	}
	m.subs[name][ch] = struct{}{}
	m.subMu.Unlock()
	return ch, func() {
		m.subMu.Lock()
		defer m.subMu.Unlock()
		if _, ok := m.subs[name][ch]; ok {
			delete(m.subs[name], ch)
			close(ch)
		}
	}, nil
}

// Lock returns the declared lock name.
func (m *Manager) Lock(name string) (*Lock, error) {
	l, ok := m.locks[name]
	if !ok {
		return nil, ErrUndeclared
	}
	return l, nil
}

// Semaphore returns the declared semaphore name.
func (m *Manager) Semaphore(name string) (*Semaphore, error) {
	s, ok := m.sems[name]
	if !ok {
		return nil, ErrUndeclared
	}
	return s, nil
}

// LeaseNames are the Leases of the declared locks: each mutex's and leader lock's, and
// each semaphore slot's (not the semaphore's own name, which names no Lease).
func (m *Manager) LeaseNames() []string {
	out := make([]string, 0, len(m.all))
	for _, l := range m.all {
		out = append(out, l.Name())
	}
	sort.Strings(out)
	return out
}

// Names are the declared lock names (semaphores included), sorted.
func (m *Manager) Names() []string { return m.names }

// States reports every declared lock.
func (m *Manager) States() []State {
	out := make([]State, 0, len(m.names))
	for _, n := range m.names {
		s, _ := m.State(n)
		out = append(out, s)
	}
	return out
}

// Ready says whether every lock is synced and the last writes were allowed.
func (m *Manager) Ready() error {
	for _, l := range m.all {
		n := l.Name()
		if !l.Synced() {
			return fmt.Errorf("%w: lock %s not yet synced with the API server", ErrUnavailable, n)
		}
		if l.Forbidden() {
			return fmt.Errorf("%w: lock %s", ErrForbidden, n)
		}
	}
	return nil
}

// Run runs every lock until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range m.all {
		wg.Go(func() { l.Run(ctx) })
	}
	wg.Wait()
}

// Shutdown releases every lock this agent holds, all at once.
func (m *Manager) Shutdown(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(m.all))
	for i, l := range m.all {
		wg.Go(func() { errs[i] = l.Shutdown(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// State reports the declared lock name.
func (m *Manager) State(name string) (State, error) {
	if s := m.sems[name]; s != nil {
		return s.State(), nil
	}
	l, err := m.Lock(name)
	if err != nil {
		return State{Name: name}, err
	}
	return l.State(), nil
}

// Acquire acquires lock name (see Lock.Acquire).
func (m *Manager) Acquire(ctx context.Context, name string, opts AcquireOptions) (*Hold, State, error) {
	if s := m.sems[name]; s != nil {
		return s.Acquire(ctx, opts)
	}
	l, err := m.Lock(name)
	if err != nil {
		return nil, State{Name: name}, err
	}
	return l.Acquire(ctx, opts)
}

// Release ends the hold of lock name that token names.
func (m *Manager) Release(ctx context.Context, name string, token int64) (State, error) {
	if s := m.sems[name]; s != nil {
		return s.Release(ctx, token)
	}
	l, err := m.Lock(name)
	if err != nil {
		return State{Name: name}, err
	}
	return l.Release(ctx, token)
}

// ReleaseHold releases h if it still holds lock name.
func (m *Manager) ReleaseHold(ctx context.Context, name string, h *Hold, reason string) {
	if _, err := m.State(name); err == nil && h != nil {
		h.lock.ReleaseHold(ctx, h, reason)
	}
}

// Renew restarts the ttl of the hold of lock name that token names.
func (m *Manager) Renew(name string, token int64, ttl time.Duration) (State, error) {
	if s := m.sems[name]; s != nil {
		return s.Renew(token, ttl)
	}
	l, err := m.Lock(name)
	if err != nil {
		return State{Name: name}, err
	}
	return l.Renew(token, ttl)
}
