//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

const (
	systemNamespace = "leasehold-system"
	demoNamespace   = "leasehold-demo"
	appImage        = "leasehold.local/example-app:dev"
	agentContainer  = "leasehold-agent"
)

var (
	cs         kubernetes.Interface
	kubeconfig string
	kubectlBin string
	repoRoot   string
)

func TestMain(m *testing.M) {
	kubeconfig = os.Getenv("LEASEHOLD_E2E_KUBECONFIG")
	if kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "LEASEHOLD_E2E_KUBECONFIG is not set: run `make e2e`, which brings up the local cluster (hack/cluster.sh up) and sets it")
		os.Exit(1)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "load %s: %v\n", kubeconfig, err)
		os.Exit(1)
	}
	cs = kubernetes.NewForConfigOrDie(cfg)
	dir, err := testenv.AssetsDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kubectlBin = filepath.Join(dir, "kubectl")
	repoRoot, _ = filepath.Abs("..")
	if err := install(); err != nil {
		fmt.Fprintf(os.Stderr, "install Leasehold: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// kubectl runs kubectl against the e2e cluster and returns its stdout.
func kubectl(args ...string) (string, error) {
	cmd := exec.Command(kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

// install applies manifests/ exactly as the README tells a user to (make deploy: the
// base with the image pinned by digest, as pushed to the node's registry), and waits
// until the webhook injects.
func install() error {
	if out, err := kubectl("apply", "-k", deployKustomization()); err != nil {
		return err
	} else {
		fmt.Print(out)
	}
	if _, err := kubectl("-n", systemNamespace, "rollout", "status", "deployment/leasehold-webhook", "--timeout=180s"); err != nil {
		return err
	}
	// The Deployment is Available once a replica is ready (its certificates are in place);
	// wait until the API server's calls reach it too.
	return webhookInjects(120 * time.Second)
}

// deployKustomization is the directory to apply: manifests/base with the project image
// replaced by $LEASEHOLD_IMAGE (leasehold.local/leasehold@sha256:..., which hack/cluster.sh
// env exports after pushing it), rendered by hack/deploy-kustomization.sh as make deploy
// does; manifests/base itself when it is not set.
func deployKustomization() string {
	base := filepath.Join(repoRoot, "manifests", "base")
	image := os.Getenv("LEASEHOLD_IMAGE")
	if image == "" {
		return base
	}
	dir := filepath.Join(repoRoot, "bin", "e2e-deploy")
	rel, err := filepath.Rel(dir, base)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	var out []byte
	if err == nil {
		out, err = exec.Command(filepath.Join(repoRoot, "hack", "deploy-kustomization.sh"), image, rel).Output()
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "kustomization.yaml"), out, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "render the kustomization for %s: %v (applying manifests/base)\n", image, err)
		return base
	}
	return dir
}

// webhookInjects waits until the API server's calls reach the webhook: a dry-run Pod
// comes back injected.
func webhookInjects(timeout time.Duration) error {
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "webhook-probe", Namespace: "default",
			Annotations: map[string]string{"leasehold.io/locks": "probe"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: appImage}}},
	}
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		got, err := cs.CoreV1().Pods("default").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			last = err
			return false, nil
		}
		return got.Annotations["leasehold.io/status"] == "injected", nil
	})
	if err != nil {
		return fmt.Errorf("the webhook did not inject a dry-run Pod within %s (last error: %v): %w", timeout, last, err)
	}
	return nil
}

// newNamespace makes a namespace that enforces the restricted Pod Security profile and,
// when bind is true, grants its default ServiceAccount the agent ClusterRole.
func newNamespace(t *testing.T, bind bool) string {
	t.Helper()
	ctx := context.Background()
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "e2e-",
		Labels:       map[string]string{"pod-security.kubernetes.io/enforce": "restricted"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
		}
	})
	if bind {
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "leasehold-agent", Namespace: ns.Name},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "leasehold-agent"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns.Name}},
		}
		if _, err := cs.RbacV1().RoleBindings(ns.Name).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The ServiceAccount controller creates "default" shortly after the namespace.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("no default ServiceAccount in %s: %v", ns.Name, err)
	}
	return ns.Name
}

