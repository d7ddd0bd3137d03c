package lock

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/kubeapi"
)

// recordingClient is the agent's own API client, recording every List and Watch the
// engine makes against a real kube-apiserver.
type recordingClient struct {
	*kubeapi.Client
	mu    sync.Mutex
	calls []call
}

type call struct {
	verb      string // "list", "watch", "watch-list" (each maybe "from a resourceVersion"), "error event"
	err       error
	afterMark bool
}

func (r *recordingClient) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	out, err := r.Client.List(ctx, opts)
	r.record("list", err)
	return out, err
}

func (r *recordingClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := r.Client.Watch(ctx, opts)
	verb := "watch"
	if opts.SendInitialEvents != nil {
		verb = "watch-list"
	}
	if opts.ResourceVersion != "" {
		verb += " from a resourceVersion"
	}
	r.record(verb, err)
	if err != nil {
		return w, err
	}
	// Error events (a 410 comes as one) are recorded too.
	return watch.Filter(w, func(ev watch.Event) (watch.Event, bool) {
		if ev.Type == watch.Error {
			r.record("error event", apierrors.FromObject(ev.Object))
		}
		return ev, true
	}), nil
}

func (r *recordingClient) record(verb string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{verb: verb, err: err})
}

// mark flags the calls made so far; since returns the calls after the last mark.
func (r *recordingClient) mark() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.calls {
		r.calls[i].afterMark = true
	}
}

func (r *recordingClient) since() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []call
	for _, c := range r.calls {
		if !c.afterMark {
			out = append(out, c)
		}
	}
	return out
}

// startEnvtestLock starts a real kube-apiserver and etcd (with extra kube-apiserver
// flags) and one mutex on it, synced.
func startEnvtestLock(t *testing.T, apiserverFlags map[string]string) (*Lock, *recordingClient, kubernetes.Interface, func() error) {
	t.Helper()
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	// A CertDir of its own keeps kube-apiserver's serving certificate across a restart.
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: t.TempDir()}
	env.ControlPlaneStopTimeout = 5 * time.Second // then killed, as a kubelet would
	env.ControlPlaneStartTimeout = time.Minute
	for k, v := range apiserverFlags {
		env.ControlPlane.GetAPIServer().Configure().Set(k, v)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kc, err := kubeapi.New(rest.CopyConfig(cfg), "ns")
	if err != nil {
		t.Fatal(err)
	}
	rc := &recordingClient{Client: kc}
	l, err := New(Config{
		Namespace: "ns", Name: "db", Identity: "pod_uid", Mode: ModeMutex,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: rc, Log: logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { l.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, 30*time.Second, "the lock synced", l.Synced)
	restart := func() error {
		as := env.ControlPlane.APIServer
		if err := as.Stop(); err != nil {
			t.Logf("stop kube-apiserver: %v", err)
		}
		return as.Start()
	}
	return l, rc, cs, restart
}

// waitUntil waits until cond holds, at most d: a condition on the lock's state, which
// has no event a test can wait on, asked every 10 ms.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(10*time.Millisecond, d, cond) {
		t.Fatalf("not true after %s: %s", d, what)
	}
}

// pollUntil asks cond every interval until it holds (true) or d has passed (false).
func pollUntil(interval, d time.Duration, cond func() bool) bool {
	return wait.PollUntilContextTimeout(context.Background(), interval, d, true,
		func(context.Context) (bool, error) { return cond(), nil }) == nil
}

// seesWrites checks that the lock's cache follows the Lease through its watch: a
// third party's write shows up as the lock's holder.
func seesWrites(t *testing.T, l *Lock, cs kubernetes.Interface, holder string) {
	t.Helper()
	ctx := context.Background()
	cur, err := cs.CoordinationV1().Leases("ns").Get(ctx, "db", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cur = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns"}}
		cur.Spec.HolderIdentity = &holder
		_, err = cs.CoordinationV1().Leases("ns").Create(ctx, cur, metav1.CreateOptions{})
	} else if err == nil {
		cur.Spec.HolderIdentity = &holder
		_, err = cs.CoordinationV1().Leases("ns").Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the lock's cache shows holder "+holder, func() bool { return l.State().Holder == holder })
}

func verbs(calls []call) []string {
	var out []string
	for _, c := range calls {
		s := c.verb
		if c.err != nil {
			s += " (" + c.err.Error() + ")"
		}
		out = append(out, s)
	}
	return out
}

// On an API server that serves watch-list (Kubernetes 1.32 on), the lock reads its
// Lease, absent at first, with one watch-list and no List. After kube-apiserver
// restarts (etcd keeps running), it reads the state again with a watch-list not older
// than the last resourceVersion it saw, which the new watch cache serves without a
// 410: before, each lock's watch reopened from that resourceVersion, was answered 410
// by the new watch cache, then listed and watched again.
func TestLeaseIsReadWithAWatchListAlsoAfterARestart(t *testing.T) {
	t.Parallel() // a control plane of its own
	l, rc, cs, restart := startEnvtestLock(t, nil)
	if got := verbs(rc.since()); len(got) != 1 || got[0] != "watch-list" {
		t.Fatalf("calls until synced: %v, want one watch-list", got)
	}
	if s := l.State(); s.Holder != "" {
		t.Fatalf("the Lease does not exist, yet the lock's cache names holder %q", s.Holder)
	}
	seesWrites(t, l, cs, "other_1")
	rc.mark()
	if err := restart(); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	seesWrites(t, l, cs, "other_2")
	calls := rc.since()
	t.Logf("calls from the restart on: %v", verbs(calls))
	ok := false
	for _, c := range calls {
		switch {
		case c.verb == "list":
			t.Errorf("the lock listed after the restart: %v", verbs(calls))
		case c.verb == "error event" || strings.HasPrefix(c.verb, "watch ") || c.verb == "watch":
			t.Errorf("after the restart: a plain watch or an error event: %v", verbs(calls))
		case c.verb == "watch-list from a resourceVersion" && c.err == nil:
			ok = true
		}
	}
	if !ok {
		t.Errorf("no watch-list from the last resourceVersion after the restart: %v", verbs(calls))
	}
}

// On an API server without watch-list (the WatchList feature gate off, the default
// before Kubernetes 1.32), kube-apiserver refuses the request as invalid and the lock
// lists, then watches; it does not ask for a watch-list again.
func TestLeaseIsListedWhereTheAPIServerHasNoWatchList(t *testing.T) {
	t.Parallel() // a control plane of its own
	l, rc, cs, _ := startEnvtestLock(t, map[string]string{"feature-gates": "WatchList=false"})
	got := rc.since()
	if len(got) < 2 || got[0].verb != "watch-list" || got[0].err == nil || got[1].verb != "list" || got[1].err != nil {
		t.Fatalf("calls until synced: %v, want a refused watch-list, then a list", verbs(got))
	}
	seesWrites(t, l, cs, "other_1")
	seesWrites(t, l, cs, "other_2")
	for _, c := range rc.since()[1:] {
		if c.verb == "watch-list" {
			t.Fatalf("the lock asked for a watch-list again: %v", verbs(rc.since()))
		}
	}
}
