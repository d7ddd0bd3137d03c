package lock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
)

// memClient is a one-Lease in-memory API for the narrow timing tests of this file
// (the envtest suites in sidecar/agent are the proof against a real API server). It
// enforces resourceVersion preconditions like the API server.
type memClient struct {
	mu      sync.Mutex
	lease   *coordinationv1.Lease
	rv      int
	fail    error
	updates int
	// updateCalls counts every Update, answered or failed.
	updateCalls int
	w           *watch.RaceFreeFakeWatcher
	// afterWrite, when set, runs after a write is applied and before its answer is
	// returned: the moment a watch event can overtake the answer.
	afterWrite func()
	// landThenFail, when set, applies a write and answers it with this error, as when
	// the API server wrote it but the answer timed out.
	landThenFail error
	// listDeadline records whether List was called with a deadline.
	listDeadline []bool
	// watches and watchLists count the Watch calls, and those that were watch-lists.
	watches, watchLists int
	// noWatchList answers a watch-list as an API server with the WatchList feature
	// gate off does (422).
	noWatchList bool
	// refuse, when set, answers an update with the error it returns (nil: apply it).
	refuse func(old, next *coordinationv1.Lease) error
	// listFail and watchFail, when set, answer every List and Watch (an API server
	// that is unavailable to reads too).
	listFail, watchFail error
	// beforeList, when set, runs before a List is answered (without the client's lock):
	// a read that waits.
	beforeList func()
}

func (m *memClient) List(ctx context.Context, _ metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	m.mu.Lock()
	before := m.beforeList
	m.mu.Unlock()
	if before != nil {
		before()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := ctx.Deadline()
	m.listDeadline = append(m.listDeadline, ok)
	if m.listFail != nil {
		return nil, m.listFail
	}
	l := &coordinationv1.LeaseList{ListMeta: metav1.ListMeta{ResourceVersion: strconv.Itoa(m.rv)}}
	if m.lease != nil {
		l.Items = []coordinationv1.Lease{*m.lease.DeepCopy()}
	}
	return l, nil
}

// Watch serves a watch-list as the API server does (the Lease, then a bookmark that
// ends the initial events) when asked for one, and counts the requests.
func (m *memClient) Watch(_ context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.watches++
	if m.watchFail != nil {
		return nil, m.watchFail
	}
	if opts.SendInitialEvents != nil && m.noWatchList {
		return nil, apierrors.NewInvalid(schema.GroupKind{Group: "meta.k8s.io", Kind: "ListOptions"}, "", field.ErrorList{
			field.Forbidden(field.NewPath("sendInitialEvents"), "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"),
		})
	}
	m.w = watch.NewRaceFreeFake()
	if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
		m.watchLists++
		if m.lease != nil {
			m.w.Add(m.lease.DeepCopy())
		}
		m.w.Action(watch.Bookmark, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			ResourceVersion: strconv.Itoa(m.rv),
			Annotations:     map[string]string{metav1.InitialEventsAnnotationKey: "true"},
		}})
	}
	return m.w, nil
}

func (m *memClient) store(l *coordinationv1.Lease) *coordinationv1.Lease {
	m.rv++
	l = l.DeepCopy()
	l.ResourceVersion = strconv.Itoa(m.rv)
	m.lease = l
	if m.w != nil {
		m.w.Modify(l.DeepCopy())
	}
	return l.DeepCopy()
}

func (m *memClient) Create(_ context.Context, l *coordinationv1.Lease, _ metav1.CreateOptions) (*coordinationv1.Lease, error) {
	out, err := m.create(l)
	return m.landed(out, err)
}

// landed runs the hooks a landed write triggers, read under the mutex: tests set them
// while the lock's loops write.
func (m *memClient) landed(out *coordinationv1.Lease, err error) (*coordinationv1.Lease, error) {
	if err != nil {
		return out, err
	}
	m.mu.Lock()
	after, fail := m.afterWrite, m.landThenFail
	m.mu.Unlock()
	if after != nil {
		after()
	}
	if fail != nil {
		return nil, fail
	}
	return out, nil
}

func (m *memClient) create(l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	if m.lease != nil {
		return nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "leases"}, l.Name)
	}
	return m.store(l), nil
}

func (m *memClient) Update(_ context.Context, l *coordinationv1.Lease, _ metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	m.updateCalls++
	m.mu.Unlock()
	out, err := m.update(l)
	return m.landed(out, err)
}

func (m *memClient) update(l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	if m.lease == nil {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, l.Name)
	}
	if l.ResourceVersion != m.lease.ResourceVersion {
		return nil, apierrors.NewConflict(schema.GroupResource{Resource: "leases"}, l.Name, errors.New("stale resourceVersion"))
	}
	if m.refuse != nil {
		if err := m.refuse(m.lease, l); err != nil {
			return nil, err
		}
	}
	m.updates++
	return m.store(l), nil
}

