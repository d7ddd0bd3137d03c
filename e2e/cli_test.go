//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// busyboxImage has busybox-static and its applets, and no leasehold client: built on
// demand by `hack/images.sh busybox`.
const busyboxImage = "leasehold.local/busybox:dev"

// snippet is a shell snippet of docs/snippets, the very text the guides show.
func snippet(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "snippets", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// importBusybox builds leasehold.local/busybox:dev and pushes it to the node's registry,
// which containerd pulls leasehold.local/* from (the cluster pushes only the images the
// demo uses).
func importBusybox(t *testing.T) {
	t.Helper()
	busyboxOnce.Do(func() {
		cmd := exec.Command(filepath.Join(repoRoot, "hack", "images.sh"), "busybox")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "PUSH=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			busyboxErr = fmt.Errorf("hack/images.sh busybox: %w\n%s", err, out)
		}
	})
	if busyboxErr != nil {
		t.Fatal(busyboxErr)
	}
}

var (
	busyboxOnce sync.Once
	busyboxErr  error
)

// busyboxPod is appPod in the busybox image, with UID 1000 (the agent runs as 53530).
func busyboxPod(name string, annotations map[string]string, script string) *corev1.Pod {
	pod := appPod(name, annotations, script)
	pod.Spec.Containers[0].Image = busyboxImage
	return pod
}

// waitForPodEnd waits until the Pod is Succeeded or Failed and returns it.
func waitForPodEnd(t *testing.T, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, nil
	})
	if err != nil {
		t.Fatalf("Pod %s/%s did not end within %s: %v\n%s", ns, name, timeout, err, describe(ns, name))
	}
	return pod
}

// TestCLIInAnImageWithoutIt runs the documented commands with "$LEASEHOLD_CLI" in an
// image that never had the client, as a UID other than the agent's, in an init
// container and in an app container.
func TestCLIInAnImageWithoutIt(t *testing.T) {
	importBusybox(t)
	ns := newNamespace(t, true)
	const lock = "nightly-report"
	pod := busyboxPod("cli", map[string]string{"leasehold.io/locks": lock + ",db-migration"}, `set -e
if [ -e /usr/local/bin/leasehold ] || command -v leasehold >/dev/null; then echo "the image has a leasehold client"; exit 3; fi
echo "uid=$(id -u) cli=$LEASEHOLD_CLI"
grep " /run/leasehold " /proc/mounts
ls -ldn /run/leasehold /run/leasehold/bin "$LEASEHOLD_CLI"
`+snippet(t, "any-image.sh")+`echo done`)
	// The init container of docs/snippets/migrate-init.yaml, as the migration guide shows it.
	var tmpl struct {
		InitContainers []corev1.Container `json:"initContainers"`
	}
	if err := yaml.UnmarshalStrict([]byte(snippet(t, "migrate-init.yaml")), &tmpl); err != nil || len(tmpl.InitContainers) != 1 {
		t.Fatalf("docs/snippets/migrate-init.yaml: %v (%d init containers)", err, len(tmpl.InitContainers))
	}
	init := tmpl.InitContainers[0]
	init.SecurityContext = pod.Spec.Containers[0].SecurityContext
	pod.Spec.InitContainers = []corev1.Container{init}
	createPod(t, ns, pod)

	got := waitForPodEnd(t, ns, "cli", 120*time.Second)
	initLog, appLog := logs(t, ns, "cli", "migrate"), logs(t, ns, "cli", "app")
	t.Logf("init container:\n%sapp container:\n%s", initLog, appLog)
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("Pod phase %s, want Succeeded\n%s", got.Status.Phase, describe(ns, "cli"))
	}
	checkInjectedSpec(t, got)
	for _, c := range append(got.Spec.InitContainers[1:], got.Spec.Containers...) {
		if v := envValue(c, "LEASEHOLD_CLI"); v != "/run/leasehold/bin/leasehold" {
			t.Errorf("container %s: LEASEHOLD_CLI=%q, want /run/leasehold/bin/leasehold", c.Name, v)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`uid=1000 cli=/run/leasehold/bin/leasehold`),
		regexp.MustCompile(`report under token \d+`),
		regexp.MustCompile(`"name":"nightly-report"`),
		regexp.MustCompile(`(?m) done$`),
	} {
		if !want.MatchString(appLog) {
			t.Errorf("app log does not match %q", want)
		}
	}
	if m := regexp.MustCompile(`(?m) /run/leasehold \S+ (\S+)`).FindStringSubmatch(appLog); m == nil || strings.Contains(m[1], "noexec") {
		t.Errorf("the socket volume's mount options: %v (want it mounted, without noexec)", m)
	}
	if !regexp.MustCompile(`migrating under token \d+`).MatchString(initLog) {
		t.Errorf("the init container did not run its command under the lock")
	}
}

