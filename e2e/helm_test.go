//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// helmRelease is the release the test installs; its record lives in helmRecordNamespace
// (the chart creates and owns leasehold-system itself).
const (
	helmRelease         = "leasehold"
	helmRecordNamespace = "default"
	partOf              = "app.kubernetes.io/part-of=leasehold"
)

// helmCLI returns a function that runs the helm CLI (built by hack/helm.sh from the Go
// module proxy) against the e2e cluster, with its own config and cache directories.
func helmCLI(t *testing.T) func(args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(filepath.Join(repoRoot, "hack", "helm.sh")).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("hack/helm.sh: %v\n%s", err, stderr)
	}
	bin := strings.TrimSpace(string(out))
	home := t.TempDir()
	return func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
			"HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return stdout.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
		}
		return stdout.String(), nil
	}
}

// leftovers lists every object of any listable kind, in any namespace, that carries the
// label every Leasehold object has, plus the webhook configuration by name.
func leftovers(t *testing.T) []string {
	t.Helper()
	kinds, err := kubectl("api-resources", "--verbs=list", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	out, err := kubectl("get", strings.Join(strings.Fields(kinds), ","), "-A", "-l", partOf, "-o", "name", "--ignore-not-found")
	if err != nil {
		t.Fatal(err)
	}
	left := strings.Fields(out)
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), "leasehold-webhook", metav1.GetOptions{}); err == nil {
		left = append(left, "mutatingwebhookconfiguration/leasehold-webhook (by name)")
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return left
}

// agentRole is the agents' ClusterRole, which helm uninstall keeps
// (helm.sh/resource-policy: keep): running Pods' agents renew through it.
const agentRole = "clusterrole.rbac.authorization.k8s.io/leasehold-agent"

// deleteKeptAgentRole checks that helm uninstall left the agents' ClusterRole and
// nothing else of Leasehold but what is still going away (the namespace, its objects),
// then deletes it as the README's uninstall steps say.
func deleteKeptAgentRole(t *testing.T) {
	t.Helper()
	if !slices.Contains(leftovers(t), agentRole) {
		t.Errorf("helm uninstall did not keep %s: the agents of running Pods can no longer renew", agentRole)
	}
	if _, err := kubectl("delete", "clusterrole", "leasehold-agent", "--ignore-not-found"); err != nil {
		t.Fatal(err)
	}
}

// waitNothingLeft waits until no Leasehold object is left (a Namespace takes a few
// seconds to go), and fails naming what is.
func waitNothingLeft(t *testing.T, what string) {
	t.Helper()
	var left []string
	if err := wait.PollUntilContextTimeout(context.Background(), time.Second, 180*time.Second, true, func(context.Context) (bool, error) {
		left = leftovers(t)
		return len(left) == 0, nil
	}); err != nil {
		t.Fatalf("%s left behind: %v", what, left)
	}
}

// dryRunInjected creates a lock-annotated Pod in ns with dry run until the webhook
// injects it and accept says yes, and returns the injected agent container.
func dryRunInjected(t *testing.T, ns string, accept func(agent corev1.Container) bool) corev1.Container {
	t.Helper()
	probe := appPod("helm-probe", map[string]string{"leasehold.io/locks": "probe"}, "true")
	var last error
	var agent corev1.Container
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 120*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := cs.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			last = err
			return false, nil
		}
		if len(got.Spec.InitContainers) == 0 || got.Spec.InitContainers[0].Name != agentContainer {
			last = fmt.Errorf("not injected: %v", got.Annotations)
			return false, nil
		}
		agent = got.Spec.InitContainers[0]
		last = fmt.Errorf("agent resources %v", agent.Resources)
		return accept(agent), nil
	})
	if err != nil {
		t.Fatalf("no dry-run Pod came back injected as expected within 120s (last: %v)", last)
	}
	return agent
}