// remove deletes the Lease as a third party would; with notify the watch hears it.
func (m *memClient) remove(notify bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rv++
	gone := m.lease.DeepCopy()
	gone.ResourceVersion = strconv.Itoa(m.rv)
	m.lease = nil
	if notify && m.w != nil {
		m.w.Delete(gone)
	}
}

// rewrite writes the Lease as a third party would (another holder, the next token).
func (m *memClient) rewrite(holder string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := m.lease.DeepCopy()
	tr := *next.Spec.LeaseTransitions + 1
	next.Spec.HolderIdentity = &holder
	next.Spec.LeaseTransitions = &tr
	m.store(next)
}

func startLock(t *testing.T, c *memClient, clk *clocktesting.FakeClock) (*Lock, *[]Event) {
	t.Helper()
	return startLockWith(t, c, clk, nil)
}

// startLockWith is startLock with the config changed by edit first (nil: unchanged).
func startLockWith(t *testing.T, c *memClient, clk *clocktesting.FakeClock, edit func(*Config)) (*Lock, *[]Event) {
	t.Helper()
	var mu sync.Mutex
	events := &[]Event{}
	cfg := Config{
		Namespace: "ns", Name: "db", Identity: "pod_uid", Mode: ModeMutex,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: c, Clock: clk, Log: logr.Discard(),
		OnEvent: func(e Event) { mu.Lock(); *events = append(*events, e); mu.Unlock() },
	}
	if edit != nil {
		edit(&cfg)
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if !pollUntil(time.Millisecond, 5*time.Second, l.Synced) {
		t.Fatal("lock never synced")
	}
	return l, events
}

// The hold stops being reported exactly at renew-deadline after the send time of the
// last successful write, when no renew succeeds.
func TestSelfFencingAtRenewDeadline(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || !s.Held || s.Token != 1 || s.ValidForMillis != 10000 {
		t.Fatalf("acquire: want held, token 1, valid 10s, got %+v %v", s, err)
	}
	c.mu.Lock()
	c.fail = apierrors.NewTimeoutError("frozen", 1)
	c.mu.Unlock()
	clk.Step(10*time.Second - time.Millisecond)
	if s := l.State(); !s.Held || s.ValidForMillis != 1 {
		t.Fatalf("1ms before renew-deadline: want held for 1ms, got %+v", s)
	}
	clk.Step(time.Millisecond)
	if s := l.State(); s.Held || s.ValidForMillis != 0 {
		t.Fatalf("at renew-deadline: want not held, got %+v", s)
	}
}

// A Lease held by someone else expires lease-duration after this agent observed it,
// whatever its renewTime says (the other Pod's clock).
func TestExpiryJudgedFromObservation(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clk := clocktesting.NewFakeClock(now)
	other, dur, tr := "other_pod", int32(15), int32(4)
	old := metav1.NewMicroTime(now.Add(-time.Hour))
	c := &memClient{rv: 7, lease: &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &dur, LeaseTransitions: &tr,
			RenewTime: &old, AcquireTime: &old},
	}}
	l, _ := startLock(t, c, clk)
	_, _, err := l.Acquire(context.Background(), AcquireOptions{})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != other || held.ValidFor != 15*time.Second {
		t.Fatalf("try on a Lease renewed an hour ago by its clock: want held by %s for 15s, got %v", other, err)
	}
	if c.updates != 0 {
		t.Fatalf("a try on a held lock wrote %d times, want 0", c.updates)
	}
	clk.Step(15 * time.Second)
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.Token != 5 || s.Holder != "pod_uid" {
		t.Fatalf("after lease-duration: want acquired with token 5, got %+v %v", s, err)
	}
	if c.updates != 1 {
		t.Fatalf("acquire from an expired Lease: want 1 write, got %d", c.updates)
	}
}

// A restarted agent (same Pod, so the same identity) finds the Lease naming itself. It
// was written by the previous incarnation, whose clients may still rely on the validFor
// it gave them: the new agent waits lease-duration like any other Pod, and its
// acquisition gets a new, higher token.
func TestPreviousIncarnationsLeaseIsNotInherited(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clk := clocktesting.NewFakeClock(now)
	self, dur, tr := "pod_uid", int32(15), int32(4)
	renewed := metav1.NewMicroTime(now)
	c := &memClient{rv: 7, lease: &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &self, LeaseDurationSeconds: &dur, LeaseTransitions: &tr,
			RenewTime: &renewed, AcquireTime: &renewed},
	}}
	l, _ := startLock(t, c, clk)
	if s := l.State(); s.Held {
		t.Fatalf("a fresh agent reports the previous incarnation's hold as its own: %+v", s)
	}
	_, _, err := l.Acquire(context.Background(), AcquireOptions{})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != self {
		t.Fatalf("try on a Lease written by the previous incarnation: want held by %s, got %v", self, err)
	}
	if c.updates != 0 {
		t.Fatalf("a try on a held lock wrote %d times, want 0", c.updates)
	}
	clk.Step(15 * time.Second)
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.Token != 5 {
		t.Fatalf("after lease-duration: want acquired with token 5, got %+v %v", s, err)
	}
}