// jobFor is a Job of one restricted-profile Pod, annotated with lock, running script in
// the busybox image.
func jobFor(name, lock, script string) *batchv1.Job {
	pod := busyboxPod(name, map[string]string{"leasehold.io/locks": lock}, script)
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To(int32(0)),
			Template:     corev1.PodTemplateSpec{ObjectMeta: pod.ObjectMeta, Spec: pod.Spec},
		},
	}
}

// waitForJob waits until the Job is Complete (or fails the test when it Failed) and
// returns how long it took from now.
func waitForJob(t *testing.T, ns, name string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last *batchv1.Job
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		j, err := cs.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = j
		for _, c := range j.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				continue
			}
			switch c.Type {
			case batchv1.JobComplete:
				return true, nil
			case batchv1.JobFailed:
				t.Fatalf("Job %s/%s failed: %s: %s\n%s", ns, name, c.Reason, c.Message, jobPods(ns, name))
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("Job %s/%s not Complete within %s (status %+v): %v\n%s", ns, name, timeout, last.Status, err, jobPods(ns, name))
	}
	return time.Since(start)
}

func jobPods(ns, job string) string {
	out, err := kubectl("-n", ns, "describe", "pods", "-l", "job-name="+job)
	if err != nil {
		return err.Error()
	}
	return out
}

// checkLockFree fails the test unless the Lease has no holder now.
func checkLockFree(t *testing.T, ns, lock string) {
	t.Helper()
	lease, err := cs.CoordinationV1().Leases(ns).Get(context.Background(), lock, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Lease %s/%s: %v", ns, lock, err)
	}
	if h := ptr.Deref(lease.Spec.HolderIdentity, ""); h != "" {
		t.Errorf("Lease %s/%s still names holder %q right after the Job completed (lease-duration %ds): "+
			"the agent did not release on SIGTERM", ns, lock, h, ptr.Deref(lease.Spec.LeaseDurationSeconds, 0))
	}
}

// jobPodOf returns the (single) Pod of the Job.
func jobPodOf(t *testing.T, ns, job string) *corev1.Pod {
	t.Helper()
	list, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "job-name=" + job})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("Pods of Job %s: %d, %v", job, len(list.Items), err)
	}
	return &list.Items[0]
}

