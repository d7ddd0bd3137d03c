package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/client"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// The test ground shared by the tests of this package: one real kube-apiserver + etcd
// (envtest), the agent and client binaries built from this tree, and a kubeconfig.
var (
	env        *envtest.Environment
	restCfg    *rest.Config
	kube       kubernetes.Interface
	binDir     string
	kubeconfig string
)

// Timings of the agents in tests: short so that expiry tests take seconds.
const (
	leaseDuration = 3 * time.Second
	renewDeadline = 2 * time.Second
	retryPeriod   = 250 * time.Millisecond
)

// raceDetector is set by race_test.go when the tests run with -race (`make race`).
var raceDetector bool

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "leasehold-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	// Under `make race` the agent processes run with the race detector too, and a race
	// they report fails the test that started them (see agentProc's cleanup).
	if err := testenv.BuildBinaries(dir, raceDetector,
		"github.com/leasehold/leasehold/cmd/leasehold-agent", "github.com/leasehold/leasehold/cmd/leasehold"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env, err = testenv.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	restCfg, err = env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	kube = kubernetes.NewForConfigOrDie(restCfg)
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, restCfg.Host); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// writeKubeconfig writes the envtest admin credentials with server host.
func writeKubeconfig(path, host string) error {
	return testenv.WriteKubeconfig(path, host, restCfg)
}

// agentProc is one agent process, as in one Pod.
type agentProc struct {
	t      testing.TB
	pod    string
	uid    string
	socket string
	cmd    *exec.Cmd
	c      *client.Client
	log    string
	exited chan struct{}
	err    error
}

var podSeq struct {
	sync.Mutex
	n int
}

// startAgent starts an agent process for a new Pod and waits until it is ready.
func startAgent(t testing.TB, pod string, args ...string) *agentProc {
	t.Helper()
	podSeq.Lock()
	podSeq.n++
	uid := fmt.Sprintf("00000000-0000-0000-0000-%012d", podSeq.n)
	podSeq.Unlock()
	dir := t.TempDir()
	a := &agentProc{t: t, pod: pod, uid: uid, socket: filepath.Join(dir, "agent.sock"), log: filepath.Join(dir, "agent.log"), exited: make(chan struct{})}
	full := append([]string{
		"--namespace=default", "--pod-name=" + pod, "--pod-uid=" + uid,
		"--lease-duration=" + leaseDuration.String(), "--renew-deadline=" + renewDeadline.String(),
		"--retry-period=" + retryPeriod.String(), "--socket=" + a.socket, "--kubeconfig=" + kubeconfig,
		"--metrics-bind-address=0", "-v=1",
	}, args...)
	bin := filepath.Join(binDir, "leasehold-agent")
	if agentBin != "" {
		bin = agentBin
	}
	a.cmd = exec.Command(bin, full...)
	f, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func() { a.err = a.cmd.Wait(); f.Close(); close(a.exited) }()
	t.Cleanup(func() {
		a.signal(syscall.SIGKILL)
		<-a.exited
		b, _ := os.ReadFile(a.log)
		if bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("agent %s: the race detector found a data race", pod)
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", pod, b)
		}
	})
	a.c = client.New(a.socket, "")
	if os.Getenv("LEASEHOLD_TEST_NO_WAIT_READY") == pod {
		return a
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, _, err := a.c.Get(context.Background(), "/readyz")
		if err == nil && code == 200 {
			return a
		}
		select {
		case <-a.exited:
			b, _ := os.ReadFile(a.log)
			t.Fatalf("agent %s exited before ready: %v\n%s", pod, a.err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s not ready after 15s (last: %d %v)", pod, code, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *agentProc) identity() string { return a.pod + "_" + a.uid }

func (a *agentProc) signal(s syscall.Signal) {
	select {
	case <-a.exited:
	default:
		_ = a.cmd.Process.Signal(s)
	}
}

func (a *agentProc) state(name string) lock.State {
	a.t.Helper()
	s, err := a.c.State(context.Background(), name)
	if err != nil {
		a.t.Fatalf("state of %s at %s: %v", name, a.pod, err)
	}
	return s
}

// status returns the status code of an error from the client (0 for nil).
func status(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(*client.Error); ok {
		return e.Status
	}
	return -1
}

var _ = io.EOF

type netConn = net.Conn

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "unix", path)
}

// streamEvents follows the lock's server-sent events; the channel carries event names.
func streamEvents(t *testing.T, a *agentProc, name string) <-chan string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://leasehold/v1/locks/"+name+"/events", nil)
	resp, err := clientFor(a).Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("events of %s: %v %v", name, resp, err)
	}
	ch := make(chan string, 64)
	go func() {
		defer resp.Body.Close()
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if ev, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				ch <- ev
			}
		}
	}()
	return ch
}

func waitEvent(ch <-chan string, want lock.EventType, timeout time.Duration) bool {
	t := time.After(timeout)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return false
			}
			if ev == string(want) {
				return true
			}
		case <-t:
			return false
		}
	}
}
