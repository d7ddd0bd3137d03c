//go:build scalebench

package scalebench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/client"
)

// Each simulated Pod is one of a group of three (a Deployment's replicas): the group
// shares a leader lock, held by one of them, and a mutex the benchmark takes and hands
// over. Default timings (15s/10s/2s).
const groupSize = 3

func leaderName(g int) string { return fmt.Sprintf("lead-%d", g) }
func mutexName(g int) string  { return fmt.Sprintf("mx-%d", g) }

type agent struct {
	i        int
	pod, uid string
	socket   string
	log      string
	cmd      *exec.Cmd
	done     chan struct{}
	c        *client.Client
}

func (a *agent) identity() string { return a.pod + "_" + a.uid }

// fleet is the agent processes of one step.
type fleet struct {
	t         testing.TB
	ns        string
	agents    []*agent
	groups    int
	started   time.Time // before the first exec
	execDone  time.Time // after the last
	stoppedMu sync.Once
}

// startFleet starts n agents in namespace ns at once (one exec after the other, no
// waiting), each with its own socket, log, Pod name and UID.
func startFleet(t testing.TB, bin, kubeconfig, dir, ns string, n int, extra ...string) *fleet {
	t.Helper()
	f := &fleet{t: t, ns: ns, groups: (n + groupSize - 1) / groupSize}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.stop)
	f.started = time.Now()
	for i := 0; i < n; i++ {
		g := i / groupSize
		a := &agent{i: i, pod: fmt.Sprintf("app-%d-%04d", n, i), uid: fmt.Sprintf("00000000-0000-4000-8000-%012d", n*10000+i),
			socket: filepath.Join(dir, fmt.Sprintf("a%d.sock", i)), log: filepath.Join(dir, fmt.Sprintf("a%d.log", i)), done: make(chan struct{})}
		// The command line of testenv's one agent helper; the process is started here
		// and its log closed at once (1,000 agents would hold 1,000 open files).
		argv := testenv.AgentSpec{Binary: bin, Namespace: ns, Pod: a.pod, UID: a.uid, Socket: a.socket, Kubeconfig: kubeconfig,
			Args: append([]string{"--install-cli=false", "-v=1", "--leader=" + leaderName(g), "--locks=" + mutexName(g)}, extra...)}.Argv()
		out, err := os.Create(a.log)
		if err != nil {
			t.Fatal(err)
		}
		a.cmd = exec.Command(argv[0], argv[1:]...)
		a.cmd.Stdout, a.cmd.Stderr = out, out
		// Its own process group (a signal to the benchmark's group does not reach it
		// twice), and killed with the benchmark if that dies first.
		a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := a.cmd.Start(); err != nil {
			out.Close()
			t.Fatalf("start agent %d: %v", i, err)
		}
		out.Close()
		renice(t, a.cmd.Process.Pid)
		go func() { _ = a.cmd.Wait(); close(a.done) }()
		a.c = client.New(a.socket, "")
		f.agents = append(f.agents, a)
	}
	f.execDone = time.Now()
	return f
}

// stop sends SIGTERM to every agent (each releases its holds) and waits, at most 20 s
// before SIGKILL.
func (f *fleet) stop() {
	f.stoppedMu.Do(func() {
		for _, a := range f.agents {
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
		}
		deadline := time.After(20 * time.Second)
		for _, a := range f.agents {
			select {
			case <-a.done:
			case <-deadline:
				for _, b := range f.agents {
					_ = b.cmd.Process.Kill()
				}
				<-a.done
			}
			a.c.CloseIdleConnections()
		}
	})
}

func (f *fleet) pids() []int {
	out := make([]int, 0, len(f.agents))
	for _, a := range f.agents {
		out = append(out, a.cmd.Process.Pid)
	}
	return out
}

// exited lists the agents that are no longer running, with the end of their log.
func (f *fleet) exited() []string {
	var out []string
	for _, a := range f.agents {
		select {
		case <-a.done:
			out = append(out, fmt.Sprintf("%s: %v", a.pod, a.cmd.ProcessState))
		default:
		}
	}
	return out
}