// appPod is a restricted-profile Pod running script under sh in the example-app image.
func appPod(name string, annotations map[string]string, script string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To(int64(10)),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				RunAsUser:      ptr.To(int64(1000)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           appImage,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Command:         []string{"/bin/sh", "-c", script},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func createPod(t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	got, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Pod %s/%s: %v", ns, pod.Name, err)
	}
	return got
}

// waitForLog waits until the container's log matches re and returns the first match.
func waitForLog(t *testing.T, ns, pod, container string, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var match []string
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		raw, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, Timestamps: true}).DoRaw(ctx)
		if err != nil {
			return false, nil
		}
		last = string(raw)
		match = re.FindStringSubmatch(last)
		return match != nil, nil
	})
	if err != nil {
		t.Fatalf("Pod %s/%s container %s: no log line matching %q within %s; log so far:\n%s\n%s",
			ns, pod, container, re, timeout, last, describe(ns, pod))
	}
	return match
}

// logs returns a container's log, each line prefixed with the time the container runtime
// read it (RFC 3339, nanoseconds): the one clock that every Pod on the node shares.
func logs(t *testing.T, ns, pod, container string) string {
	t.Helper()
	raw, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, Timestamps: true}).DoRaw(context.Background())
	if err != nil {
		t.Fatalf("logs of %s/%s %s: %v", ns, pod, container, err)
	}
	return string(raw)
}

func describe(ns, pod string) string {
	out, err := kubectl("-n", ns, "describe", "pod", pod)
	if err != nil {
		return err.Error()
	}
	return out
}

func waitForDeployment(t *testing.T, ns, name string) {
	t.Helper()
	if out, err := kubectl("-n", ns, "rollout", "status", "deployment/"+name, "--timeout=180s"); err != nil {
		pods, _ := kubectl("-n", ns, "get", "pods", "-o", "wide")
		t.Fatalf("deployment %s/%s: %v\n%s\n%s", ns, name, err, out, pods)
	}
}

func podsOf(t *testing.T, ns, app string) []corev1.Pod {
	t.Helper()
	list, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var running []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			running = append(running, p)
		}
	}
	return running
}

// interval is one critical section as a replica logged it.
type interval struct {
	pod         string
	token       int64
	enter, exit time.Time // when the runtime read the line
}

var sectionLine = regexp.MustCompile(`(?m)^(\S+) (?:migrate )?(enter|exit) token=(\d+) pod=(\S+)$`)

// sections parses the enter/exit lines of one container's log into complete intervals.
func sections(t *testing.T, log string) []interval {
	t.Helper()
	var out []interval
	var open *interval
	for _, m := range sectionLine.FindAllStringSubmatch(log, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("log timestamp %q: %v", m[1], err)
		}
		tok, _ := strconv.ParseInt(m[3], 10, 64)
		switch m[2] {
		case "enter":
			open = &interval{pod: m[4], token: tok, enter: at}
		case "exit":
			if open == nil || open.token != tok {
				t.Errorf("exit without matching enter in log line %q", m[0])
				continue
			}
			open.exit = at
			out = append(out, *open)
			open = nil
		}
	}
	return out
}

// stampSkew is how far the stamps of two containers' log lines may be out of order: the
// runtime stamps a line when it reads it from the container's pipe, not when the process
// wrote it, and it reads each container's pipe on its own. A handover takes a few
// milliseconds, so the next holder's "enter" can be stamped before the last holder's
// "exit" (seen once: by 75 µs). A real overlap lasts a critical section (1 s here).
const stampSkew = 50 * time.Millisecond

