package agent_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/webhook"
)

// TestInjectedAgentInstallsTheClient runs the agent with the arguments the webhook
// injects (paths moved into a temporary directory, as the kubelet would mount the
// volume there) and runs the client at the app container's LEASEHOLD_CLI with the app
// container's environment: the client is there before the agent serves, and works.
func TestInjectedAgentInstallsTheClient(t *testing.T) {
	t.Parallel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-cli", Namespace: "default",
			Annotations: map[string]string{webhook.AnnotationLocks: "cli-lock"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	// The agent image has leasehold beside leasehold-agent; so has binDir.
	a := launchInjectedAgent(t, pod, "00000000-0000-0000-0000-0000000c11e0", nil, "--metrics-bind-address=0")
	app, kubelet := pod.Spec.Containers[0], a.kubelet

	env := []string{"PATH=" + os.Getenv("PATH")} // the image's
	for _, e := range app.Env {
		env = append(env, e.Name+"="+kubelet.Replace(e.Value))
	}
	cli := kubelet.Replace(envOf(app, webhook.EnvCLI))
	if cli == "" {
		t.Fatalf("the app container has no %s: %v", webhook.EnvCLI, app.Env)
	}

	// The client is in place by the time the socket answers (the startup probe).
	var code int
	var last error
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 15*time.Second, true, func(ctx context.Context) (bool, error) {
		code, _, last = a.c.Get(ctx, "/healthz")
		return last == nil && code == 200, nil
	}); err != nil {
		t.Fatalf("agent not serving after 15s (last: %d %v)", code, last)
	}
	if fi, err := os.Stat(cli); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("%s=%s when the agent serves: %v (mode %v), want the client, mode 0755", webhook.EnvCLI, cli, err, fi)
	}

	run := exec.Command(cli, "run", "--wait=10s", "cli-lock", "--", "sh", "-c", `echo "token=$LEASEHOLD_TOKEN"`)
	run.Env = env
	out, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "token=") {
		t.Fatalf("$%s run: %v\n%s", webhook.EnvCLI, err, out)
	}
	status := exec.Command(cli, "status", "cli-lock")
	status.Env = env
	if out, err := status.CombinedOutput(); err != nil || !strings.Contains(string(out), `"name":"cli-lock"`) {
		t.Fatalf("$%s status: %v\n%s", webhook.EnvCLI, err, out)
	}
}

func envOf(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}
