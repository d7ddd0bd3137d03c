package agent_test

import (
	"bufio"
	"context"
	"net/http"
	"os/exec"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/webhook"
)

// TestInjectedProbesPassDuringAFlood runs the agent with the arguments the webhook
// injects, fills its --max-connections with clients that keep their connections
// open, and runs the startup and readiness probes exactly as the webhook writes them:
// they must pass (a failing startup probe restarts the agent, which drops its leader
// locks). Only the paths are moved into a temporary directory, the Pod's identity
// filled in as the kubelet does, and the cap lowered to make the flood small.
func TestInjectedProbesPassDuringAFlood(t *testing.T) {
	t.Parallel()
	const maxConns = 4
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-probe", Namespace: "default",
			Annotations: map[string]string{webhook.AnnotationLocks: "probe-flood"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	a := launchInjectedAgent(t, pod, "00000000-0000-0000-0000-00000000beef", nil, "--metrics-bind-address=0", "--max-connections=4")
	a.waitReady(15 * time.Second)
	a.c.CloseIdleConnections()
	agent, kubelet, socket := a.container, a.kubelet, a.socket

	// The flood: every connection the cap allows, kept open (keep-alive clients).
	get := func() int {
		conn, err := dialUnix(context.Background(), socket)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		_, _ = conn.Write([]byte("GET /v1/locks/probe-flood HTTP/1.1\r\nHost: leasehold\r\n\r\n"))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range maxConns {
		if code := get(); code != http.StatusOK {
			t.Fatalf("connection %d of %d: %d", i+1, maxConns, code)
		}
	}
	if code := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("the agent is not at its cap: connection %d got %d, want 503", maxConns+1, code)
	}

	for name, p := range map[string]*corev1.Probe{"startup": agent.StartupProbe, "readiness": agent.ReadinessProbe} {
		command := p.Exec.Command
		var probeArgs []string
		for _, a := range command[1:] {
			probeArgs = append(probeArgs, kubelet.Replace(a))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.TimeoutSeconds)*time.Second+2*time.Second)
		out, err := exec.CommandContext(ctx, kubelet.Replace(command[0]), probeArgs...).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s probe %q failed while the agent served %d clients: %v\n%s", name, command, maxConns, err, out)
		}
	}
}