// checkExclusive fails the test when two intervals overlap (beyond stampSkew) or tokens
// do not rise in the order the sections were entered.
func checkExclusive(t *testing.T, all []interval) {
	t.Helper()
	sort.Slice(all, func(i, j int) bool { return all[i].enter.Before(all[j].enter) })
	for i := 1; i < len(all); i++ {
		prev, cur := all[i-1], all[i]
		if cur.enter.Before(prev.exit.Add(-stampSkew)) {
			t.Errorf("critical sections overlap: %s token %d [%s, %s] and %s token %d [%s, %s]",
				prev.pod, prev.token, prev.enter.Format(time.StampMicro), prev.exit.Format(time.StampMicro),
				cur.pod, cur.token, cur.enter.Format(time.StampMicro), cur.exit.Format(time.StampMicro))
		}
		if cur.token <= prev.token {
			t.Errorf("fencing token did not rise: %s held token %d, then %s got token %d", prev.pod, prev.token, cur.pod, cur.token)
		}
	}
}

func TestExampleApp(t *testing.T) {
	if out, err := kubectl("apply", "-k", filepath.Join(repoRoot, "examples")); err != nil {
		t.Fatal(err)
	} else {
		t.Log(out)
	}
	for _, d := range []string{"workers", "scheduler", "api"} {
		waitForDeployment(t, demoNamespace, d)
	}

	t.Run("pods are injected and admitted under the restricted profile", func(t *testing.T) {
		ns, err := cs.CoreV1().Namespaces().Get(context.Background(), demoNamespace, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Fatalf("namespace %s does not enforce the restricted profile: %v", demoNamespace, ns.Labels)
		}
		for _, app := range []string{"workers", "scheduler", "api"} {
			for _, p := range podsOf(t, demoNamespace, app) {
				checkInjected(t, &p)
			}
		}
	})

	t.Run("replicas never overlap and tokens rise", func(t *testing.T) {
		var all []interval
		deadline := time.Now().Add(90 * time.Second)
		for time.Now().Before(deadline) {
			all = all[:0]
			for _, p := range podsOf(t, demoNamespace, "workers") {
				all = append(all, sections(t, logs(t, demoNamespace, p.Name, "worker"))...)
			}
			if len(all) >= 9 {
				break
			}
			time.Sleep(time.Second)
		}
		pods := map[string]bool{}
		for _, s := range all {
			pods[s.pod] = true
		}
		if len(all) < 9 || len(pods) < 2 {
			t.Fatalf("want at least 9 critical sections from at least 2 replicas within 90s, got %d from %d", len(all), len(pods))
		}
		checkExclusive(t, all)
		t.Logf("%d critical sections from %d replicas, tokens %d..%d, no overlap", len(all), len(pods), all[0].token, all[len(all)-1].token)
	})

	t.Run("an init container takes the migration lock one replica at a time", func(t *testing.T) {
		var all []interval
		for _, p := range podsOf(t, demoNamespace, "api") {
			s := sections(t, logs(t, demoNamespace, p.Name, "migrate"))
			if len(s) != 1 {
				t.Fatalf("Pod %s: want exactly one migration section in the init container's log, got %d", p.Name, len(s))
			}
			all = append(all, s...)
		}
		if len(all) < 2 {
			t.Fatalf("want migrations from 2 replicas, got %d", len(all))
		}
		checkExclusive(t, all)
	})

	t.Run("kubectl leasehold lists the locks with their holders", func(t *testing.T) {
		// Installed the kubectl plugin way: an executable kubectl-leasehold on the PATH.
		dir := t.TempDir()
		build := exec.Command("go", "build", "-o", dir, "./cmd/kubectl-leasehold")
		build.Dir = repoRoot
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build kubectl-leasehold: %v\n%s", err, out)
		}
		// kubectl takes no flags before a plugin's name: the kubeconfig comes from the env.
		cmd := exec.Command(kubectlBin, "leasehold", "-n", demoNamespace)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		raw, err := cmd.CombinedOutput()
		out := string(raw)
		if err != nil {
			t.Fatalf("kubectl leasehold: %v\n%s", err, out)
		}
		t.Logf("kubectl leasehold -n %s:\n%s", demoNamespace, out)
		rows := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			f := strings.Fields(line)
			rows[f[0]] = f
		}
		for lock, mode := range map[string]string{"shared-counter": "mutex", "scheduler-leader": "leader", "db-migration": "mutex"} {
			if rows[lock] == nil || rows[lock][1] != mode {
				t.Errorf("no %s row for lock %s in:\n%s", mode, lock, out)
			}
		}
		if f := rows["scheduler-leader"]; f != nil && !strings.HasPrefix(f[2], "scheduler-") {
			t.Errorf("scheduler-leader holder = %q, want a scheduler Pod", f[2])
		}
	})

	t.Run("exactly one scheduler replica is the leader", func(t *testing.T) {
		checkOneLeader(t, demoNamespace, "scheduler", "scheduler-leader", 5)
		// Delete the leader: the other replica (or the replacement) takes over.
		leader := leaderOf(t, demoNamespace, "scheduler", "scheduler-leader")
		if err := cs.CoreV1().Pods(demoNamespace).Delete(context.Background(), leader, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
			now := leaderOf(t, demoNamespace, "scheduler", "scheduler-leader")
			return now != "" && now != leader, nil
		})
		if err != nil {
			t.Fatalf("no new leader after deleting %s: %v", leader, err)
		}
		checkOneLeader(t, demoNamespace, "scheduler", "scheduler-leader", 3)
	})
}

