package chaos_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/chaos"
	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/api"
)

// The test ground: one real kube-apiserver + etcd (envtest) whose API server can be
// restarted on the same port with the same certificates, and the agent binary built
// from this tree.
var (
	env      *envtest.Environment
	restCfg  *rest.Config
	agentBin string
)

// Timings of the agents: short, so that faults resolve in seconds.
//
// The grace period, 4 x lease-duration (12s), must outlast every outage of the whole
// control plane that the suite makes, with room for the renewal to land after it: a
// blip-long lasts at most lease-duration + chaos.MaxExtra (6s), and a kube-apiserver
// restart here takes 4-5s to exit (up to apiServerStopGrace, then killed) and 3s to be
// ready (about 7s, more under the load of `make unit`). A hold in jeopardy is lost at
// renew-deadline + grace after its last write, so up to 14s of outage can be ridden
// out. A shorter grace would turn a slow restart into lost holds that say nothing about
// the engine; a longer one would change nothing that the suite checks (a Pod cut off
// alone is replaced after lease-duration whatever its grace: its waiters still see the
// API server) but let a hold in jeopardy after a restart that failed linger longer.
const (
	leaseDuration = 3 * time.Second
	renewDeadline = 2 * time.Second
	retryPeriod   = 250 * time.Millisecond
	grace         = 4 * leaseDuration
)

func TestMain(m *testing.M) {
	if os.Getenv(chaos.ClientEnv) == "1" {
		// A client loop: this binary re-executed by the harness.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		err := chaos.RunClientFromEnv(ctx)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "client loop:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "leasehold-chaos-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	agentBin = filepath.Join(dir, "leasehold-agent")
	if err := testenv.BuildBinaries(dir, false, "github.com/leasehold/leasehold/cmd/leasehold-agent"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env, err = testenv.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// A certificate directory of our own: envtest then keeps the API server's serving
	// certificate across a restart (with its own temporary directory it would make a new
	// CA, which the agents' kubeconfigs do not trust), and the restart keeps the port.
	certs := filepath.Join(dir, "apiserver")
	if err := os.Mkdir(certs, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: certs}
	env.ControlPlaneStopTimeout = apiServerStopGrace
	env.ControlPlaneStartTimeout = time.Minute // a restart under `make unit`'s load
	restCfg, err = env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	// Interrupted (Ctrl-C, a timeout's SIGTERM): stop what we started before dying.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		chaos.KillAll()
		_ = env.Stop()
		os.RemoveAll(dir)
		fmt.Fprintln(os.Stderr, "chaos test: stopped by", s)
		os.Exit(1)
	}()
	return m.Run()
}

// restartAPIServer stops kube-apiserver and starts it again on the same port; etcd
// keeps running. kube-apiserver stops listening at once on SIGTERM but, with the agents'
// watches open, may not exit for long: after apiServerStopGrace envtest kills it, as a
// kubelet would at the end of a grace period.
func restartAPIServer() (string, error) {
	as := env.ControlPlane.APIServer
	start := time.Now()
	stopErr := as.Stop()
	stopped := time.Since(start)
	addr := as.SecureServing.ListenAddr.HostPort()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		return "", fmt.Errorf("kube-apiserver still listens on %s after stop (%v)", addr, stopErr)
	}
	how := "exited on SIGTERM"
	if stopErr != nil {
		how = "killed after the grace period"
	}
	start = time.Now()
	if err := as.Start(); err != nil {
		return "", fmt.Errorf("start kube-apiserver again: %w", err)
	}
	return fmt.Sprintf("stopped in %s (%s), ready again in %s", stopped.Round(time.Millisecond), how, time.Since(start).Round(time.Millisecond)), nil
}

// apiServerStopGrace is how long a restart waits for kube-apiserver to exit on SIGTERM.
const apiServerStopGrace = 5 * time.Second

// settings reads CHAOS_DURATION and CHAOS_SEED.
func settings(t *testing.T) (time.Duration, uint64) {
	dur := 60 * time.Second
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("CHAOS_DURATION=%q: want a positive Go duration such as 60s or 30m", v)
		}
		dur = d
	}
	seed := rand.Uint64() >> 1
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: want a non-negative integer", v)
		}
		seed = s
	}
	return dur, seed
}

