package lock

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/kubeapi"
)

// controlPlane is a real kube-apiserver and etcd whose kube-apiserver a test can stop
// and start again (etcd keeps running, as in a rolling restart of the control plane).
type controlPlane struct {
	cfg *rest.Config
	cs  kubernetes.Interface
	as  *envtest.APIServer
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	// A CertDir of its own keeps kube-apiserver's serving certificate across a restart.
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: t.TempDir()}
	env.ControlPlaneStopTimeout = 5 * time.Second
	env.ControlPlaneStartTimeout = time.Minute
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	cs := kubernetes.NewForConfigOrDie(cfg)
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &controlPlane{cfg: cfg, cs: cs, as: env.ControlPlane.APIServer}
}

// recorder keeps a lock's events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) add(e Event) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }

func (r *recorder) types() []EventType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []EventType
	for _, e := range r.events {
		out = append(out, e.Type)
	}
	return out
}

// runLock runs the mutex "db" of identity id on cp, with 6s/4s/1s timings and grace.
func (cp *controlPlane) runLock(t *testing.T, id string, grace time.Duration) (*Lock, *recorder) {
	t.Helper()
	kc, err := kubeapi.New(rest.CopyConfig(cp.cfg), "ns")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	l, err := New(Config{
		Namespace: "ns", Name: "db", Identity: id, Mode: ModeMutex,
		LeaseDuration: 6 * time.Second, RenewDeadline: 4 * time.Second, RetryPeriod: time.Second, Grace: grace,
		Client: kc, Log: logr.Discard(), OnEvent: rec.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, 30*time.Second, id+" synced", l.Synced)
	return l, rec
}

// The holder rides out a kube-apiserver that is down for longer than lease-duration
// (stopped, then started again on the same etcd): it is in jeopardy while the server is
// away, and when it is back the holder's renewal lands and the hold goes on with the
// same token; a waiter that shared the outage does not take the lock over. Before
// jeopardy, the holder lost its lock at renew-deadline and the waiter took it.
func TestHoldRidesOutAKubeAPIServerRestart(t *testing.T) {
	t.Parallel() // a control plane of its own
	cp := startControlPlane(t)
	holder, hrec := cp.runLock(t, "holder_1", 30*time.Second)
	waiter, wrec := cp.runLock(t, "waiter_2", 30*time.Second)
	h, s, err := holder.Acquire(context.Background(), AcquireOptions{})
	if err != nil || !s.Held {
		t.Fatalf("acquire: %+v %v", s, err)
	}
	token := s.Token
	waited := make(chan State, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, s, err := waiter.Acquire(ctx, AcquireOptions{Wait: time.Minute})
		if err == nil {
			waited <- s
		}
	}()
	waitUntil(t, 10*time.Second, "the waiter sees the holder", func() bool { return waiter.State().Holder == "holder_1" })

	if err := cp.as.Stop(); err != nil {
		t.Logf("stop kube-apiserver: %v", err)
	}
	stopped := time.Now()
	waitUntil(t, 10*time.Second, "the holder in jeopardy", func() bool { return holder.State().Phase == PhaseJeopardy })
	if s := holder.State(); s.Held || s.ValidForMillis != 0 || s.Token != token {
		t.Fatalf("in jeopardy: want not held, validFor 0, token %d; got %+v", token, s)
	}
	time.Sleep(7*time.Second - time.Since(stopped)) // longer than lease-duration
	if err := cp.as.Start(); err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Logf("kube-apiserver away for %s", time.Since(stopped).Round(time.Millisecond))
	waitUntil(t, 20*time.Second, "the holder safe again", func() bool { return holder.State().Phase == PhaseHeld })
	if s := holder.State(); !s.Held || s.Token != token {
		t.Fatalf("after the restart: want held with the same token %d, got %+v", token, s)
	}
	// The waiter had its watch back and restarted the holder's expiry; the holder renews.
	time.Sleep(8 * time.Second)
	select {
	case s := <-waited:
		t.Fatalf("the waiter took the lock from a live holder after the restart: %+v", s)
	default:
	}
	if s := holder.State(); !s.Held || s.Token != token {
		t.Fatalf("8 s after the restart: want held with token %d, got %+v", token, s)
	}
	if got, want := hrec.types(), []EventType{EventAcquired, EventJeopardy, EventSafe}; !slices.Equal(got, want) {
		t.Fatalf("holder's events %v, want %v", got, want)
	}
	if got := wrec.types(); slices.Contains(got, EventAcquired) {
		t.Fatalf("waiter's events %v: it acquired", got)
	}
	// And the lock still hands over: the holder releases, the waiter takes it.
	if _, err := holder.Release(context.Background(), h.Token()); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-waited:
		if s.Token != token+1 {
			t.Fatalf("the waiter's token %d, want %d", s.Token, token+1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not take the released lock")
	}
}