// checkInjected asserts the webhook's work as the kubelet ran it.
func checkInjected(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if p.Annotations["leasehold.io/status"] != "injected" {
		t.Errorf("Pod %s: leasehold.io/status = %q, want injected", p.Name, p.Annotations["leasehold.io/status"])
	}
	if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != agentContainer {
		t.Fatalf("Pod %s: the agent is not the first init container", p.Name)
	}
	agent := p.Spec.InitContainers[0]
	if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("Pod %s: the agent is not a native sidecar (restartPolicy Always)", p.Name)
	}
	var agentStarted time.Time
	for _, s := range p.Status.InitContainerStatuses {
		if s.Name == agentContainer && s.State.Running != nil {
			agentStarted = s.State.Running.StartedAt.Time
		}
	}
	if agentStarted.IsZero() {
		t.Errorf("Pod %s: the agent is not running", p.Name)
	}
	for _, c := range append(p.Spec.InitContainers[1:], p.Spec.Containers...) {
		found := false
		for _, e := range c.Env {
			found = found || (e.Name == "LEASEHOLD_SOCKET" && e.Value == "/run/leasehold/agent.sock")
		}
		if !found {
			t.Errorf("Pod %s container %s: no LEASEHOLD_SOCKET", p.Name, c.Name)
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil && s.State.Running.StartedAt.Time.Before(agentStarted) {
			t.Errorf("Pod %s: container %s started before the agent", p.Name, s.Name)
		}
	}
}

// held asks the agent in pod, through the app container, whether this Pod holds lock:
// `leasehold status --held` exits 0 when held and 1 when not.
func held(ns, pod, container, lock string) (bool, error) {
	_, err := kubectl("-n", ns, "exec", pod, "-c", container, "--", "leasehold", "status", "--held", lock)
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 1:
		return false, nil
	default:
		return false, err
	}
}

func leaderOf(t *testing.T, ns, app, lock string) string {
	t.Helper()
	leader := ""
	for _, p := range podsOf(t, ns, app) {
		if ok, err := held(ns, p.Name, app, lock); err == nil && ok {
			leader = p.Name
		}
	}
	return leader
}

func checkOneLeader(t *testing.T, ns, app, lock string, samples int) {
	t.Helper()
	for i := 0; i < samples; i++ {
		var leaders []string
		pods := podsOf(t, ns, app)
		for _, p := range pods {
			ok, err := held(ns, p.Name, app, lock)
			if err != nil {
				t.Fatalf("ask %s: %v", p.Name, err)
			}
			if ok {
				leaders = append(leaders, p.Name)
			}
		}
		if len(leaders) != 1 {
			t.Fatalf("sample %d: %d of %d replicas say they hold %s (%v), want exactly 1", i, len(leaders), len(pods), lock, leaders)
		}
		time.Sleep(time.Second)
	}
}