// TestJobCompletesAndFreesItsLock: a Job whose Pod template is annotated runs its
// critical section and completes (the native sidecar does not keep the Pod alive), and
// the Lease is free at once: with `leasehold run` the hold ends with the command; with
// `leasehold acquire --ttl` and no release, the agent releases it on the SIGTERM the
// kubelet sends once the Job's container has exited.
func TestJobCompletesAndFreesItsLock(t *testing.T) {
	importBusybox(t)
	ns := newNamespace(t, true)
	for _, tc := range []struct{ job, lock, snippet string }{
		{"report-run", "nightly-report", "job-run.sh"},
		{"report-acquire", "other-report", "job-acquire.sh"},
	} {
		script := strings.ReplaceAll(snippet(t, tc.snippet), "nightly-report", tc.lock)
		if _, err := cs.BatchV1().Jobs(ns).Create(context.Background(), jobFor(tc.job, tc.lock, script), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ job, lock string }{{"report-run", "nightly-report"}, {"report-acquire", "other-report"}} {
		took := waitForJob(t, ns, tc.job, 120*time.Second)
		checkLockFree(t, ns, tc.lock)
		pod := jobPodOf(t, ns, tc.job)
		checkInjectedSpec(t, pod)
		log := logs(t, ns, pod.Name, "app")
		if !regexp.MustCompile(`report under token \d+`).MatchString(log) {
			t.Errorf("Job %s: no critical section in its log:\n%s", tc.job, log)
		}
		agentLog := logs(t, ns, pod.Name, agentContainer)
		if !strings.Contains(agentLog, "Shutting down") {
			t.Errorf("Job %s: the agent was not stopped with SIGTERM:\n%s", tc.job, agentLog)
		}
		t.Logf("Job %s Complete %s after the wait began, Lease %s free", tc.job, took.Round(time.Millisecond), tc.lock)
	}
}

// TestCronJobPodsAreInjected renders a Job from a CronJob's jobTemplate through the real
// API, the way `kubectl create job --from=cronjob/NAME` does (a schedule would take a
// minute), and checks that its Pod is injected, completes and frees the lock.
func TestCronJobPodsAreInjected(t *testing.T) {
	importBusybox(t)
	ns := newNamespace(t, true)
	// The CronJob of the guide (docs/jobs-and-cronjobs.md), as it is.
	cj := &batchv1.CronJob{}
	if err := yaml.UnmarshalStrict([]byte(snippet(t, "cronjob.yaml")), cj); err != nil {
		t.Fatalf("docs/snippets/cronjob.yaml: %v", err)
	}
	cj.Spec.Suspend = ptr.To(true) // only the manual run below
	// The guide's ServiceAccount is the one `kubectl leasehold rbac` makes; here the
	// namespace's default, which newNamespace bound to the agent's ClusterRole.
	cj.Spec.JobTemplate.Spec.Template.Spec.ServiceAccountName = ""
	if _, err := cs.BatchV1().CronJobs(ns).Create(context.Background(), cj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("-n", ns, "create", "job", "nightly-manual", "--from=cronjob/nightly"); err != nil {
		t.Fatal(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
	took := waitForJob(t, ns, "nightly-manual", 120*time.Second)
	checkLockFree(t, ns, "nightly-report")
	pod := jobPodOf(t, ns, "nightly-manual")
	checkInjectedSpec(t, pod)
	if !regexp.MustCompile(`report under token \d+`).MatchString(logs(t, ns, pod.Name, "app")) {
		t.Errorf("no critical section in the CronJob's Job's log")
	}
	t.Logf("Job from CronJob Complete %s after it was created, Lease free", took.Round(time.Millisecond))
}

// checkInjectedSpec is checkInjected for a Pod that has ended (no running agent).
func checkInjectedSpec(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if p.Annotations["leasehold.io/status"] != "injected" {
		t.Errorf("Pod %s: leasehold.io/status = %q, want injected", p.Name, p.Annotations["leasehold.io/status"])
	}
	if len(p.Spec.InitContainers) == 0 || p.Spec.InitContainers[0].Name != agentContainer ||
		ptr.Deref(p.Spec.InitContainers[0].RestartPolicy, "") != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("Pod %s: the agent is not the first init container as a native sidecar", p.Name)
	}
	for _, c := range p.Spec.Containers {
		if envValue(c, "LEASEHOLD_CLI") == "" || envValue(c, "LEASEHOLD_SOCKET") == "" {
			t.Errorf("Pod %s container %s: no LEASEHOLD_CLI or LEASEHOLD_SOCKET", p.Name, c.Name)
		}
	}
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}
