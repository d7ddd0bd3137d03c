//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// currentImage is the project image this build installs: $LEASEHOLD_IMAGE (by digest,
// from hack/cluster.sh env), else the tag the manifests name.
func currentImage() string {
	if img := os.Getenv("LEASEHOLD_IMAGE"); img != "" {
		return img
	}
	return "leasehold.local/leasehold:dev"
}

// tokenOf parses "holding token=N" / "got token=N" lines.
var tokenLine = regexp.MustCompile(`(?:holding|got) token=(\d+)`)

func tokenIn(t *testing.T, line string) int64 {
	t.Helper()
	m := tokenLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no token in %q", line)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// agentImage is the image of the Pod's injected agent.
func agentImage(t *testing.T, ns, pod string) string {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != agentContainer {
		t.Fatalf("Pod %s has no injected agent", pod)
	}
	return p.Spec.InitContainers[0].Image
}

// restarts is the sum of the Pod's container restart counts.
func restarts(t *testing.T, ns, pod string) int32 {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		n += s.RestartCount
	}
	return n
}

// waitHeld waits until the agent of pod holds lock and returns the hold's token.
func waitHeld(t *testing.T, ns, pod, lock string, timeout time.Duration) int64 {
	t.Helper()
	var token int64
	if err := wait.PollUntilContextTimeout(context.Background(), time.Second, timeout, true, func(context.Context) (bool, error) {
		s := podState(t, ns, pod, lock)
		token = s.Token
		return s.Held, nil
	}); err != nil {
		t.Fatalf("%s does not hold %s after %s: %v", pod, lock, timeout, err)
	}
	return token
}