// admitAll sends an annotated Pod (dry run) every 100 ms until the returned function is
// called, which says how many were sent, how many were not admitted with their agent,
// and the first of those.
func admitAll(t *testing.T, ns string) func() (int, int, error) {
	t.Helper()
	probe := appPod("helm-rollout", map[string]string{"leasehold.io/locks": "probe"}, "true")
	stop, done := make(chan struct{}), make(chan struct{})
	var tried, refused int
	var first error
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			got, err := cs.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			cancel()
			tried++
			if err == nil && (len(got.Spec.InitContainers) == 0 || got.Spec.InitContainers[0].Name != agentContainer) {
				err = fmt.Errorf("admitted without its agent: %v", got.Annotations)
			}
			if err != nil {
				refused++
				if first == nil {
					first = fmt.Errorf("at %s: %w", time.Now().Format(time.StampMilli), err)
				}
			}
		}
	}()
	return func() (int, int, error) {
		close(stop)
		<-done
		return tried, refused, first
	}
}

// holdLock starts a Pod in ns that takes lock through its agent and keeps it, and
// returns the Pod once it holds the lock.
func holdLock(t *testing.T, ns, name, lock string) *corev1.Pod {
	t.Helper()
	createPod(t, ns, appPod(name, map[string]string{"leasehold.io/locks": lock},
		`exec leasehold run `+lock+` -- sh -c 'echo "holding token=$LEASEHOLD_TOKEN"; sleep 3600'`))
	waitForLog(t, ns, name, "app", regexp.MustCompile(`holding token=\d+`), 120*time.Second)
	p, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkInjected(t, p)
	return p
}

func memoryLimit(c corev1.Container) string {
	q := c.Resources.Limits[corev1.ResourceMemory]
	return q.String()
}

