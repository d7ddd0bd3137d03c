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
	Namespace, Identity                       string
	Mutexes, Leaders                          []string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Client                                    LeaseClient
	Clock                                     clock.WithDelayedExecution
	Log                                       logr.Logger
	// OnEvent sees every event of every lock (metrics, Kubernetes Events, logs).
	// It must not block.
	OnEvent func(Event)
	// OnHolderChange sees every change of holder a lock's Lease shows (metrics).
	OnHolderChange func(lock string)
}

// Manager owns the declared locks of one Pod.
type Manager struct {
	locks   map[string]*Lock
	names   []string
	onEvent func(Event)

	subMu sync.Mutex
	subs  map[string]map[chan Event]struct{}
}

// NewManager validates cfg and creates one Lock per declared name.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	m := &Manager{locks: map[string]*Lock{}, onEvent: cfg.OnEvent, subs: map[string]map[chan Event]struct{}{}}
	if m.onEvent == nil {
		m.onEvent = func(Event) {}
	}
	add := func(name string, mode Mode) error {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			return fmt.Errorf("lock name %q is not a valid Lease name (DNS-1123 subdomain): %v", name, errs)
		}
		if _, dup := m.locks[name]; dup {
			return fmt.Errorf("lock %q is declared twice: list each name once, in either --locks or --leader", name)
		}
		l, err := New(Config{
			Namespace: cfg.Namespace, Name: name, Identity: cfg.Identity, Mode: mode,
			LeaseDuration: cfg.LeaseDuration, RenewDeadline: cfg.RenewDeadline, RetryPeriod: cfg.RetryPeriod,
			Client: cfg.Client, Clock: cfg.Clock, Log: cfg.Log, OnEvent: m.dispatch, OnHolderChange: cfg.OnHolderChange,
		})
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
	sort.Strings(m.names)
	return m, nil
}

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
	if _, ok := m.locks[name]; !ok {
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

// Names are the declared lock names, sorted.
func (m *Manager) Names() []string { return m.names }

// States reports every declared lock.
func (m *Manager) States() []State {
	out := make([]State, 0, len(m.names))
	for _, n := range m.names {
		out = append(out, m.locks[n].State())
	}
	return out
}

// Ready says whether every lock is synced and the last writes were allowed.
func (m *Manager) Ready() error {
	for _, n := range m.names {
		l := m.locks[n]
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
	for _, l := range m.locks {
		wg.Go(func() { l.Run(ctx) })
	}
	wg.Wait()
}

// Shutdown releases every lock this agent holds, all at once.
func (m *Manager) Shutdown(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(m.names))
	for i, n := range m.names {
		wg.Go(func() { errs[i] = m.locks[n].Shutdown(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// State reports the declared lock name.
func (m *Manager) State(name string) (State, error) {
	l, err := m.Lock(name)
	if err != nil {
		return State{Name: name}, err
	}
	return l.State(), nil
}

// Acquire acquires lock name (see Lock.Acquire).
func (m *Manager) Acquire(ctx context.Context, name string, opts AcquireOptions) (*Hold, State, error) {
	l, err := m.Lock(name)
	if err != nil {
		return nil, State{Name: name}, err
	}
	return l.Acquire(ctx, opts)
}

// Release ends the hold of lock name that token names.
func (m *Manager) Release(ctx context.Context, name string, token int64) (State, error) {
	l, err := m.Lock(name)
	if err != nil {
		return State{Name: name}, err
	}
	return l.Release(ctx, token)
}

// ReleaseHold releases h if it still holds lock name.
func (m *Manager) ReleaseHold(ctx context.Context, name string, h *Hold, reason string) {
	if l, err := m.Lock(name); err == nil {
		l.ReleaseHold(ctx, h, reason)
	}
}

// Renew restarts the ttl of the hold of lock name that token names.
func (m *Manager) Renew(name string, token int64, ttl time.Duration) (State, error) {
	l, err := m.Lock(name)
	if err != nil {
		return State{Name: name}, err
	}
	return l.Renew(token, ttl)
}
