package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/kubectl"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// startPodAgent starts an agent as the real Pod name of ns runs it: its name and UID,
// and a kubeconfig with a token bound to the Pod (TokenRequest, as the kubelet
// projects it), of ServiceAccount sa.
func startPodAgent(t *testing.T, ns, sa, name string, args ...string) *agentProc {
	t.Helper()
	ctx := context.Background()
	pod, err := testenv.CreatePod(ctx, kube, ns, name, sa)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := testenv.Token(ctx, kube, ns, sa, pod)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := testenv.TokenKubeconfig(restCfg, tok, ns)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, name, append([]string{"--namespace=" + ns, "--pod-uid=" + string(pod.UID),
		"--kubeconfig=" + path, "--service-account=" + ns + "/" + sa}, args...)...)
	a.uid = string(pod.UID)
	return a
}

// applyAgentRBAC creates what `kubectl leasehold rbac` prints for w.
func applyAgentRBAC(t *testing.T, w kubectl.Workload) kubectl.AgentRBAC {
	t.Helper()
	ctx := context.Background()
	r := kubectl.NewAgentRBAC(w, "")
	if r.ServiceAccount != nil {
		if _, err := kube.CoreV1().ServiceAccounts(w.Namespace).Create(ctx, r.ServiceAccount, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kube.RbacV1().Roles(w.Namespace).Create(ctx, r.Role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.RbacV1().RoleBindings(w.Namespace).Create(ctx, r.RoleBinding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return r
}

// Agents of two real Pods, each with a Pod-bound token, bound only to the Role that
// `kubectl leasehold rbac` prints for their workload (rights on their own Leases by
// name), under the admission policy of manifests/base: they become ready, acquire,
// renew, release and hand over both kinds of lock, and the Leases name the real Pods.
func TestAgentsUnderAdmissionPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	testenv.InstallAdmissionPolicy(t, restCfg)
	ns, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "policy-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := applyAgentRBAC(t, kubectl.Workload{Kind: "Deployment", Name: "workers", Namespace: ns.Name, Locks: []string{"jobs", "lead"}})

	args := []string{"--locks=jobs", "--leader=lead"}
	a := startPodAgent(t, ns.Name, r.ServiceAccountName, "workers-a", args...)
	b := startPodAgent(t, ns.Name, r.ServiceAccountName, "workers-b", args...)
	leases := kube.CoordinationV1().Leases(ns.Name)
	holder := func(name string) string {
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}

	// Leader lock: exactly one of them leads, and the Lease names that Pod.
	var leader, follower *agentProc
	waitFor(t, "a leader", func() bool {
		switch {
		case a.state("lead").Held:
			leader, follower = a, b
		case b.state("lead").Held:
			leader, follower = b, a
		}
		return leader != nil
	})
	if h := holder("lead"); h != leader.identity() {
		t.Fatalf("Lease lead names %q, want the leading Pod %s", h, leader.identity())
	}
	leadToken := leader.state("lead").Token

	// Mutex: A acquires and renews; B waits; A releases and B takes it with a greater token.
	s, err := a.c.Acquire(ctx, "jobs", 0, 30*time.Second)
	if err != nil || !s.Held {
		t.Fatalf("A acquires jobs: %+v %v", s, err)
	}
	if h := holder("jobs"); h != a.identity() {
		t.Fatalf("Lease jobs names %q, want Pod A %s", h, a.identity())
	}
	if _, err := b.c.Acquire(ctx, "jobs", 0, 0); status(err) != 409 {
		t.Fatalf("B tries jobs while A holds it: want 409, got %v", err)
	}
	got := make(chan lock.State, 1)
	go func() {
		s, err := b.c.Acquire(ctx, "jobs", 20*time.Second, 0)
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	// B's entry in the queue is a write on a Lease that A holds: the policy admits it
	// (the record stays as it is), and B stays ready.
	waitQueueIn(t, ns.Name, "jobs", b.identity())
	time.Sleep(3 * retryPeriod) // the renew loop writes under the policy meanwhile
	if code, _, err := b.c.Get(ctx, "/readyz"); err != nil || code != 200 {
		t.Fatalf("B while queued under the policy: /readyz %d %v, want 200", code, err)
	}
	if _, err := a.c.Renew(ctx, "jobs", s.Token, 30*time.Second); err != nil {
		t.Fatalf("A renews jobs: %v", err)
	}
	if !a.state("jobs").Held {
		t.Fatal("A lost jobs while renewing under the policy")
	}
	if _, err := a.c.Release(ctx, "jobs", s.Token); err != nil {
		t.Fatalf("A releases jobs: %v", err)
	}
	select {
	case sb := <-got:
		if !sb.Held || sb.Token <= s.Token {
			t.Fatalf("B after A's release: %+v, want held with a token above %d", sb, s.Token)
		}
		if _, err := b.c.Release(ctx, "jobs", sb.Token); err != nil {
			t.Fatalf("B releases jobs: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("B did not get jobs after A released it")
	}

	// The leader stops (SIGTERM releases its holds): the other Pod leads, token above.
	// Its release is a write under the policy too: were it refused, the other Pod
	// could take the Lease only lease-duration after the last renew.
	stopped := time.Now()
	leader.signal(syscall.SIGTERM)
	<-leader.exited
	waitFor(t, "the other Pod to lead", func() bool { return follower.state("lead").Held })
	if d := time.Since(stopped); d >= leaseDuration {
		t.Errorf("the other Pod led %s after SIGTERM, not before lease-duration (%s): the release was not written", d, leaseDuration)
	}
	if tok := follower.state("lead").Token; tok <= leadToken {
		t.Fatalf("new leader's token %d, want above %d", tok, leadToken)
	}
	if h := holder("lead"); h != follower.identity() {
		t.Fatalf("Lease lead names %q, want the new leader %s", h, follower.identity())
	}
	if l, err := leases.Get(ctx, "lead", metav1.GetOptions{}); err != nil || l.Labels[lock.LabelManagedBy] != lock.ManagedBy {
		t.Fatalf("Lease lead: %v %v, want the managed-by label", l, err)
	}
}

// Where the admission policy allows it, client-go's leader election keeps interoperating
// with the agent: a client-go elector whose identity is its Pod's holder identity
// (<pod-name>_<pod-uid>) and that writes with its Pod-bound token follows the agent on
// the same Lease, and the fencing token rises across both, under the policy.
func TestInteropWithClientGoUnderAdmissionPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	testenv.InstallAdmissionPolicy(t, restCfg)
	ns, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "interop-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const sa, name = "elector", "interop-policy"
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
	}
	if _, err := testenv.CreateServiceAccount(ctx, kube, ns.Name, sa, rules); err != nil {
		t.Fatal(err)
	}
	a := startPodAgent(t, ns.Name, sa, "agent-pod", "--leader="+name)
	waitFor(t, "the agent to lead", func() bool { return a.state(name).Held })

	pod, err := testenv.CreatePod(ctx, kube, ns.Name, "client-go-pod", sa)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := testenv.Token(ctx, kube, ns.Name, sa, pod)
	if err != nil {
		t.Fatal(err)
	}
	podClient := kubernetes.NewForConfigOrDie(testenv.TokenConfig(restCfg, tok))
	cg := startClientGoAs(t, podClient, ns.Name, name, pod.Name+"_"+string(pod.UID))
	time.Sleep(2 * leaseDuration)
	if cg.leading.Load() {
		t.Fatal("client-go led while the agent held the Lease")
	}
	agentToken := a.state(name).Token

	a.signal(syscall.SIGTERM) // releases: client-go takes over, under the policy
	<-a.exited
	waitFor(t, "client-go to lead after the agent released", cg.says)
	lease, err := kube.CoordinationV1().Leases(ns.Name).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := *lease.Spec.HolderIdentity; got != pod.Name+"_"+string(pod.UID) {
		t.Fatalf("Lease names %q, want the client-go Pod", got)
	}
	if int64(*lease.Spec.LeaseTransitions) <= agentToken {
		t.Fatalf("client-go's transitions %d not greater than the agent's token %d", *lease.Spec.LeaseTransitions, agentToken)
	}
	time.Sleep(leaseDuration) // its renews pass the policy too
	if !cg.says() {
		t.Fatal("client-go stopped leading: a renew was refused under the policy")
	}
}

// A semaphore's agents under the Role that `kubectl leasehold rbac` prints for them
// (rights on the slot Leases by name, none on a Lease named like the semaphore) and the
// admission policy: they become ready and share the slots.
func TestSemaphoreUnderNarrowedRoleAndPolicy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	testenv.InstallAdmissionPolicy(t, restCfg)
	ns, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "policy-sem-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := kubectl.WorkloadFromLocks("reports", ns.Name, nil, nil, []string{"report=2"})
	if err != nil {
		t.Fatal(err)
	}
	r := applyAgentRBAC(t, w)
	a := startPodAgent(t, ns.Name, r.ServiceAccountName, "reports-a", "--semaphores=report=2")
	b := startPodAgent(t, ns.Name, r.ServiceAccountName, "reports-b", "--semaphores=report=2")
	sa, err := a.c.Acquire(ctx, "report", 0, 0)
	if err != nil || !sa.Held {
		t.Fatalf("A acquires report: %+v %v", sa, err)
	}
	sb, err := b.c.Acquire(ctx, "report", 0, 0)
	if err != nil || !sb.Held || sb.Slot == sa.Slot {
		t.Fatalf("B acquires the other slot of report: %+v %v", sb, err)
	}
	l, err := kube.CoordinationV1().Leases(ns.Name).Get(ctx, sb.Slot, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != b.identity() {
		t.Fatalf("slot Lease %s: want holder %s, got %v %v", sb.Slot, b.identity(), l, err)
	}
}
