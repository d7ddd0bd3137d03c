package lock

import (
	"context"
	"errors"
	"fmt"
	"sort"
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

// Manager owns the declared locks of one Pod: one Locker per declared name, whatever
// its kind.
type Manager struct {
	kinds map[string]Locker
	// order is every Locker in the order declared (mutexes, leaders, semaphores), for
	// Run, Ready and Shutdown.
	order   []Locker
	names   []string
	onEvent func(Event)

	subMu sync.Mutex
	subs  map[string]map[chan Event]struct{}
}

// NewManager validates cfg and creates one Locker per declared name.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	m := &Manager{kinds: map[string]Locker{}, onEvent: cfg.OnEvent, subs: map[string]map[chan Event]struct{}{}}
	if m.onEvent == nil {
		m.onEvent = func(Event) {}
	}
	base := func(name string) Config {
		return Config{
			Namespace: cfg.Namespace, Name: name, Identity: cfg.Identity,
			LeaseDuration: cfg.LeaseDuration, RenewDeadline: cfg.RenewDeadline, RetryPeriod: cfg.RetryPeriod, Grace: cfg.Grace,
			Client: cfg.Client, Clock: cfg.Clock, Log: cfg.Log, OnEvent: m.dispatch, OnHolderChange: cfg.OnHolderChange,
		}
	}
	var kinds []func() (Locker, error)
	for _, n := range cfg.Mutexes {
		kinds = append(kinds, func() (Locker, error) { return newMutex(base(n)) })
	}
	for _, n := range cfg.Leaders {
		kinds = append(kinds, func() (Locker, error) { return newLeader(base(n)) })
	}
	semNames := make([]string, 0, len(cfg.Semaphores))
	for n := range cfg.Semaphores {
		semNames = append(semNames, n)
	}
	sort.Strings(semNames)
	for _, n := range semNames {
		kinds = append(kinds, func() (Locker, error) { return newSemaphore(base(n), cfg.Semaphores[n]) })
	}
	declared := map[string]bool{}
	for _, newKind := range kinds {
		k, err := newKind()
		if err == nil {
			err = m.declare(k, declared)
		}
		if err != nil {
			return nil, err
		}
	}
	sort.Strings(m.names)
	return m, nil
}

// declare adds k to the manager; declared holds every name (lock and Lease) taken so
// far, so that no name is declared twice and no semaphore slot's Lease is also a lock.
func (m *Manager) declare(k Locker, declared map[string]bool) error {
	if declared[k.Name()] {
		return fmt.Errorf("lock %q is declared twice: list each name once, in --locks, --leader or --semaphores", k.Name())
	}
	declared[k.Name()] = true
	for _, lease := range k.Leases() {
		if errs := validation.IsDNS1123Subdomain(lease); len(errs) > 0 {
			return fmt.Errorf("lock name %q is not a valid Lease name (DNS-1123 subdomain): %v", lease, errs)
		}
		if lease == k.Name() {
			continue
		}
		if declared[lease] {
			return fmt.Errorf("%s %s's Lease %q is also declared as a lock: rename one of them", k.Mode(), k.Name(), lease)
		}
		declared[lease] = true
	}
	m.kinds[k.Name()] = k
	m.order = append(m.order, k)
	m.names = append(m.names, k.Name())
	return nil
}

// get is the declared lock name.
func (m *Manager) get(name string) (Locker, error) {
	k, ok := m.kinds[name]
	if !ok {
		return nil, ErrUndeclared
	}
	return k, nil
}

// dispatch hands ev, an event under its declared lock's name (a semaphore names its
// slot in Event.Slot), to OnEvent and the subscribers.
func (m *Manager) dispatch(ev Event) {
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
	if _, err := m.get(name); err != nil {
		return nil, nil, err
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

// Locker returns the declared lock name.
func (m *Manager) Locker(name string) (Locker, error) { return m.get(name) }

// LeaseNames are the Leases of the declared locks: each mutex's and leader lock's, and
// each semaphore slot's (not the semaphore's own name, which names no Lease).
func (m *Manager) LeaseNames() []string {
	var out []string
	for _, k := range m.order {
		out = append(out, k.Leases()...)
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
func (m *Manager) Ready() error { return readyAll(m.order) }

// Run runs every lock until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, k := range m.order {
		wg.Go(func() { k.Run(ctx) })
	}
	wg.Wait()
}

// Shutdown releases every lock this agent holds, all at once.
func (m *Manager) Shutdown(ctx context.Context) error { return shutdownAll(ctx, m.order) }

// State reports the declared lock name.
func (m *Manager) State(name string) (State, error) {
	k, err := m.get(name)
	if err != nil {
		return State{Name: name}, err
	}
	return k.State(), nil
}

// Acquire acquires lock name (see Locker.Acquire).
func (m *Manager) Acquire(ctx context.Context, name string, opts AcquireOptions) (*Hold, State, error) {
	k, err := m.get(name)
	if err != nil {
		return nil, State{Name: name}, err
	}
	return k.Acquire(ctx, opts)
}

// Release ends the hold of lock name that token names.
func (m *Manager) Release(ctx context.Context, name string, token int64) (State, error) {
	k, err := m.get(name)
	if err != nil {
		return State{Name: name}, err
	}
	return k.Release(ctx, token)
}

// ReleaseHold releases h if it still holds lock name; a nil h (an acquire that gave
// no hold) changes nothing.
func (m *Manager) ReleaseHold(ctx context.Context, name string, h *Hold, reason string) {
	if k, err := m.get(name); err == nil && h != nil {
		k.ReleaseHold(ctx, h, reason)
	}
}

// Renew restarts the ttl of the hold of lock name that token names.
func (m *Manager) Renew(name string, token int64, ttl time.Duration) (State, error) {
	k, err := m.get(name)
	if err != nil {
		return State{Name: name}, err
	}
	return k.Renew(token, ttl)
}

// NoToken is the error of a release or renew of lock name that names no hold (see
// Locker.NoToken).
func (m *Manager) NoToken(name string) error {
	k, err := m.get(name)
	if err != nil {
		return err
	}
	return k.NoToken()
}

// Tie is what a connection hold of lock name follows once Acquire answered h and s
// (see Locker.Tie).
func (m *Manager) Tie(name string, h *Hold, s State) (Tie, error) {
	k, err := m.get(name)
	if err != nil {
		return nil, err
	}
	return k.Tie(h, s), nil
}