var gotLine = regexp.MustCompile(`(?m)^(\S+) got token=(\d+)`)

// holderAndWaiter starts a Pod that holds lock by running holderScript (which must print
// "holding token=N" once it holds), and a second Pod that waits for it, and returns when
// the waiter is really waiting.
func holderAndWaiter(t *testing.T, ns, lock string, annotations map[string]string, holderScript string) (holder *corev1.Pod) {
	t.Helper()
	a := map[string]string{"leasehold.io/locks": lock}
	for k, v := range annotations {
		a[k] = v
	}
	holder = createPod(t, ns, appPod("holder", a, holderScript))
	waitForLog(t, ns, "holder", "app", regexp.MustCompile(`holding token=\d+`), 120*time.Second)
	createPod(t, ns, appPod("waiter", a,
		`echo waiting; leasehold run --wait 300s `+lock+` -- sh -c 'echo "got token=$LEASEHOLD_TOKEN"; sleep 3600'`))
	waitForLog(t, ns, "waiter", "app", regexp.MustCompile(`waiting`), 120*time.Second)
	time.Sleep(time.Second) // the waiter's acquire call is in flight
	if m := gotLine.FindStringSubmatch(logs(t, ns, "waiter", "app")); m != nil {
		t.Fatalf("the waiter got the lock while the holder held it: %s", m[0])
	}
	got, err := cs.CoreV1().Pods(ns).Get(context.Background(), "holder", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestDeletingTheHolderHandsOverAtOnce(t *testing.T) {
	ns := newNamespace(t, true)
	// `exec`: leasehold run is the container's main process, as in `command: [leasehold,
	// run, LOCK, --, app]`, so the kubelet's SIGTERM reaches it and it ends the hold.
	holderAndWaiter(t, ns, "handover", nil,
		`exec leasehold run handover -- sh -c 'echo "holding token=$LEASEHOLD_TOKEN"; sleep 3600'`)
	start := time.Now()
	if err := cs.CoreV1().Pods(ns).Delete(context.Background(), "holder", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	m := waitForLog(t, ns, "waiter", "app", gotLine, 60*time.Second)
	handover := logTime(t, m[1]).Sub(start)
	t.Logf("Pod deleted -> waiter holds: %s (token %s)", handover, m[2])
	// The lease-duration is 15s: a handover well inside it was a release on SIGTERM, not
	// an expiry. (Speed itself is measured in BENCHMARKS.md, not asserted here.)
	if handover > 5*time.Second {
		t.Errorf("handover took %s after the holder Pod was deleted; a SIGTERM release should not wait for the 15s lease-duration", handover)
	}
}

func TestKilledAgentFreesTheLockOnlyAfterLeaseDuration(t *testing.T) {
	ns := newNamespace(t, true)
	timing := map[string]string{"leasehold.io/lease-duration": "8s", "leasehold.io/renew-deadline": "5s", "leasehold.io/retry-period": "1s"}
	holder := holderAndWaiter(t, ns, "expiry", timing,
		`leasehold run expiry -- sh -c 'echo "holding token=$LEASEHOLD_TOKEN"; sleep 3600'; echo "run ended: $?"; sleep 3600`)
	pid := agentPID(t, string(holder.UID))
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 the holder's agent (pid %d): %v", pid, err)
	}
	m := waitForLog(t, ns, "waiter", "app", gotLine, 60*time.Second)
	handover := logTime(t, m[1]).Sub(start)
	t.Logf("holder's agent killed -> waiter holds: %s (lease-duration 8s)", handover)
	// The last renew came at most renew-deadline/2 before the kill, so the waiter may take
	// the lock no earlier than about lease-duration minus that.
	if handover < 5*time.Second {
		t.Errorf("the waiter took the lock %s after the holder's agent died, before lease-duration (8s) could have passed", handover)
	}
	// ... and no later than lease-duration after the kill (plus the waiter's own write).
	if handover > 8*time.Second+time.Second {
		t.Errorf("the waiter took the lock %s after the holder's agent died: the lock should be free lease-duration (8s) after the last renew, not later", handover)
	}
	// The holder's client learnt that it lost the hold (its connection to the agent broke).
	waitForLog(t, ns, "holder", "app", regexp.MustCompile(`run ended: [1-9]`), 30*time.Second)
}

func logTime(t *testing.T, stamp string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		t.Fatalf("log timestamp %q: %v", stamp, err)
	}
	return at
}

// agentPID finds the agent process of the Pod with uid on this node.
func agentPID(t *testing.T, uid string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(string(raw), "\x00")
		if !strings.HasSuffix(args[0], "leasehold-agent") || !strings.Contains(string(raw), uid) {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(f, "/")[2])
		return pid
	}
	t.Fatalf("no leasehold-agent process for Pod UID %s on this node", uid)
	return 0
}

