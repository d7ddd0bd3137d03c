package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// AgentSpec is one leasehold-agent process, as in one Pod: the one description every
// test that starts an agent uses (sidecar/agent, sidecar/client, docs, the chaos
// suite, the scale benchmark).
type AgentSpec struct {
	// Binary is the leasehold-agent binary (BuildBinaries builds it).
	Binary string
	// Namespace is --namespace; "default" when empty.
	Namespace string
	// Pod and UID are --pod-name and --pod-uid (the holder identity is Pod_UID).
	Pod, UID string
	// Socket is --socket, the agent's Unix socket.
	Socket string
	// Kubeconfig is --kubeconfig, the way to the API server.
	Kubeconfig string
	// Log is the file that receives the agent's stdout and stderr (created).
	Log string
	// Args are more flags (--locks=..., timings). They come after the ones above, so a
	// flag given again here wins (the agent's flag set keeps the last value).
	Args []string
	// Command, when set, is the whole command line instead of Binary and the flags
	// above (e.g. the command the webhook injects into a Pod, resolved as the kubelet
	// would); Socket and Log still apply.
	Command []string
	// Env, when set, is the process's whole environment (else it inherits the test's).
	Env []string
	// SysProcAttr is the process's attributes (a process group, a death signal).
	SysProcAttr *syscall.SysProcAttr
}

// Argv is the agent's command line: Binary and its flags.
func (s AgentSpec) Argv() []string {
	ns := s.Namespace
	if ns == "" {
		ns = "default"
	}
	return append([]string{s.Binary,
		"--namespace=" + ns, "--pod-name=" + s.Pod, "--pod-uid=" + s.UID,
		"--socket=" + s.Socket, "--kubeconfig=" + s.Kubeconfig, "--metrics-bind-address=0",
	}, s.Args...)
}

// Agent is a started leasehold-agent process.
type Agent struct {
	Socket string
	// Cmd is the process; Exited is closed once it has ended, and then Err is its exit.
	Cmd    *exec.Cmd
	Exited chan struct{}
	Err    error
	log    string
}

// LaunchAgent starts the agent of spec and returns without waiting for it to be ready
// (WaitReady waits).
func LaunchAgent(spec AgentSpec) (*Agent, error) {
	argv := spec.Command
	if len(argv) == 0 {
		argv = spec.Argv()
	}
	f, err := os.Create(spec.Log)
	if err != nil {
		return nil, err
	}
	a := &Agent{Socket: spec.Socket, Cmd: exec.Command(argv[0], argv[1:]...), log: spec.Log, Exited: make(chan struct{})}
	a.Cmd.Stdout, a.Cmd.Stderr = f, f
	a.Cmd.Env = spec.Env
	a.Cmd.SysProcAttr = spec.SysProcAttr
	if err := a.Cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	go func() { a.Err = a.Cmd.Wait(); f.Close(); close(a.Exited) }()
	return a, nil
}

// StartAgent starts the agent binary for Pod pod in namespace default, with the API
// server of kubeconfig, serving on socket, with args added (--locks=..., --leader=...),
// its output in logPath, and waits until it is ready (at most 30 s).
func StartAgent(binary, kubeconfig, socket, logPath, pod string, args ...string) (*Agent, error) {
	a, err := LaunchAgent(AgentSpec{Binary: binary, Pod: pod, UID: "00000000-0000-0000-0000-0000000d0c5e",
		Socket: socket, Kubeconfig: kubeconfig, Log: logPath, Args: args})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		a.Stop()
		return nil, fmt.Errorf("%w:\n%s", err, a.Log())
	}
	return a, nil
}

// WaitReady waits until the agent answers GET /readyz with 200, until ctx ends, or
// until the agent exits, whichever comes first.
func (a *Agent) WaitReady(ctx context.Context) error {
	return WaitReady(ctx, a.Socket, a.Exited)
}

// WaitReady waits until the agent on socket answers GET /readyz with 200. Readiness
// has no event to wait on, so it asks every 10 ms; it gives up at once when exited is
// closed (the agent ended) and when ctx ends.
func WaitReady(ctx context.Context, socket string, exited <-chan struct{}) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	defer hc.CloseIdleConnections()
	var last string
	err := wait.PollUntilContextCancel(ctx, 10*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-exited:
			return false, errors.New("the agent exited before it was ready")
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://leasehold/readyz", nil)
		if err != nil {
			return false, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("the agent on %s was not ready (last answer: %s): %w", socket, last, ctx.Err())
	}
	return err
}

// Signal sends s to the agent unless it has ended.
func (a *Agent) Signal(s syscall.Signal) {
	select {
	case <-a.Exited:
	default:
		_ = a.Cmd.Process.Signal(s)
	}
}

// Stop sends SIGTERM (the agent releases its holds) and waits for the exit, at most
// 10 s before SIGKILL.
func (a *Agent) Stop() {
	a.Signal(syscall.SIGTERM)
	select {
	case <-a.Exited:
	case <-time.After(10 * time.Second):
		a.Signal(syscall.SIGKILL)
		<-a.Exited
	}
}

// Log is what the agent wrote so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.log)
	return string(b)
}
