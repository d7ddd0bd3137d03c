package agent_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/sidecar/client"
	"github.com/leasehold/leasehold/webhook"
)

// TestInjectedAgentInstallsTheClient runs the agent with the arguments the webhook
// injects (paths moved into a temporary directory, as the kubelet would mount the
// volume there) and runs the client at the app container's LEASEHOLD_CLI with the app
// container's environment: the client is there before the agent serves, and works.
func TestInjectedAgentInstallsTheClient(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-cli", Namespace: "default",
			Annotations: map[string]string{webhook.AnnotationLocks: "cli-lock"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	cfg, errs := webhook.ParseAnnotations(pod.Annotations)
	if len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	if errs := webhook.Inject(pod, cfg, webhook.DefaultOptions()); len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	agent, app := pod.Spec.InitContainers[0], pod.Spec.Containers[0]

	dir := t.TempDir()
	kubelet := strings.NewReplacer(webhook.SocketDir, dir, "$(POD_NAMESPACE)", "default", "$(POD_NAME)", pod.Name,
		"$(POD_UID)", "00000000-0000-0000-0000-0000000c11e0", webhook.AgentBinary, filepath.Join(binDir, "leasehold-agent"))
	var args []string
	for _, a := range agent.Args {
		args = append(args, kubelet.Replace(a))
	}
	args = append(args, "--kubeconfig="+kubeconfig, "--metrics-bind-address=0")
	// The agent image has leasehold beside leasehold-agent; so has binDir.
	cmd := exec.Command(kubelet.Replace(agent.Command[0]), args...)
	logPath := filepath.Join(dir, "agent.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", b)
		}
	})

	env := []string{"PATH=" + os.Getenv("PATH")} // the image's
	for _, e := range app.Env {
		env = append(env, e.Name+"="+kubelet.Replace(e.Value))
	}
	cli := kubelet.Replace(envOf(app, webhook.EnvCLI))
	if cli == "" {
		t.Fatalf("the app container has no %s: %v", webhook.EnvCLI, app.Env)
	}

	// The client is in place by the time the socket answers (the startup probe).
	c := client.New(kubelet.Replace(webhook.SocketPath), "")
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, _, err := c.Get(context.Background(), "/healthz")
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not serving after 15s (last: %d %v)", code, err)
		}
		time.Sleep(20 * time.Millisecond)
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
