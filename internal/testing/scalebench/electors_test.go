//go:build scalebench

package scalebench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// The client-go side of the comparison runs in a helper process: this test binary,
// started again with these variables set, runs n client-go leader electors (one per
// simulated Pod, groups of three on one Lease, 15s/10s/2s), each with its own client
// and connection, until SIGTERM.
const (
	envElectors   = "LEASEHOLD_SCALE_ELECTORS"
	envNamespace  = "LEASEHOLD_SCALE_NAMESPACE"
	envKubeconfig = "LEASEHOLD_SCALE_KUBECONFIG"
)

func TestMain(m *testing.M) {
	if n := os.Getenv(envElectors); n != "" {
		os.Exit(runElectors(n))
	}
	os.Exit(m.Run())
}

func runElectors(count string) int {
	n, err := strconv.Atoi(count)
	if err != nil {
		fmt.Fprintln(os.Stderr, envElectors, err)
		return 2
	}
	ns, kc := os.Getenv(envNamespace), os.Getenv(envKubeconfig)
	base, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	done := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		cfg := *base
		// A dialer of its own gives each elector its own transport, hence its own
		// connection, like one Pod.
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		cfg.Dial = d.DialContext
		cfg.UserAgent = "client-go-elector"
		cs := kubernetes.NewForConfigOrDie(&cfg)
		id := fmt.Sprintf("cg-%d-%04d", n, i)
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Namespace: ns, Name: leaderName(i / groupSize)}, Client: cs.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: id}},
			LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
			Callbacks: leaderelection.LeaderCallbacks{OnStartedLeading: func(context.Context) {}, OnStoppedLeading: func() {}},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		go func() { le.Run(ctx); done <- struct{}{} }()
	}
	for i := 0; i < n; i++ {
		<-done
	}
	return 0
}

// electors is the helper process running n client-go electors.
type electors struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startElectors(t testing.TB, kubeconfig, ns, logPath string, n int) *electors {
	t.Helper()
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envElectors+"="+strconv.Itoa(n), envNamespace+"="+ns, envKubeconfig+"="+kubeconfig)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	renice(t, cmd.Process.Pid)
	e := &electors{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(e.done) }()
	t.Cleanup(e.stop)
	return e
}

func (e *electors) stop() {
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(15 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.done
	}
}
