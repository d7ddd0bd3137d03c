package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/sidecar/client"
)

// A hold with a ttl ends when the ttl passes unless renewed; renew extends it.
func TestTTLEndsHoldUnlessRenewed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-ttl1", "--locks=ttl")
	b := startAgent(t, "pod-ttl2", "--locks=ttl")
	sa, err := a.c.Acquire(ctx, "ttl", 0, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	renew := fmt.Sprintf("/v1/locks/ttl/renew?ttl=1s&token=%d", sa.Token)
	code, body, _ := doPost(a, renew)
	if code != 200 {
		t.Fatalf("renew: %d %s", code, body)
	}
	time.Sleep(700 * time.Millisecond) // past the first ttl, inside the renewed one
	if s := a.state("ttl"); !s.Held {
		t.Fatalf("hold ended before the renewed ttl: %+v", s)
	}
	start := time.Now()
	if _, err := b.c.Acquire(ctx, "ttl", 5*time.Second, 0); err != nil {
		t.Fatalf("B waiting for the ttl to end A's hold: %v", err)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("B got the lock %s after it started waiting; A's ttl should have released it within ~300ms", took)
	}
	if s := a.state("ttl"); s.Held {
		t.Fatalf("A still says held after its ttl: %+v", s)
	}
	if code, _, _ := doPost(a, renew); code != 409 {
		t.Fatalf("renew after the ttl ended the hold: want 409, got %d", code)
	}
}

// The agent records Kubernetes Events on its Pod and serves Prometheus metrics on
// loopback; a leader lock cannot be released.
func TestEventsMetricsAndLeaderCalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	l, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	a := startAgent(t, "pod-ev", "--locks=ev-mutex", "--leader=ev-leader", fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port),
		fmt.Sprintf("--tcp-port=%d", apiPort))

	// The same API on loopback TCP; the probe mode of the binary on the socket.
	if s, err := client.New("", fmt.Sprintf("http://127.0.0.1:%d", apiPort)).State(ctx, "ev-mutex"); err != nil || s.Name != "ev-mutex" {
		t.Fatalf("API over loopback TCP: %+v %v", s, err)
	}
	probe := exec.Command(filepath.Join(binDir, "leasehold-agent"), "--probe=/readyz", "--socket="+a.socket)
	if out, err := probe.CombinedOutput(); err != nil {
		t.Fatalf("probe /readyz: %v %s", err, out)
	}
	probe = exec.Command(filepath.Join(binDir, "leasehold-agent"), "--probe=/readyz", "--socket="+a.socket+".missing")
	if err := probe.Run(); probe.ProcessState.ExitCode() != 1 {
		t.Fatalf("probe on a missing socket: want exit 1, got %v", err)
	}
	sm, err := a.c.Acquire(ctx, "ev-mutex", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.Release(ctx, "ev-mutex", sm.Token); err != nil {
		t.Fatal(err)
	}
	s, err := a.c.Acquire(ctx, "ev-leader", 5*time.Second, 0)
	if err != nil || !s.Held || s.Mode != "leader" {
		t.Fatalf("acquire on a leader lock waits until the agent leads: %+v %v", s, err)
	}
	if code, body, _ := doPost(a, "/v1/locks/ev-leader/release"); code != 400 || !strings.Contains(string(body), "leader lock") {
		t.Fatalf("release of a leader lock: want 400 naming the leader lock, got %d %s", code, body)
	}
	waitFor(t, "Events on the Pod", func() bool {
		evs, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", "pod-ev").String()})
		if err != nil {
			t.Fatal(err)
		}
		reasons := map[string]bool{}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "Pod" && e.Type == corev1.EventTypeNormal {
				reasons[e.Reason] = true
			}
		}
		return reasons["LockAcquired"] && reasons["LockReleased"]
	})
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`leasehold_lock_held{lock="ev-leader",mode="leader"} 1`,
		`leasehold_lock_held{lock="ev-mutex",mode="mutex"} 0`,
		`leasehold_lock_events_total{lock="ev-mutex",type="released"} 1`,
		`leasehold_kube_api_requests_total{method="PUT",resource="leases"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}
}

// An agent whose identity may not write Leases is not ready, and says which
// ClusterRole to bind; once bound, it becomes ready without a restart.
func TestReadyzNamesMissingRBAC(t *testing.T) {
	ctx := context.Background()
	user, err := env.AddUser(envtest.User{Name: "system:serviceaccount:default:app"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LEASEHOLD_TEST_NO_WAIT_READY", "pod-rbac")
	a := startAgent(t, "pod-rbac", "--locks=rbac", "--kubeconfig="+path, "--service-account=default/app")
	var code int
	var body []byte
	waitFor(t, "/readyz to answer 503 naming the ClusterRole", func() bool {
		code, body, _ = a.c.Get(ctx, "/readyz")
		return code == 503 && strings.Contains(string(body), "leasehold-agent") && strings.Contains(string(body), "default/app")
	})
	if code, _, _ := a.c.Get(ctx, "/healthz"); code != 200 {
		t.Fatalf("/healthz while not ready: want 200, got %d", code)
	}
	if _, err := a.c.Acquire(ctx, "rbac", 0, 0); status(err) != 503 {
		t.Fatalf("acquire without RBAC: want 503, got %v", err)
	}
	// The leasehold-agent ClusterRole of manifests/base, bound in the namespace.
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "leasehold-agent"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}}
	if _, err := kube.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "leasehold-agent", Namespace: "default"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "leasehold-agent"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "system:serviceaccount:default:app"}}}
	if _, err := kube.RbacV1().RoleBindings("default").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz to turn 200 after the RoleBinding", func() bool {
		code, body, _ = a.c.Get(ctx, "/readyz")
		return code == 200
	})
	if s, err := a.c.Acquire(ctx, "rbac", 2*time.Second, 0); err != nil || !s.Held {
		t.Fatalf("acquire with RBAC: %+v %v", s, err)
	}
}

func doPost(a *agentProc, path string) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, "http://leasehold"+path, nil)
	resp, err := clientFor(a).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Clients of one Pod that want the same lock are served one at a time, in the order
// they asked, each acquisition with its own, greater token.
func TestLocalClientsQueueInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-q", "--locks=queue")
	first, err := a.c.Acquire(ctx, "queue", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	tokens := make(chan int64, 3)
	for i := 1; i <= 3; i++ {
		go func() {
			s, err := a.c.Acquire(ctx, "queue", 20*time.Second, 0)
			if err != nil {
				t.Error(err)
				order <- -1
				return
			}
			order <- i
			tokens <- s.Token
		}()
		time.Sleep(100 * time.Millisecond) // queued in this order
	}
	last := first.Token
	for want := 1; want <= 3; want++ {
		if _, err := a.c.Release(ctx, "queue", last); err != nil {
			t.Fatal(err)
		}
		if got := <-order; got != want {
			t.Fatalf("client %d got the lock, want client %d (arrival order)", got, want)
		}
		tok := <-tokens
		if tok <= last {
			t.Fatalf("token %d not greater than %d", tok, last)
		} else {
			last = tok
		}
	}
}
