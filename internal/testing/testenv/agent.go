package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Agent is one leasehold-agent process, as in one Pod, for tests outside sidecar/agent
// (the client's examples, the documentation's snippets).
type Agent struct {
	Socket string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// StartAgent starts the agent binary for Pod pod in namespace default, with the API
// server of kubeconfig, serving on socket, with args added (--locks=..., --leader=...),
// its output in logPath, and waits until it is ready (at most 30 s).
func StartAgent(binary, kubeconfig, socket, logPath, pod string, args ...string) (*Agent, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	full := append([]string{"--namespace=default", "--pod-name=" + pod, "--pod-uid=00000000-0000-0000-0000-0000000d0c5e",
		"--socket=" + socket, "--kubeconfig=" + kubeconfig, "--metrics-bind-address=0"}, args...)
	a := &Agent{Socket: socket, cmd: exec.Command(binary, full...), log: logPath, exited: make(chan struct{})}
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	go func() { _ = a.cmd.Wait(); f.Close(); close(a.exited) }()
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	defer hc.CloseIdleConnections()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := hc.Get("http://leasehold/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a, nil
			}
		}
		select {
		case <-a.exited:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("the agent exited before it was ready:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			a.Stop()
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("the agent was not ready within 30s:\n%s", b)
		}
	}
}

// Stop sends SIGTERM (the agent releases its holds) and waits for the exit, at most
// 10 s before SIGKILL.
func (a *Agent) Stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
}

// Log is what the agent wrote so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.log)
	return string(b)
}
