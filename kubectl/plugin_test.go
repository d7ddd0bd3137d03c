package kubectl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/lock"
)

var (
	kubeconfig string
	testEnv    *envtest.Environment
	restCfg    *rest.Config
	client     kubernetes.Interface
)

func TestMain(m *testing.M) {
	env, err := testenv.New()
	if err != nil {
		panic(err)
	}
	cfg, err := env.Start()
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer env.Stop() //nolint:errcheck
		user, err := env.AddUser(envtest.User{Name: "plugin-test", Groups: []string{"system:masters"}}, cfg)
		if err != nil {
			panic(err)
		}
		kc, err := user.KubeConfig()
		if err != nil {
			panic(err)
		}
		dir, err := os.MkdirTemp("", "plugin-test")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		kubeconfig = filepath.Join(dir, "kubeconfig")
		if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
			panic(err)
		}
		testEnv, restCfg = env, cfg
		client = kubernetes.NewForConfigOrDie(cfg)
		return m.Run()
	}()
	os.Exit(code)
}

func createNamespace(t *testing.T) string {
	t.Helper()
	ns, err := client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plugin-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func lease(ns, name, holder, mode string, token int32, renewed time.Time, managed bool) *coordinationv1.Lease {
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{}, Labels: map[string]string{}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(holder),
			LeaseDurationSeconds: ptr.To(int32(15)),
			AcquireTime:          &metav1.MicroTime{Time: renewed.Add(-time.Minute)},
			RenewTime:            &metav1.MicroTime{Time: renewed},
			LeaseTransitions:     ptr.To(token),
		},
	}
	if managed {
		l.Labels[LabelManagedBy] = ManagedByValue
		l.Annotations[AnnotationMode] = mode
	}
	return l
}

// run executes the plugin as kubectl would, with a real kubeconfig.
func run(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	return runAs(t, kubeconfig, stdin, args...)
}