// TestUpgradeFromPreviousRelease installs the previous release (hack/previous-release.sh:
// commit 7259b42 as v0.1.0, its image and its chart pushed to the node's registry) with
// helm from the registry's OCI chart, starts Pods that hold a leader lock and a mutex,
// upgrades to this build with helm upgrade while annotated Pods are created (dry run)
// every 100 ms, and checks: every create during the rollout was admitted with its agent;
// the running Pods' agents (the previous version) keep their holds and tokens; new Pods
// get this build's agent; old and new agents share the locks, handing over with a higher
// token. Then helm uninstall: no webhook configuration is left to refuse Pod creates, an
// annotated Pod is created (without an agent), and the running Pods keep running with
// their agents and their holds (the chart keeps the agents' ClusterRole).
func TestUpgradeFromPreviousRelease(t *testing.T) {
	helm := helmCLI(t)
	prev := exec.Command(filepath.Join(repoRoot, "hack", "previous-release.sh"))
	if reg := os.Getenv("LEASEHOLD_REGISTRY"); reg != "" {
		prev.Env = append(os.Environ(), "REGISTRY="+reg)
	}
	prev.Stderr = os.Stderr
	out, err := prev.Output()
	if err != nil {
		t.Fatalf("hack/previous-release.sh: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 {
		t.Fatalf("hack/previous-release.sh printed %q, want CHART_REF CHART_VERSION IMAGE_TAG IMAGE_DIGEST", out)
	}
	chartRef, chartVersion, prevTag := f[0], f[1], f[2]
	prevImage := "leasehold.local/leasehold:" + prevTag
	newImage := currentImage()

	takeAwayKustomizeInstall(t, helm)

	// The previous release, from the registry's OCI chart.
	start := time.Now()
	if out, err := helm("install", helmRelease, chartRef, "--version", chartVersion, "--plain-http",
		"-n", helmRecordNamespace, "--wait", "--timeout=180s", "--set", "image.tag="+prevTag); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm install %s --version %s (%s):\n%s", chartRef, chartVersion, time.Since(start).Round(time.Millisecond), out)
	}
	ns := newNamespace(t, true)
	dryRunInjected(t, ns, func(c corev1.Container) bool { return c.Image == prevImage })

	// Holds taken by agents of the previous release.
	hold := `exec leasehold run --wait 300s %s -- sh -c 'echo "holding token=$LEASEHOLD_TOKEN"; sleep 3600'`
	createPod(t, ns, appPod("old-leader", map[string]string{"leasehold.io/leader": "up-leader"}, "sleep 3600"))
	createPod(t, ns, appPod("old-mutex", map[string]string{"leasehold.io/locks": "up-mutex"}, strings.Replace(hold, "%s", "up-mutex", 1)))
	oldMutexToken := tokenIn(t, waitForLog(t, ns, "old-mutex", "app", tokenLine, 120*time.Second)[0])
	oldLeader := waitHeld(t, ns, "old-leader", "up-leader", 120*time.Second)
	for _, p := range []string{"old-leader", "old-mutex"} {
		if got := agentImage(t, ns, p); got != prevImage {
			t.Fatalf("Pod %s runs agent %s, want the previous release's %s", p, got, prevImage)
		}
	}

	// Upgrade to this build while annotated Pods are admitted all along.
	rollout := admitAll(t, ns)
	start = time.Now()
	if out, err := helm(append([]string{"upgrade", helmRelease, filepath.Join(repoRoot, "charts", "leasehold"),
		"-n", helmRecordNamespace, "--wait", "--timeout=180s"}, imageDigestValues()...)...); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm upgrade to this build (%s):\n%s", time.Since(start).Round(time.Millisecond), out)
	}
	if err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 120*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=leasehold-webhook"})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Spec.Containers[0].Image != newImage {
				return false, nil
			}
		}
		return len(pods.Items) > 0, nil
	}); err != nil {
		t.Errorf("the previous release's webhook replicas did not go: %v", err)
	}
	time.Sleep(2 * time.Second)
	if tried, refused, first := rollout(); refused > 0 {
		t.Errorf("%d of %d annotated Pods sent during the upgrade were not admitted with their agent; first: %v", refused, tried, first)
	} else {
		t.Logf("%d annotated Pods (dry run) sent during the upgrade: all admitted with their agent", tried)
	}
	dryRunInjected(t, ns, func(c corev1.Container) bool { return c.Image == newImage })

	// The previous release's agents keep their holds and tokens.
	for pod, want := range map[string]struct {
		lock  string
		token int64
	}{"old-leader": {"up-leader", oldLeader}, "old-mutex": {"up-mutex", oldMutexToken}} {
		if s := podState(t, ns, pod, want.lock); !s.Held || s.Token != want.token {
			t.Errorf("after the upgrade %s: held %v token %d, want held with token %d", pod, s.Held, s.Token, want.token)
		}
		if n := restarts(t, ns, pod); n != 0 {
			t.Errorf("Pod %s restarted %d containers during the upgrade", pod, n)
		}
	}

	// New Pods get this build's agent and share the locks with the old agents.
	createPod(t, ns, appPod("new-mutex", map[string]string{"leasehold.io/locks": "up-mutex"}, `echo waiting; `+strings.Replace(hold, "%s", "up-mutex", 1)))
	createPod(t, ns, appPod("new-leader", map[string]string{"leasehold.io/leader": "up-leader"}, "sleep 3600"))
	waitForLog(t, ns, "new-mutex", "app", regexp.MustCompile(`waiting`), 120*time.Second)
	for _, p := range []string{"new-mutex", "new-leader"} {
		if got := agentImage(t, ns, p); got != newImage {
			t.Errorf("Pod %s created after the upgrade runs agent %s, want %s", p, got, newImage)
		}
	}
	time.Sleep(3 * time.Second) // the new agents are up and asking
	if tokenLine.MatchString(logs(t, ns, "new-mutex", "app")) {
		t.Fatalf("new-mutex took up-mutex while the old agent held it")
	}
	if s := podState(t, ns, "new-leader", "up-leader"); s.Held {
		t.Fatalf("new-leader holds up-leader while old-leader does (token %d)", s.Token)
	}
	for _, p := range []string{"old-mutex", "old-leader"} {
		if err := cs.CoreV1().Pods(ns).Delete(context.Background(), p, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := tokenIn(t, waitForLog(t, ns, "new-mutex", "app", tokenLine, 90*time.Second)[0]); got <= oldMutexToken {
		t.Errorf("new-mutex took up-mutex with token %d, not above the old agent's %d", got, oldMutexToken)
	}
	newLeader := waitHeld(t, ns, "new-leader", "up-leader", 90*time.Second)
	if newLeader <= oldLeader {
		t.Errorf("new-leader leads with token %d, not above the old agent's %d", newLeader, oldLeader)
	}

	// Uninstall: no webhook configuration is left to refuse a Pod, running Pods run on.
	if _, err := helm("uninstall", helmRelease, "-n", helmRecordNamespace, "--wait", "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	webhooks, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range webhooks.Items {
		t.Errorf("mutating webhook configuration %s left after helm uninstall", w.Name)
	}
	after, err := cs.CoreV1().Pods(ns).Create(context.Background(),
		appPod("after-uninstall", map[string]string{"leasehold.io/locks": "up-mutex"}, "sleep 3600"), metav1.CreateOptions{})
	if err != nil {
		t.Errorf("an annotated Pod create after helm uninstall: %v", err)
	} else if len(after.Spec.InitContainers) != 0 {
		t.Errorf("a Pod created after helm uninstall was injected: %v", after.Annotations)
	}
	// The running Pods run on, holds included: the chart keeps the agents' ClusterRole
	// (helm.sh/resource-policy: keep), so their renewals go on. Past renew-deadline
	// (10 s), a hold that could not renew would have ended.
	time.Sleep(12 * time.Second)
	for _, p := range []string{"new-leader", "new-mutex"} {
		pod, err := cs.CoreV1().Pods(ns).Get(context.Background(), p, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.Status.Phase != corev1.PodRunning || restarts(t, ns, p) != 0 {
			t.Errorf("Pod %s 12 s after helm uninstall: phase %s, %d restarts", p, pod.Status.Phase, restarts(t, ns, p))
		}
	}
	if s := podState(t, ns, "new-leader", "up-leader"); !s.Held || s.Token != newLeader {
		t.Errorf("12 s after helm uninstall new-leader's hold of up-leader is %s with token %d, want held with %d", s.Phase, s.Token, newLeader)
	}
	deleteKeptAgentRole(t)
}