// logLine is the part of an agent's JSON log line the benchmark reads.
type logLine struct {
	TS     time.Time `json:"ts"`
	Msg    string    `json:"msg"`
	Lock   string    `json:"lock"`
	Reason string    `json:"reason"`
	Err    string    `json:"err"`
}

// agentLog is what one agent's log says.
type agentLog struct {
	ready    time.Time
	acquired map[string][]time.Time
	lost     []logLine
	jeopardy []logLine // "Lock in jeopardy"
	safe     []logLine // "Lock safe again"
	watchErr []logLine
	renewErr []logLine
}

func readLog(path string) agentLog {
	out := agentLog{acquired: map[string][]time.Time{}}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 256<<10), 256<<10)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Msg {
		case "Became ready":
			if out.ready.IsZero() {
				out.ready = l.TS
			}
		case "Acquired lock":
			out.acquired[l.Lock] = append(out.acquired[l.Lock], l.TS)
		case "Lost lock":
			out.lost = append(out.lost, l)
		case "Lock in jeopardy":
			out.jeopardy = append(out.jeopardy, l)
		case "Lock safe again":
			out.safe = append(out.safe, l)
		case "Failed to watch lease":
			out.watchErr = append(out.watchErr, l)
		case "Failed to renew lease":
			out.renewErr = append(out.renewErr, l)
		}
	}
	return out
}

func (f *fleet) logs() []agentLog {
	out := make([]agentLog, len(f.agents))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, a := range f.agents {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = readLog(a.log)
		})
	}
	wg.Wait()
	return out
}

// coldStart is when the fleet got ready and its leader locks held, after f.started.
type coldStart struct {
	execs             time.Duration
	allReady, allHeld time.Duration
	readyP50          time.Duration
	notReady, notHeld int
}

func (f *fleet) coldStart(logs []agentLog) coldStart {
	cs := coldStart{execs: f.execDone.Sub(f.started)}
	var ready []time.Duration
	for _, l := range logs {
		if l.ready.IsZero() {
			cs.notReady++
			continue
		}
		ready = append(ready, l.ready.Sub(f.started))
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i] < ready[j] })
	if len(ready) > 0 {
		cs.allReady = ready[len(ready)-1]
		cs.readyP50 = ready[len(ready)/2]
	}
	for g := 0; g < f.groups; g++ {
		var first time.Time
		for i := g * groupSize; i < min(len(logs), (g+1)*groupSize); i++ {
			if ts := logs[i].acquired[leaderName(g)]; len(ts) > 0 && (first.IsZero() || ts[0].Before(first)) {
				first = ts[0]
			}
		}
		if first.IsZero() {
			cs.notHeld++
			continue
		}
		cs.allHeld = max(cs.allHeld, first.Sub(f.started))
	}
	return cs
}

// handover measures, in up to n groups one after another, the time from a mutex's
// release by one agent to the moment the waiting acquire of another agent of the group
// is answered.
func (f *fleet) handover(n int) ([]time.Duration, error) {
	ctx := context.Background()
	var out []time.Duration
	for k := 0; k < n; k++ {
		g := (k * 7) % (len(f.agents) / groupSize) // spread over the fleet's full groups
		a, b := f.agents[g*groupSize], f.agents[g*groupSize+1]
		s, err := a.c.Acquire(ctx, mutexName(g), 10*time.Second, 0)
		if err != nil {
			return out, fmt.Errorf("group %d: acquire: %w", g, err)
		}
		type res struct {
			at    time.Time
			token int64
			err   error
		}
		got := make(chan res, 1)
		go func() {
			s, err := b.c.Acquire(ctx, mutexName(g), 20*time.Second, 0)
			got <- res{time.Now(), s.Token, err}
		}()
		time.Sleep(100 * time.Millisecond) // the waiter is queued on its watch
		t0 := time.Now()
		if _, err := a.c.Release(ctx, mutexName(g), s.Token); err != nil {
			return out, fmt.Errorf("group %d: release: %w", g, err)
		}
		r := <-got
		if r.err != nil {
			return out, fmt.Errorf("group %d: waiting acquire: %w", g, r.err)
		}
		out = append(out, r.at.Sub(t0))
		if _, err := b.c.Release(ctx, mutexName(g), r.token); err != nil {
			return out, fmt.Errorf("group %d: release: %w", g, err)
		}
	}
	return out, nil
}