func TestAgentWithoutRoleBindingIsNotReady(t *testing.T) {
	ns := newNamespace(t, false)
	createPod(t, ns, appPod("unbound", map[string]string{"leasehold.io/locks": "anything"}, "sleep 3600"))
	// The agent serves (startup probe) but is not ready, and its readiness probe says why.
	var msg string
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		events, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=unbound"})
		if err != nil {
			return false, nil
		}
		for _, e := range events.Items {
			if e.Reason == "Unhealthy" && strings.Contains(e.Message, "Readiness") {
				msg = e.Message
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no readiness failure event for the unbound agent: %v\n%s", err, describe(ns, "unbound"))
	}
	for _, want := range []string{"leasehold-agent", "RoleBinding", ns} {
		if !strings.Contains(msg, want) {
			t.Errorf("readiness message %q does not mention %q", msg, want)
		}
	}
	pod, err := cs.CoreV1().Pods(ns).Get(context.Background(), "unbound", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range pod.Status.InitContainerStatuses {
		if s.Name == agentContainer && s.Ready {
			t.Errorf("the agent without RBAC reports ready")
		}
	}
}

func TestBadAnnotationIsRefusedByTheAPIServer(t *testing.T) {
	ns := newNamespace(t, true)
	_, err := cs.CoreV1().Pods(ns).Create(context.Background(),
		appPod("bad", map[string]string{"leasehold.io/locks": "Not_A_Lease"}, "true"), metav1.CreateOptions{})
	if err == nil {
		t.Fatal("a Pod with an invalid lock name was admitted")
	}
	if !apierrors.IsForbidden(err) {
		t.Errorf("want the webhook's denial (403 Forbidden), got %v", err)
	}
	for _, want := range []string{"leasehold.io/locks", "Not_A_Lease"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %q", err.Error(), want)
		}
	}
}

// With the admission policy of manifests/base, a Pod-bound token taken from one Pod (here
// from its app container, which mounts the ServiceAccount's token like any container)
// cannot write another Pod's hold, release it, lower its fencing token or squat the lock;
// the agents keep working, and an operator's `kubectl leasehold release` still does.
func TestPodBoundTokenCannotTouchAnotherPodsHold(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, true)
	const lock = "bound"
	holder := createPod(t, ns, appPod("holder", map[string]string{"leasehold.io/locks": lock},
		`exec leasehold run `+lock+` -- sh -c 'echo "holding token=$LEASEHOLD_TOKEN"; sleep 3600'`))
	waitForLog(t, ns, "holder", "app", regexp.MustCompile(`holding token=\d+`), 120*time.Second)
	other := createPod(t, ns, appPod("other", map[string]string{"leasehold.io/locks": lock}, "sleep 3600"))
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 120*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, other.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	}); err != nil {
		t.Fatalf("Pod other not running: %v\n%s", err, describe(ns, other.Name))
	}
	token, err := kubectl("-n", ns, "exec", other.Name, "-c", "app", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	stolen := rest.AnonymousClientConfig(cfg)
	stolen.BearerToken = strings.TrimSpace(token)
	thief := kubernetes.NewForConfigOrDie(stolen).CoordinationV1().Leases(ns)

	lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, lock, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holderID := holder.Name + "_" + string(holder.UID)
	if got := ptr.Deref(lease.Spec.HolderIdentity, ""); got != holderID {
		t.Fatalf("the Lease names %q, want the holder Pod %q", got, holderID)
	}
	otherPod, err := cs.CoreV1().Pods(ns).Get(ctx, other.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otherID := otherPod.Name + "_" + string(otherPod.UID)
	token0 := ptr.Deref(lease.Spec.LeaseTransitions, 0)
	attempts := map[string]func(*coordinationv1.Lease){
		"renew the holder's record":  func(l *coordinationv1.Lease) { l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()} },
		"release the holder's hold":  func(l *coordinationv1.Lease) { l.Spec.HolderIdentity = ptr.To("") },
		"name a third Pod as holder": func(l *coordinationv1.Lease) { l.Spec.HolderIdentity = ptr.To("someone_else") },
		"take it with a lower token": func(l *coordinationv1.Lease) {
			l.Spec.HolderIdentity, l.Spec.LeaseTransitions = &otherID, ptr.To(token0-1)
		},
		"take it without the next token": func(l *coordinationv1.Lease) { l.Spec.HolderIdentity = &otherID },
		"squat it for 68 years": func(l *coordinationv1.Lease) {
			l.Spec.HolderIdentity, l.Spec.LeaseTransitions, l.Spec.LeaseDurationSeconds = &otherID, ptr.To(token0+1), ptr.To(int32(2147483647))
		},
		// The garbage collector would delete the Lease: its owner does not exist.
		"give it an owner that does not exist": func(l *coordinationv1.Lease) {
			l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "gone", UID: "0f8e2a4c-1111-4a4a-9c9c-123456789abc"}}
		},
		"give it a finalizer": func(l *coordinationv1.Lease) { l.Finalizers = []string{"example.com/keep"} },
	}
	for name, mutate := range attempts {
		// The holder's agent renews meanwhile: a write based on a copy older than its
		// renew gets 409 before the policy is asked, so try again on a fresh copy.
		var err error
		for range 5 {
			var cur *coordinationv1.Lease
			if cur, err = cs.CoordinationV1().Leases(ns).Get(ctx, lock, metav1.GetOptions{}); err != nil {
				t.Fatal(err)
			}
			next := cur.DeepCopy()
			mutate(next)
			if _, err = thief.Update(ctx, next, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
				break
			}
		}
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s with Pod other's token: want 403 from the admission policy, got %v", name, err)
		}
	}
	if err := thief.Delete(ctx, lock, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete the held Lease with Pod other's token: want 403, got %v", err)
	}
	after, err := cs.CoordinationV1().Leases(ns).Get(ctx, lock, metav1.GetOptions{})
	if err != nil || ptr.Deref(after.Spec.HolderIdentity, "") != holderID || ptr.Deref(after.Spec.LeaseTransitions, 0) != token0 {
		t.Fatalf("the hold changed under the refused writes: %+v %v", after.Spec, err)
	}
	if ok, err := held(ns, holder.Name, "app", lock); err != nil || !ok {
		t.Fatalf("the holder's agent no longer says held: %v %v", ok, err)
	}

	// An operator (the cluster admin here) can still force-release with the plugin.
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir, "./cmd/kubectl-leasehold")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-leasehold: %v\n%s", err, out)
	}
	cmd := exec.Command(kubectlBin, "leasehold", "-n", ns, "release", lock, "--yes")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl leasehold release as an operator: %v\n%s", err, out)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		ok, err := held(ns, holder.Name, "app", lock)
		return err == nil && !ok, nil
	}); err != nil {
		t.Fatalf("the holder still says held after the operator's force-release: %v", err)
	}
}