// Acquire from a free Lease is one write and release is one write; a renew that
// conflicts goes on when only the queue changed and ends the hold when the record did.
func TestWritesAndConflict(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, events := startLock(t, c, clk)
	h, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.Token != 1 {
		t.Fatalf("acquire on absent Lease: %+v %v", s, err)
	}
	if _, err := l.Release(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if c.updates != 1 {
		t.Fatalf("create + release: want 1 update, got %d", c.updates)
	}
	select {
	case <-h.Done():
	default:
		t.Fatal("hold not ended by release")
	}
	h, s, err = l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.Token != 2 || c.updates != 2 {
		t.Fatalf("acquire released Lease: want token 2 after 2 updates, got %+v %v (%d updates)", s, err, c.updates)
	}
	// A waiter of another Pod queues behind our back (the record is unchanged, the
	// resourceVersion is new): the renew conflicts, reads the Lease again and renews
	// on the current copy, keeping the queue. The hold goes on.
	c.mu.Lock()
	c.rv++
	c.lease.ResourceVersion = strconv.Itoa(c.rv)
	c.lease.Annotations = map[string]string{AnnotationQueue: "other_uid"}
	c.mu.Unlock()
	before := c.updates
	l.renewOnce(context.Background())
	select {
	case <-h.Done():
		t.Fatalf("hold ended by a renew that met a queued waiter: %s", h.Reason())
	default:
	}
	c.mu.Lock()
	q := c.lease.Annotations[AnnotationQueue]
	c.mu.Unlock()
	if c.updates != before+1 || q != "other_uid" {
		t.Fatalf("renew on the current copy: want 1 update keeping the queue, got %d, queue %q", c.updates-before, q)
	}
	// Someone else rewrites the record behind our back (the next token, same holder
	// name): the renew conflicts, the Lease read again is no longer our hold.
	c.mu.Lock()
	c.rv++
	c.lease.ResourceVersion = strconv.Itoa(c.rv)
	tr := *c.lease.Spec.LeaseTransitions + 1
	c.lease.Spec.LeaseTransitions = &tr
	c.mu.Unlock()
	l.renewOnce(context.Background())
	select {
	case <-h.Done():
	default:
		t.Fatal("hold not ended by a renew conflict")
	}
	if st := l.State(); st.Held {
		t.Fatalf("held after conflict: %+v", st)
	}
	var types []EventType
	for _, e := range *events {
		types = append(types, e.Type)
	}
	want := []EventType{EventAcquired, EventReleased, EventAcquired, EventLost}
	if len(types) != len(want) {
		t.Fatalf("events: want %v, got %v", want, types)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("events: want %v, got %v", want, types)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	base := Config{Namespace: "ns", Name: "x", Identity: "p_u", Mode: ModeMutex, LeaseDuration: 15 * time.Second,
		RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second, Client: &memClient{}}
	tests := map[string]func(*Config){
		"lease not above renew": func(c *Config) { c.RenewDeadline = 15 * time.Second },
		"renew not above retry": func(c *Config) { c.RetryPeriod = 10 * time.Second },
		"renew <= 1.2 x retry":  func(c *Config) { c.RetryPeriod = 9 * time.Second }, // 10s > 9s, not > 1.2 x 9s (contract.JitterFactor)
		"sub-second lease":      func(c *Config) { c.LeaseDuration = 500 * time.Millisecond },
		"no identity":           func(c *Config) { c.Identity = "" },
		"bad mode":              func(c *Config) { c.Mode = "sometimes" },
		"no client":             func(c *Config) { c.Client = nil },
	}
	for name, mut := range tests {
		t.Run(name, func(t *testing.T) {
			c := base
			mut(&c)
			if _, err := New(c); err == nil {
				t.Fatal("want an error")
			}
		})
	}
	if _, err := New(base); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

// A ttl ends the hold unless renewed; renew without a ttl restarts the one given at
// acquire.
func TestTTL(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	c := &memClient{}
	l, _ := startLock(t, c, clk)
	h, _, err := l.Acquire(context.Background(), AcquireOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clk.Step(2 * time.Second)
	if _, err := l.Renew(h.Token(), 0); err != nil {
		t.Fatal(err)
	}
	clk.Step(2 * time.Second) // 4s after acquire, 2s after renew
	select {
	case <-h.Done():
		t.Fatalf("hold ended before the renewed ttl: %s", h.Reason())
	default:
	}
	clk.Step(time.Second)
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("hold did not end when its ttl passed")
	}
	if h.Reason() != "ttl expired" {
		t.Fatalf("reason: %q", h.Reason())
	}
}
