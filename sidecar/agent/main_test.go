package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/client"
	"github.com/leasehold/leasehold/sidecar/lock"
	"github.com/leasehold/leasehold/webhook"
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

// testParallel is how many tests of this package run at once unless -parallel is
// given. They share one control plane (each with its own Pods, Lease names or
// namespace) and spend their time waiting (on lease-duration, retry periods, agent
// processes), not computing, so more run at once than go test's default -parallel
// (GOMAXPROCS, 2 on a 2-CPU machine). A test that measures the agent alone (memory
// under a flood) or changes what the whole API server admits does not call t.Parallel.
const testParallel = 8

// setParallel sets -parallel to testParallel when the command line does not set it;
// under the race detector, whose agents take several times the CPU and memory, half.
func setParallel() {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if given {
		return
	}
	n := testParallel
	if raceDetector {
		n /= 2
	}
	_ = flag.Set("test.parallel", strconv.Itoa(n))
}

func runMain(m *testing.M) int {
	setParallel()
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
	proc   *testenv.Agent
	cmd    *exec.Cmd
	c      *client.Client
	log    string
	exited chan struct{}
}

var podSeq struct {
	sync.Mutex
	n int
}

// startAgent starts an agent process for a new Pod (testenv.LaunchAgent, the helper
// every test that starts an agent uses) and waits until it is ready.
func startAgent(t testing.TB, pod string, args ...string) *agentProc {
	t.Helper()
	podSeq.Lock()
	podSeq.n++
	uid := fmt.Sprintf("00000000-0000-0000-0000-%012d", podSeq.n)
	podSeq.Unlock()
	dir := t.TempDir()
	bin := filepath.Join(binDir, "leasehold-agent")
	if agentBin != "" {
		bin = agentBin
	}
	spec := testenv.AgentSpec{Binary: bin, Pod: pod, UID: uid, Socket: filepath.Join(dir, "agent.sock"),
		Kubeconfig: kubeconfig, Log: filepath.Join(dir, "agent.log"),
		Args: append([]string{"--lease-duration=" + leaseDuration.String(), "--renew-deadline=" + renewDeadline.String(),
			"--retry-period=" + retryPeriod.String(), "-v=1"}, args...)}
	a := launchAgent(t, spec)
	a.pod, a.uid = pod, uid
	if os.Getenv("LEASEHOLD_TEST_NO_WAIT_READY") == pod {
		return a
	}
	a.waitReady(15 * time.Second)
	return a
}

// launchAgent starts the agent of spec without waiting for it to be ready. When the
// test ends the agent is killed; a data race it reported (under `make race`) fails the
// test, and a failed test shows the agent's log.
func launchAgent(t testing.TB, spec testenv.AgentSpec) *agentProc {
	t.Helper()
	p, err := testenv.LaunchAgent(spec)
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	a := &agentProc{t: t, pod: spec.Pod, uid: spec.UID, socket: spec.Socket, proc: p, cmd: p.Cmd, log: spec.Log, exited: p.Exited}
	t.Cleanup(func() {
		a.signal(syscall.SIGKILL)
		<-a.exited
		b, _ := os.ReadFile(a.log)
		if bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("agent %s: the race detector found a data race", a.pod)
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", a.pod, b)
		}
	})
	a.c = client.New(a.socket, "")
	return a
}

// waitReady waits until the agent answers /readyz with 200, at most within.
func (a *agentProc) waitReady(within time.Duration) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := a.proc.WaitReady(ctx); err != nil {
		a.t.Fatalf("agent %s: %v (exit: %v)\n%s", a.pod, err, a.err(), a.proc.Log())
	}
}

// err is the agent's exit, once exited is closed.
func (a *agentProc) err() error {
	select {
	case <-a.exited:
		return a.proc.Err
	default:
		return nil
	}
}

func (a *agentProc) identity() string { return a.pod + "_" + a.uid }

func (a *agentProc) signal(s syscall.Signal) { a.proc.Signal(s) }

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

// waitState waits until the lock's state at a satisfies cond, at most within, and
// returns it. The lock's events stream wakes it at each change and the state is asked
// again then (and every 250 ms, for a change that has no event of its own), so a
// change is seen at once without asking in a loop.
func waitState(t *testing.T, a *agentProc, name string, within time.Duration, what string, cond func(lock.State) bool) lock.State {
	t.Helper()
	events := streamEvents(t, a, name)
	deadline := time.After(within)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		s := a.state(name)
		if cond(s) {
			return s
		}
		select {
		case _, ok := <-events:
			if !ok {
				events = nil // the stream ended: the ticker goes on
			}
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s of %s: not %s after %s: %+v", name, a.pod, what, within, s)
		}
	}
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

// injectedAgent is an agent process started exactly as the webhook injects it into a
// Pod: its command, arguments and environment, the downward API resolved as the
// kubelet would, the socket volume moved into a temporary directory.
type injectedAgent struct {
	*agentProc
	container corev1.Container  // the injected agent container
	pod       *corev1.Pod       // the Pod after injection
	kubelet   *strings.Replacer // resolves the container's paths and downward API
	limit     int64             // the container's memory limit, bytes
}

// launchInjectedAgent injects pod (in namespace default, with UID uid) and launches its
// agent container with the API server of the test ground; edit, when set, rewrites
// each argument after the kubelet resolved it; extra are flags added at the end. It
// does not wait for the agent to serve.
func launchInjectedAgent(t *testing.T, pod *corev1.Pod, uid string, edit func(string) string, extra ...string) *injectedAgent {
	t.Helper()
	cfg, errs := webhook.ParseAnnotations(pod.Annotations)
	if len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	if errs := webhook.Inject(pod, cfg, webhook.DefaultOptions()); len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	c := pod.Spec.InitContainers[0]
	dir := t.TempDir()
	a := &injectedAgent{container: c, pod: pod, limit: c.Resources.Limits.Memory().Value(),
		kubelet: strings.NewReplacer(webhook.SocketDir, dir, "$(POD_NAMESPACE)", "default", "$(POD_NAME)", pod.Name,
			"$(POD_UID)", uid, webhook.AgentBinary, filepath.Join(binDir, "leasehold-agent"))}
	command := []string{a.kubelet.Replace(c.Command[0])}
	for _, arg := range c.Args {
		arg = a.kubelet.Replace(arg)
		if edit != nil {
			arg = edit(arg)
		}
		command = append(command, arg)
	}
	command = append(command, "--kubeconfig="+kubeconfig)
	command = append(command, extra...)
	env := []string{"PATH=" + os.Getenv("PATH")} // the image's
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+a.kubelet.Replace(e.Value))
		case e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory":
			env = append(env, e.Name+"="+strconv.FormatInt(a.limit, 10)) // divisor 1
		}
	}
	a.agentProc = launchAgent(t, testenv.AgentSpec{Command: command, Env: env, Pod: pod.Name, UID: uid,
		Socket: a.kubelet.Replace(webhook.SocketPath), Log: filepath.Join(dir, "agent.log")})
	return a
}
