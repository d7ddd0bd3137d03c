package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/agent"
	"github.com/leasehold/leasehold/sidecar/lock"
	"github.com/leasehold/leasehold/webhook"
)

// startInjectedAgent starts the agent as the webhook injects it into pod, with the
// metrics on metricsAddr (loopback only, in a test), and waits until it is ready.
func startInjectedAgent(t *testing.T, pod *corev1.Pod, metricsAddr string) *injectedAgent {
	t.Helper()
	a := launchInjectedAgent(t, pod, "00000000-0000-0000-0000-00000000f100", func(arg string) string {
		if strings.HasPrefix(arg, "--metrics-bind-address=") {
			return "--metrics-bind-address=" + metricsAddr
		}
		return arg
	})
	a.waitReady(20 * time.Second)
	return a
}

// peakRSS is the process's peak resident set (VmHWM in /proc/PID/status), bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// raiseOpenFiles raises this process's open-file limit to at least n (the hard limit
// allowing), for tests that hold many connections.
func raiseOpenFiles(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("the open-file hard limit is %d, the test needs %d", lim.Max, n)
	}
	old := lim
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// TestMetricsFloodLeavesTheAgentAlive: any Pod of the cluster can connect to an agent's
// metrics port. 5,000 connections that each send one GET /metrics and then stay open
// (what took an agent to 173 MiB, past its 64 Mi limit, and in a Pod to an OOM kill
// and the loss of its holds) leave the agent, started as the webhook injects it, under
// its memory limit; its lock API answers every call meanwhile; its hold is never lost
// (held all along, same fencing token); and its metrics serve again once they leave.
func TestMetricsFloodLeavesTheAgentAlive(t *testing.T) {
	const conns = 5000
	raiseOpenFiles(t, conns+1000)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-flood", Namespace: "default",
			Annotations: map[string]string{webhook.AnnotationLeader: "flood-leader"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	a := startInjectedAgent(t, pod, metricsAddr)
	if a.limit != 64<<20 {
		t.Fatalf("the webhook's default agent memory limit is %d bytes; this test measures against 64 Mi", a.limit)
	}
	// The agent took its Go memory limit from the limit the webhook passed it.
	if b, _ := os.ReadFile(a.log); !strings.Contains(string(b), fmt.Sprintf(`"msg":"Set the Go memory limit","bytes":%d`, int64(float64(a.limit)*agent.MemoryLimitFraction))) {
		t.Errorf("the agent did not log its Go memory limit as %v of %d bytes", agent.MemoryLimitFraction, a.limit)
	}
	ctx := context.Background()
	before := waitState(t, a.agentProc, "flood-leader", 20*time.Second, "held", func(s lock.State) bool { return s.Held })

	// The lock API, asked all along the flood: every call must be answered, held, with
	// the same token.
	stop := make(chan struct{})
	var asked, failed atomic.Int64
	var firstFailure atomic.Value
	var askers sync.WaitGroup
	askers.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			s, err := a.c.State(actx, "flood-leader")
			cancel()
			asked.Add(1)
			if err != nil || !s.Held || s.Token != before.Token {
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, fmt.Sprintf("%+v %v", s, err))
			}
		}
	})

	// The flood: conns connections from loopback, each sends one GET /metrics and then
	// stays open, not reading, for as long as the test lasts.
	open := make(chan net.Conn, conns)
	var dialErrs atomic.Int64
	var dialers sync.WaitGroup
	jobs := make(chan struct{}, conns)
	for range conns {
		jobs <- struct{}{}
	}
	close(jobs)
	began := time.Now()
	for range 50 {
		dialers.Go(func() {
			for range jobs {
				c, err := net.DialTimeout("tcp", metricsAddr, 10*time.Second)
				if err != nil {
					dialErrs.Add(1)
					continue
				}
				_, _ = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n") // a refused one may be closed already
				open <- c
			}
		})
	}
	dialers.Wait()
	close(open)
	t.Logf("%d connections opened in %s (%d dials failed)", len(open), time.Since(began).Round(time.Millisecond), dialErrs.Load())
	if n := dialErrs.Load(); n > 0 {
		t.Errorf("%d of %d dials failed: the flood was not the one measured", n, conns)
	}
	// Held open a while: what the agent would do with them, it has done by now (it
	// kept each for 90 s before).
	time.Sleep(5 * time.Second)
	select {
	case <-a.exited:
		t.Fatalf("the agent exited during the flood")
	default:
	}
	peak := peakRSS(t, a.cmd.Process.Pid)
	for c := range open {
		c.Close()
	}
	close(stop)
	askers.Wait()

	t.Logf("agent peak RSS %.1f MiB (limit %d MiB); lock API asked %d times during the flood, %d failed",
		float64(peak)/(1<<20), a.limit>>20, asked.Load(), failed.Load())
	if raceDetector {
		t.Log("under the race detector the agent's memory is not measured (it takes 5-10 times as much)")
	} else if peak >= a.limit {
		t.Errorf("the agent's peak RSS is %.1f MiB, at or past its %d MiB limit: in a Pod the kernel would have killed it", float64(peak)/(1<<20), a.limit>>20)
	}
	if asked.Load() == 0 || failed.Load() > 0 {
		t.Errorf("the lock API during the flood: %d of %d calls failed or did not say held with token %d (first: %v)",
			failed.Load(), asked.Load(), before.Token, firstFailure.Load())
	}
	after, err := a.c.State(ctx, "flood-leader")
	if err != nil || !after.Held || after.Token != before.Token {
		t.Errorf("after the flood: %+v %v, want held with token %d", after, err, before.Token)
	}

	// Once the flood is gone, a scraper is served again.
	var last string
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			last = err.Error()
			return false, nil
		}
		body, _ := io.ReadAll(bufio.NewReader(resp.Body))
		resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(body), "leasehold_"), nil
	}); err != nil {
		t.Fatalf("metrics not served 10s after the flood: %s", last)
	}
}