// TestHelmInstallUpgradeUninstall installs Leasehold with the chart, as README.md tells
// a user to, with the helm CLI built from the Go module proxy: the webhook injects and
// the agent takes a lock; an upgrade with changed values reaches the next Pod; the
// uninstall leaves nothing behind. The chart installs the same cluster-scoped objects
// as TestMain's `kubectl apply -k manifests/base` (one Leasehold per cluster), so the
// test takes that install away first and puts it back at the end, ready, for the tests
// after it.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	helm := helmCLI(t)
	chart := filepath.Join(repoRoot, "charts", "leasehold")
	takeAwayKustomizeInstall(t, helm)

	// Install.
	start := time.Now()
	if out, err := helm(append([]string{"install", helmRelease, chart, "-n", helmRecordNamespace, "--wait", "--timeout=180s"}, imageDigestValues()...)...); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm install (%s):\n%s", time.Since(start).Round(time.Millisecond), out)
	}
	ns := newNamespace(t, true) // grants ClusterRole leasehold-agent, which the chart made
	defaults := dryRunInjected(t, ns, func(corev1.Container) bool { return true })
	t.Logf("webhook injects %s after helm install", time.Since(start).Round(time.Millisecond))
	if got := memoryLimit(defaults); got != "64Mi" {
		t.Errorf("agent memory limit %s after install, want the default 64Mi", got)
	}
	holdLock(t, ns, "before-upgrade", "helm-lock-1")
	// Each replica served the Secret's certificate read through the API (not waiting for
	// the kubelet to mount it) and logged its version at start.
	webhookPods, err := cs.CoreV1().Pods(systemNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=leasehold-webhook"})
	if err != nil || len(webhookPods.Items) == 0 {
		t.Fatalf("no webhook Pods (%v)", err)
	}
	for _, p := range webhookPods.Items {
		log := logs(t, systemNamespace, p.Name, "webhook")
		for _, want := range []string{`"msg":"Serving the certificate of the Secret"`, `"msg":"Starting webhook","version":"`} {
			if !strings.Contains(log, want) {
				t.Errorf("webhook Pod %s did not log %s:\n%s", p.Name, want, log)
			}
		}
		// For the record (not a pass/fail; this node's kubelet syncs Secrets at its default,
		// every minute): when the replica was trusted, and when the mount appeared.
		stamp := func(msg string) string {
			if m := regexp.MustCompile(`(?m)^(\S+) .*"msg":"` + regexp.QuoteMeta(msg)).FindStringSubmatch(log); m != nil {
				return m[1]
			}
			return "never"
		}
		version := "?"
		if m := regexp.MustCompile(`"msg":"Starting webhook","version":"([^"]*)"`).FindStringSubmatch(log); m != nil {
			version = m[1]
		}
		t.Logf("webhook Pod %s (version %s): started %s, trusted %s, Secret mounted %s", p.Name, version, stamp("Starting webhook"),
			stamp("Serving certificate trusted by the webhook configuration's caBundle"), stamp("certs are ready in /certs"))
	}
	tlsSecret := func() []byte {
		s, err := cs.CoreV1().Secrets(systemNamespace).Get(context.Background(), "leasehold-webhook-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s.Data["tls.crt"]
	}
	certBefore := tlsSecret()

	// Upgrade with changed values: one replica, a larger agent memory limit. The new
	// flag rolls the webhook's Pods; annotated Pods are admitted all along.
	rollout := admitAll(t, ns)
	if out, err := helm(append([]string{"upgrade", helmRelease, chart, "-n", helmRecordNamespace, "--wait", "--timeout=180s",
		"--set", "replicas=1", "--set", "agent.resources.limits.memory=96Mi"}, imageDigestValues()...)...); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm upgrade:\n%s", out)
	}
	// The replaced replicas stop after the rollout is reported done: admit until they
	// are gone.
	if err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 120*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(systemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=leasehold-webhook"})
		return err == nil && len(pods.Items) == 1 && pods.Items[0].DeletionTimestamp == nil, nil
	}); err != nil {
		t.Errorf("the old webhook replicas did not go: %v", err)
	}
	time.Sleep(2 * time.Second)
	if tried, refused, first := rollout(); refused > 0 {
		t.Errorf("%d of %d annotated Pods sent during the webhook's rolling update were not admitted with their agent; first: %v",
			refused, tried, first)
	} else {
		t.Logf("%d annotated Pods (dry run) sent during the webhook's rolling update: all admitted with their agent", tried)
	}
	dep, err := cs.AppsV1().Deployments(systemNamespace).Get(context.Background(), "leasehold-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := dep.Spec.Replicas; r == nil || *r != 1 {
		t.Errorf("replicas %v after the upgrade, want 1", r)
	}
	// The chart's Secret is empty and the webhook fills it: the upgrade must keep what
	// the webhook wrote (Helm's three-way merge leaves fields no manifest names).
	if certAfter := tlsSecret(); len(certBefore) == 0 || !bytes.Equal(certAfter, certBefore) {
		t.Errorf("the upgrade changed the webhook's certificate in its Secret (%d bytes before, %d after)", len(certBefore), len(certAfter))
	}
	// Replicas of the old revision may still answer for a moment: wait for the new value.
	dryRunInjected(t, ns, func(c corev1.Container) bool { return memoryLimit(c) == "96Mi" })
	after := holdLock(t, ns, "after-upgrade", "helm-lock-2")
	if got, want := after.Spec.InitContainers[0].Resources.Limits[corev1.ResourceMemory], resource.MustParse("96Mi"); got.Cmp(want) != 0 {
		t.Errorf("Pod created after the upgrade: agent memory limit %s, want %s", got.String(), want.String())
	}
	// The Pod injected before the upgrade still holds its lock.
	if ok, err := held(ns, "before-upgrade", "app", "helm-lock-1"); err != nil || !ok {
		t.Errorf("the Pod injected before the upgrade no longer holds helm-lock-1 (held %v, err %v)", ok, err)
	}

	// Uninstall: nothing of Leasehold is left but the agents' ClusterRole, which the
	// chart keeps for the running Pods; once deleted as the README says, nothing at all,
	// release record included.
	if _, err := helm("uninstall", helmRelease, "-n", helmRecordNamespace, "--wait", "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	deleteKeptAgentRole(t)
	waitNothingLeft(t, "helm uninstall")
	if out, err := kubectl("-n", helmRecordNamespace, "get", "secrets", "-l", "owner=helm,name="+helmRelease, "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("release records left: %q (%v)", out, err)
	}
}