// runAs executes the plugin with the credentials of kubeconfig file kc.
func runAs(t *testing.T, kc, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewCommand(genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut})
	cmd.SetArgs(append([]string{"--kubeconfig", kc}, args...))
	cmd.SetOut(&errOut)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestListShowsManagedLocks(t *testing.T) {
	ctx := context.Background()
	ns := createNamespace(t)
	now := time.Now()
	for _, l := range []*coordinationv1.Lease{
		lease(ns, "db-migration", "web-7d9f_0f8e2a4c-1111-4a4a-9c9c-123456789abc", "mutex", 7, now, true),
		lease(ns, "shard-0", "", "leader", 3, now, true),
		lease(ns, "someone-elses", "host-1", "", 1, now, false),
	} {
		if _, err := client.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	out, _, err := run(t, "", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 managed locks, got:\n%s", out)
	}
	if f := strings.Fields(lines[1]); f[0] != "db-migration" || f[1] != "mutex" || f[2] != "web-7d9f" || f[3] != "7" {
		t.Errorf("db-migration row = %q, want lock, mode mutex, holder Pod web-7d9f, token 7", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "shard-0" || f[2] != "<none>" || f[4] != "free" || f[6] != "free" || f[7] != "-" {
		t.Errorf("shard-0 row = %q, want no holder, state free, time left free, nobody waiting", lines[2])
	}

	out, _, err = run(t, "", "-n", ns, "--all-leases")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "someone-elses") || !strings.Contains(out, "host-1") {
		t.Errorf("--all-leases should include the unmanaged Lease, got:\n%s", out)
	}

	out, _, err = run(t, "", "-A")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "NAMESPACE") || !strings.Contains(out, ns+" ") {
		t.Errorf("-A should print a namespace column with %s, got:\n%s", ns, out)
	}
}

func TestReleaseNeedsConfirmationAndKeepsToken(t *testing.T) {
	ctx := context.Background()
	ns := createNamespace(t)
	if _, err := client.CoordinationV1().Leases(ns).Create(ctx,
		lease(ns, "jobs", "worker-0_0f8e2a4c-1111-4a4a-9c9c-123456789abc", "mutex", 4, time.Now(), true),
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A wrong answer leaves the lock as it was.
	if _, _, err := run(t, "no\n", "-n", ns, "release", "jobs"); err == nil || !strings.Contains(err.Error(), "not confirmed") {
		t.Fatalf("release without confirmation: err = %v, want 'not confirmed'", err)
	}
	got, err := client.CoordinationV1().Leases(ns).Get(ctx, "jobs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *got.Spec.HolderIdentity == "" {
		t.Fatal("the lock was released although the confirmation was wrong")
	}

	out, _, err := run(t, "jobs\n", "-n", ns, "release", "jobs")
	if err != nil {
		t.Fatalf("release: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Released lock "+ns+"/jobs") || !strings.Contains(out, "fencing token") {
		t.Errorf("release output = %q", out)
	}
	got, err = client.CoordinationV1().Leases(ns).Get(ctx, "jobs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *got.Spec.HolderIdentity != "" || *got.Spec.LeaseTransitions != 4 {
		t.Errorf("after release holder=%q transitions=%d, want empty holder and transitions kept at 4",
			*got.Spec.HolderIdentity, *got.Spec.LeaseTransitions)
	}
	// The record is the one the agents (and client-go) write on release: acquireTime
	// and renewTime at the release, a 1s duration.
	if got.Spec.AcquireTime == nil || got.Spec.RenewTime == nil || !got.Spec.AcquireTime.Equal(got.Spec.RenewTime) ||
		*got.Spec.LeaseDurationSeconds != 1 {
		t.Errorf("after release acquireTime=%v renewTime=%v duration=%d, want both times at the release and 1s",
			got.Spec.AcquireTime, got.Spec.RenewTime, *got.Spec.LeaseDurationSeconds)
	}

	if _, _, err := run(t, "", "-n", ns, "release", "nope", "--yes"); err == nil || !strings.Contains(err.Error(), `no lock "nope"`) {
		t.Errorf("release of a missing lock: err = %v, want a message naming it", err)
	}
}

// A holder is shown by its Pod name only when it is an agent's <pod-name>_<pod-uid>.
func TestHolderPod(t *testing.T) {
	for in, want := range map[string]string{
		"worker-0_0f8e2a4c-1111-4a4a-9c9c-123456789abc": "worker-0",
		"my_host_0f8e2a4c-1111-4a4a-9c9c-123456789abc":  "my_host_0f8e2a4c-1111-4a4a-9c9c-123456789abc",
		"host_0123456789abcdef0123456789abcdef0123":     "host_0123456789abcdef0123456789abcdef0123",
		"scheduler-7d9f_abc":                            "scheduler-7d9f_abc",
	} {
		if got := holderPod(in); got != want {
			t.Errorf("holderPod(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDescribeTimeLeft(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		renewed  time.Time
		holder   string
		wantLeft string
	}{
		"fresh":   {renewed: now.Add(-5 * time.Second), holder: "a", wantLeft: "10s"},
		"expired": {renewed: now.Add(-20 * time.Second), holder: "a", wantLeft: "expired"},
		"free":    {renewed: now, holder: "", wantLeft: "free"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := Describe(lease("ns", "x", tc.holder, "mutex", 1, tc.renewed, true), now)
			if r.TimeLeft != tc.wantLeft || r.Waiting != "-" {
				t.Errorf("TimeLeft, Waiting = %q, %q, want %q, -", r.TimeLeft, r.Waiting, tc.wantLeft)
			}
		})
	}
}

// An agent's hold whose renewal is overdue by more than the renew-deadline it recorded
// on the Lease is in jeopardy until its grace period ends, then lost; a client-go
// holder (no agent identity) is held until it expires.
func TestDescribeState(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	agent := "api-1_00000000-0000-0000-0000-000000000001"
	tests := map[string]struct {
		renewed      time.Duration // before now
		holder       string
		renew, grace string
		want         string
	}{
		"renewed":              {renewed: 3 * time.Second, holder: agent, renew: "10s", grace: "30s", want: StateHeld},
		"overdue: jeopardy":    {renewed: 12 * time.Second, holder: agent, renew: "10s", grace: "30s", want: StateJeopardy},
		"jeopardy near expiry": {renewed: 14 * time.Second, holder: agent, renew: "10s", grace: "30s", want: StateJeopardy},
		"grace 0: lost":        {renewed: 12 * time.Second, holder: agent, renew: "10s", grace: "0s", want: StateLost},
		"expired":              {renewed: 20 * time.Second, holder: agent, renew: "10s", grace: "30s", want: StateExpired},
		"client-go holder":     {renewed: 12 * time.Second, holder: "node-a", renew: "10s", grace: "30s", want: StateHeld},
		"no timings recorded":  {renewed: 12 * time.Second, holder: agent, want: StateHeld},
		"free":                 {renewed: 0, holder: "", want: StateFree},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := lease("ns", "x", tc.holder, "mutex", 1, now.Add(-tc.renewed), true)
			if tc.renew != "" {
				l.Annotations[lock.AnnotationRenewDeadline] = tc.renew
				l.Annotations[lock.AnnotationGrace] = tc.grace
			}
			if got := Describe(l, now).State; got != tc.want {
				t.Errorf("State = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDescribeWaiting(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	l := lease("ns", "x", "api-1_00000000-0000-0000-0000-000000000001", "mutex", 3, now, true)
	l.Annotations[lock.AnnotationQueue] = "api-2_00000000-0000-0000-0000-000000000002,api-3_00000000-0000-0000-0000-000000000003"
	if r := Describe(l, now); r.Waiting != "2 (next api-2)" {
		t.Fatalf("Waiting = %q, want 2 (next api-2)", r.Waiting)
	}
}

// syncBuffer is a bytes.Buffer safe to read while the watch goroutine writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestWatchPrintsChanges(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := createNamespace(t)
	l, err := client.CoordinationV1().Leases(ns).Create(ctx,
		lease(ns, "shard-1", "", "leader", 2, time.Now(), true), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	out := &syncBuffer{}
	cmd := NewCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: out})
	cmd.SetArgs([]string{"--kubeconfig", kubeconfig, "-n", ns, "--watch"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	waitFor := func(what string, ok func(string) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok(out.String()) {
			if time.Now().After(deadline) {
				t.Fatalf("--watch: %s; output so far:\n%s", what, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("no initial listing", func(s string) bool { return strings.Contains(s, "shard-1") })

	// A new holder takes the lock: the watch prints the new row.
	l.Spec.HolderIdentity = ptr.To("worker-3_0f8e2a4c-1111-4a4a-9c9c-123456789abc")
	l.Spec.LeaseTransitions = ptr.To(int32(3))
	l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	if _, err := client.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the change of holder was not printed", func(s string) bool {
		for _, line := range strings.Split(s, "\n") {
			if f := strings.Fields(line); len(f) > 3 && f[0] == "shard-1" && f[2] == "worker-3" && f[3] == "3" {
				return true
			}
		}
		return false
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("--watch ended with %v after its context was cancelled, want nil", err)
	}
}