// TestChaos runs agents and their client loops under seeded, randomized faults and
// checks the recorded history (see the package doc).
func TestChaos(t *testing.T) {
	dur, seed := settings(t)
	t.Logf("chaos: CHAOS_SEED=%d CHAOS_DURATION=%s (replay with CHAOS_SEED=%d)", seed, dur, seed)
	dir, err := os.MkdirTemp("", "leasehold-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	clients := []int{2, 1, 1} // two loops share the first agent: local handover under tokens
	cfg := chaos.Config{
		Seed: seed, Duration: dur, Settle: 2*leaseDuration + 3*time.Second,
		Clients: clients, AgentBinary: agentBin, ClientCommand: []string{os.Args[0]},
		Dir: dir, Rest: restCfg, RestartAPIServer: restartAPIServer, Namespace: "default",
		Mutex: "chaos-mutex", Leader: "chaos-leader", Semaphore: "chaos-sem", SemaphoreSize: 2,
		LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod, Grace: grace,
		Logf: t.Logf,
	}
	h, err := chaos.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Minute)
	defer cancel()
	recs, err := h.Run(ctx)
	if err != nil {
		t.Fatalf("seed %d: the run did not complete: %v (histories and logs kept in %s)", seed, err, dir)
	}
	elapsed := time.Since(start)
	ccfg := chaos.CheckConfig{
		Mutex: cfg.Mutex, Leader: cfg.Leader, Semaphore: cfg.Semaphore, RenewDeadline: renewDeadline,
		MinAcquisitions: max(5, int(dur/(4*time.Second))),
		StaleReason:     api.ReasonStaleToken,
	}
	res := chaos.Check(recs, ccfg)
	info := chaos.RunInfo{
		Command: "go test ./internal/testing/chaos/", Seed: seed, Duration: dur, Elapsed: elapsed,
		Agents: len(clients), Clients: clients[0] + clients[1] + clients[2],
		Timings: fmt.Sprintf("lease-duration %s, renew-deadline %s, retry-period %s, grace %s", leaseDuration, renewDeadline, retryPeriod, grace),
	}
	if os.Getenv("CHAOS_COMMAND") != "" {
		info.Command = os.Getenv("CHAOS_COMMAND")
	}
	summary := chaos.Summary(info, res)
	t.Logf("chaos: seed %d\n%s", seed, summary)
	if out := os.Getenv("LEASEHOLD_RELIABILITY_OUT"); out != "" {
		if err := chaos.WriteReport(out, summary); err != nil {
			t.Errorf("write %s: %v", out, err)
		}
	}
	for i, v := range res.Violations {
		if i == 5 {
			t.Errorf("... and %d more violations", len(res.Violations)-5)
			break
		}
		t.Errorf("seed %d (replay: CHAOS_SEED=%d): property %q violated: %s\nhistory around it:\n%s",
			seed, seed, v.Property, v.Message, chaos.Excerpt(recs, v, 60))
	}
	for _, k := range chaos.FaultKinds {
		if res.Faults[k] == 0 {
			t.Errorf("seed %d: no %s fault completed: every kind must be exercised (the failed attempts are in the history)", seed, k)
		}
	}
	if t.Failed() {
		t.Logf("histories (history/*.jsonl) and process logs (logs/) kept in %s", dir)
		return
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
}

// The histories a run leaves can be checked again: go test -run TestCheckDir with
// CHAOS_CHECK_DIR=/tmp/leasehold-chaos-....
func TestCheckDir(t *testing.T) {
	dir := os.Getenv("CHAOS_CHECK_DIR")
	if dir == "" {
		return
	}
	recs, err := chaos.ReadDir(filepath.Join(dir, "history"))
	if err != nil {
		t.Fatal(err)
	}
	recs = chaos.Merge(recs)
	res := chaos.Check(recs, chaos.CheckConfig{Mutex: "chaos-mutex", Leader: "chaos-leader", Semaphore: "chaos-sem", RenewDeadline: renewDeadline})
	for _, v := range res.Violations {
		t.Errorf("property %q violated: %s\n%s", v.Property, v.Message, chaos.Excerpt(recs, v, 60))
	}
	t.Log(strings.TrimSpace(chaos.Summary(chaos.RunInfo{Command: "re-check of " + dir}, res)))
}
