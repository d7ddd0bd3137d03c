package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// Config configures a run.
type Config struct {
	// Seed seeds the fault schedule and the client loops' choices.
	Seed uint64
	// Duration is how long faults are injected (longer if that is what it takes for
	// every kind to run once); Settle how long the run goes on after they are healed
	// (the locks must change hands again then).
	Duration, Settle time.Duration
	// Clients is the number of client loops per agent: len(Clients) agents.
	Clients []int
	// AgentBinary is the leasehold-agent binary; ClientCommand the command line that
	// runs a client loop (the test binary, which calls RunClientFromEnv when
	// $LEASEHOLD_CHAOS_CLIENT is set).
	AgentBinary   string
	ClientCommand []string
	// Dir receives the histories (Dir/history/*.jsonl), logs and sockets.
	Dir string
	// Rest is the admin configuration of the API server: the agents get its
	// credentials, each through its own proxy; the harness uses it as the third party.
	Rest *rest.Config
	// RestartAPIServer stops kube-apiserver and starts it again on the same address,
	// with the same certificates, leaving etcd alone.
	// It returns a line that says how it went.
	RestartAPIServer func() (string, error)
	Namespace        string
	// Mutex and Leader are the lock names.
	Mutex, Leader string
	// Semaphore, when set, is a counting lock of SemaphoreSize slots that every agent
	// declares and every client process takes in a second loop.
	Semaphore                                 string
	SemaphoreSize                             int
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Grace is the agents' grace period (--grace): how long a hold may stay in
	// jeopardy after renew-deadline while the API server is unavailable, and still
	// resume with its token. It must be longer than the longest blip-long
	// (lease-duration + MaxExtra); 0 leaves the agents' default.
	Grace time.Duration
	// Logf reports progress (t.Logf).
	Logf func(format string, args ...any)
}

// Harness runs agents and client loops as processes, the fenced store, and the faults.
type Harness struct {
	cfg   Config
	admin kubernetes.Interface
	hist  string
	logs  string
	store *Store
	flog  *Log // faults and stale calls of the injector
	hlog  *Log // the harness: exits, panics, settle, end
	slog  *Log // the store's decisions
	slots []*slot

	mu      sync.Mutex
	procs   map[*proc]struct{}
	uids    int
	closed  bool
	started int64
}

// slot is one place of an agent (one Pod at a time) with its proxy, socket and clients.
type slot struct {
	i          int
	proxy      *testenv.Proxy
	kubeconfig string
	socket     string
	inc        int // incarnation: a new Pod after a kill
	pod, uid   string
	agent      *proc
	clients    []*proc
	// started is when the slot's agent process was started (wall clock): a Lease it
	// renewed before then is a previous incarnation's (a restarted container).
	started time.Time
	http    *http.Client
}

func (s *slot) identity() string { return s.pod + "_" + s.uid }

// proc is one process the harness started.
type proc struct {
	name     string
	log      string
	cmd      *exec.Cmd
	exited   chan struct{}
	err      error
	expected atomic.Bool
}

// live holds every process any harness started, for KillAll.
var live sync.Map

// KillAll kills every process any harness of this process started and has not seen
// exit (SIGCONT then SIGKILL). A test's signal handler calls it; processes started
// by a harness also get SIGKILL from the kernel when the test process dies.
func KillAll() {
	live.Range(func(k, _ any) bool {
		p := k.(*proc)
		p.expected.Store(true)
		p.signal(syscall.SIGCONT)
		p.signal(syscall.SIGKILL)
		return true
	})
}

func (p *proc) signal(s syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(s)
	}
}

// New prepares a run: the store, the proxies and kubeconfigs. Start starts the processes.
func New(cfg Config) (*Harness, error) {
	h := &Harness{cfg: cfg, hist: filepath.Join(cfg.Dir, "history"), logs: filepath.Join(cfg.Dir, "logs"), procs: map[*proc]struct{}{}}
	for _, d := range []string{h.hist, h.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	var err error
	if h.admin, err = kubernetes.NewForConfig(cfg.Rest); err != nil {
		return nil, err
	}
	for name, l := range map[string]**Log{"faults": &h.flog, "harness": &h.hlog, "store": &h.slog} {
		if *l, err = OpenLog(filepath.Join(h.hist, name+".jsonl"), name); err != nil {
			return nil, err
		}
	}
	if h.store, err = NewStore(h.slog); err != nil {
		return nil, err
	}
	if cfg.Grace != 0 && cfg.Grace <= cfg.LeaseDuration+MaxExtra {
		return nil, fmt.Errorf("grace %s must be longer than the longest blip-long fault (lease-duration + %s = %s): "+
			"raise Config.Grace", cfg.Grace, MaxExtra, cfg.LeaseDuration+MaxExtra)
	}
	u, err := url.Parse(cfg.Rest.Host)
	if err != nil {
		return nil, err
	}
	for i := range cfg.Clients {
		s := &slot{i: i, socket: filepath.Join(cfg.Dir, fmt.Sprintf("a%d.sock", i)), kubeconfig: filepath.Join(cfg.Dir, fmt.Sprintf("a%d.kubeconfig", i))}
		if s.proxy, err = testenv.NewProxy(u.Host); err != nil {
			h.Close()
			return nil, err
		}
		if err := testenv.WriteKubeconfig(s.kubeconfig, "https://"+s.proxy.Addr(), cfg.Rest); err != nil {
			h.Close()
			return nil, err
		}
		s.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", s.socket)
			},
		}}
		h.slots = append(h.slots, s)
	}
	return h, nil
}

// Dir is where the run keeps its histories and logs.
func (h *Harness) Dir() string { return h.cfg.Dir }

func (h *Harness) logf(format string, args ...any) {
	if h.cfg.Logf != nil {
		h.cfg.Logf(format, args...)
	}
}

// start starts a process whose output goes to the file logs/name.log.
func (h *Harness) start(name string, argv, env []string) (*proc, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("harness closed")
	}
	p := &proc{name: name, log: filepath.Join(h.logs, name+".log"), exited: make(chan struct{})}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	// Killed with the test process, however it ends.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	h.procs[p] = struct{}{}
	live.Store(p, struct{}{})
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		live.Delete(p)
		now := Now()
		r := Record{Op: OpExit, Send: now, Recv: now, Target: name, Expected: p.expected.Load(), Detail: exitDetail(p.err)}
		if !r.Expected {
			r.Detail += ": " + tail(p.log, 5)
		}
		h.hlog.Add(r)
		close(p.exited)
	}()
	return p, nil
}

func exitDetail(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// tail returns the last n lines of a file, joined with " | ".
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// kill sends SIGKILL (after SIGCONT) and waits for the exit; the exit is expected.
func (p *proc) kill() {
	p.expected.Store(true)
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGKILL)
	<-p.exited
}

func (h *Harness) newIdentity(s *slot) {
	h.mu.Lock()
	h.uids++
	n := h.uids
	h.mu.Unlock()
	s.pod = fmt.Sprintf("chaos-a%d-r%d", s.i, s.inc)
	s.uid = fmt.Sprintf("c4a05000-0000-4000-8000-%012d", n)
}

// startAgent starts the slot's agent and waits until it is ready.
func (h *Harness) startAgent(s *slot) error {
	c := h.cfg
	args := []string{"--locks=" + c.Mutex, "--leader=" + c.Leader,
		"--lease-duration=" + c.LeaseDuration.String(), "--renew-deadline=" + c.RenewDeadline.String(),
		"--retry-period=" + c.RetryPeriod.String(), "--install-cli=false", "-v=1",
	}
	if c.Semaphore != "" {
		args = append(args, fmt.Sprintf("--semaphores=%s=%d", c.Semaphore, c.SemaphoreSize))
	}
	if c.Grace > 0 {
		args = append(args, "--grace="+c.Grace.String())
	}
	argv := testenv.AgentSpec{Binary: c.AgentBinary, Namespace: c.Namespace, Pod: s.pod, UID: s.uid,
		Socket: s.socket, Kubeconfig: s.kubeconfig, Args: args}.Argv()
	s.started = time.Now()
	p, err := h.start(fmt.Sprintf("agent-a%d-r%d", s.i, s.inc), argv, nil)
	if err != nil {
		return err
	}
	s.agent = p
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := testenv.WaitReady(ctx, s.socket, p.exited); err != nil {
		select {
		case <-p.exited:
			return fmt.Errorf("agent %s exited before ready: %v: %s", s.identity(), p.err, tail(p.log, 5))
		default:
			return fmt.Errorf("agent %s not ready after 20s: %w", s.identity(), err)
		}
	}
	return nil
}

// startClients starts the slot's client loops.
func (h *Harness) startClients(s *slot) error {
	s.clients = nil
	for j := 0; j < h.cfg.Clients[s.i]; j++ {
		name := fmt.Sprintf("a%dc%d-r%d", s.i, j, s.inc)
		cc := ClientConfig{
			Proc: name, Socket: s.socket, Agent: s.identity(), Mutex: h.cfg.Mutex, Leader: h.cfg.Leader, Semaphore: h.cfg.Semaphore,
			Store: h.store.URL(), History: filepath.Join(h.hist, name+".jsonl"), Seed: h.cfg.Seed,
			RenewDeadline: h.cfg.RenewDeadline, Grace: h.grace(),
		}
		b, _ := json.Marshal(cc)
		p, err := h.start("client-"+name, h.cfg.ClientCommand, []string{ClientEnv + "=1", ClientConfigEnv + "=" + string(b)})
		if err != nil {
			return err
		}
		s.clients = append(s.clients, p)
	}
	return nil
}

// Run starts the agents and client loops, injects faults for Duration, heals, lets the
// run settle, stops every process and returns the merged history.
func (h *Harness) Run(ctx context.Context) ([]Record, error) {
	h.started = Now()
	for _, s := range h.slots {
		h.newIdentity(s)
		if err := h.startAgent(s); err != nil {
			return nil, err
		}
	}
	for _, s := range h.slots {
		if err := h.startClients(s); err != nil {
			return nil, err
		}
	}
	h.logf("chaos: %d agents and %d client loops running; faults for %s (seed %d)", len(h.slots), sum(h.cfg.Clients), h.cfg.Duration, h.cfg.Seed)
	if err := h.inject(ctx); err != nil {
		return nil, err
	}
	h.heal()
	now := Now()
	h.hlog.Add(Record{Op: OpSettle, Send: now, Recv: now, Detail: "faults healed"})
	h.logf("chaos: faults over; settling for %s", h.cfg.Settle)
	sleepCtx(ctx, h.cfg.Settle)
	now = Now()
	h.hlog.Add(Record{Op: OpEnd, Send: now, Recv: now})
	h.stopAll()
	h.scanLogs()
	for _, l := range []*Log{h.flog, h.hlog, h.slog} {
		_ = l.Close()
	}
	recs, err := ReadDir(h.hist)
	if err != nil {
		return nil, err
	}
	return Merge(recs), ctx.Err()
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// heal undoes whatever a fault may have left: thaws every proxy, continues every
// process.
func (h *Harness) heal() {
	for _, s := range h.slots {
		s.proxy.SetFrozen(false)
		for _, p := range append([]*proc{s.agent}, s.clients...) {
			if p != nil {
				p.signal(syscall.SIGCONT)
			}
		}
	}
}

// stopAll ends the client loops, then the agents, with SIGTERM: each must exit 0
// within a few seconds (an agent releases its holds first).
func (h *Harness) stopAll() {
	term := func(ps []*proc, within time.Duration) {
		for _, p := range ps {
			p.expected.Store(true)
			p.signal(syscall.SIGTERM)
		}
		deadline := time.After(within)
		for _, p := range ps {
			select {
			case <-p.exited:
				if p.err != nil {
					now := Now()
					h.hlog.Add(Record{Op: OpExit, Send: now, Recv: now, Target: p.name,
						Detail: "after SIGTERM: " + p.err.Error() + ": " + tail(p.log, 5)})
				}
			case <-deadline:
				now := Now()
				h.hlog.Add(Record{Op: OpExit, Send: now, Recv: now, Target: p.name, Detail: fmt.Sprintf("did not exit within %s of SIGTERM", within)})
				p.kill()
			}
		}
	}
	var clients, agents []*proc
	for _, s := range h.slots {
		clients = append(clients, s.clients...)
		if s.agent != nil {
			agents = append(agents, s.agent)
		}
	}
	term(clients, 10*time.Second)
	term(agents, 15*time.Second)
}

// scanLogs records every line of every process log that says it panicked.
func (h *Harness) scanLogs() {
	h.mu.Lock()
	var ps []*proc
	for p := range h.procs {
		ps = append(ps, p)
	}
	h.mu.Unlock()
	for _, p := range ps {
		f, err := os.Open(p.log)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			if strings.Contains(l, "panic") || strings.Contains(l, "fatal error:") || strings.Contains(l, "DATA RACE") {
				now := Now()
				h.hlog.Add(Record{Op: OpPanic, Send: now, Recv: now, Target: p.name, Detail: l})
			}
		}
		f.Close()
	}
}

// Close kills whatever is still running and closes the proxies and the store. It is
// safe to call more than once and after Run.
func (h *Harness) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	var ps []*proc
	for p := range h.procs {
		ps = append(ps, p)
	}
	h.mu.Unlock()
	for _, p := range ps {
		p.kill()
	}
	for _, s := range h.slots {
		s.proxy.Close()
	}
	if h.store != nil {
		h.store.Close()
	}
	for _, l := range []*Log{h.flog, h.hlog, h.slog} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// inject runs the fault schedule until Duration has passed and every kind of fault
// has run once (the first steps of a schedule), whichever is later.
func (h *Harness) inject(ctx context.Context) error {
	next := Schedule(h.cfg.Seed)
	end := h.started + int64(h.cfg.Duration)
	for n := 0; ctx.Err() == nil; n++ {
		st := next()
		if n >= len(FaultKinds) && Now()+int64(st.Gap) >= end {
			sleepCtx(ctx, time.Duration(end-Now()))
			return nil
		}
		sleepCtx(ctx, st.Gap)
		if ctx.Err() != nil {
			break
		}
		r := h.fault(ctx, st)
		h.flog.Add(r)
		h.logf("chaos: %s", Format(r))
		if r.Fault == FaultAPIRestart && r.Status != 200 {
			return fmt.Errorf("restart kube-apiserver: %s", r.Detail)
		}
	}
	return ctx.Err()
}

// holder returns the slot whose agent holds lock by its Lease, with the Lease.
func (h *Harness) holder(ctx context.Context, lock string) (*slot, *coordinationv1.Lease) {
	l, err := h.admin.CoordinationV1().Leases(h.cfg.Namespace).Get(ctx, lock, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return nil, l
	}
	for _, s := range h.slots {
		if s.identity() == *l.Spec.HolderIdentity {
			return s, l
		}
	}
	return nil, l
}

// target is the holder of the step's lock, else the slot the step picks.
func (h *Harness) target(ctx context.Context, st Step) *slot {
	lock := h.cfg.Mutex
	if st.Leader {
		lock = h.cfg.Leader
	}
	if s, _ := h.holder(ctx, lock); s != nil {
		return s
	}
	return h.slots[int(st.Pick*float64(len(h.slots)))%len(h.slots)]
}

// grace is the agents' grace period: Config.Grace, else the agent's default.
func (h *Harness) grace() time.Duration {
	if h.cfg.Grace > 0 {
		return h.cfg.Grace
	}
	return contract.DefaultGrace
}

// fault makes one fault; for one that takes the API server away it also records what
// became of the holds named when it began (Record.Holds).
func (h *Harness) fault(ctx context.Context, st Step) Record {
	var obs *holdObserver
	if st.Kind.TakesAPIServer() {
		obs = h.observeHolds(ctx)
	}
	r := h.inflict(ctx, st)
	if obs != nil {
		r.Holds = obs.finish(h.cfg.RetryPeriod + time.Second)
	}
	return r
}

func (h *Harness) inflict(ctx context.Context, st Step) Record {
	r := Record{Op: OpFault, Fault: st.Kind, Status: 200}
	switch st.Kind {
	case FaultKill:
		st.Leader = false
		s := h.target(ctx, st)
		r.Target = s.identity()
		r.Send = Now()
		s.agent.kill()
		if st.NewPod {
			for _, c := range s.clients {
				c.kill()
			}
			s.inc++
			h.newIdentity(s)
		}
		if err := h.startAgent(s); err != nil {
			r.Status, r.Detail = 500, err.Error()
		} else if st.NewPod {
			if err := h.startClients(s); err != nil {
				r.Status, r.Detail = 500, err.Error()
			}
		}
		r.Recv = Now()
		if r.Detail == "" {
			r.Detail = "restarted as the same Pod's container, client loops live on"
			if st.NewPod {
				r.Detail = "restarted as new Pod " + s.identity() + " with new client loops"
			}
		}
	case FaultStop:
		st.Leader = false
		s := h.target(ctx, st)
		r.Target = s.identity()
		ps := append([]*proc{s.agent}, s.clients...)
		r.Send = Now()
		for _, p := range ps {
			p.signal(syscall.SIGSTOP)
		}
		sleepCtx(ctx, h.cfg.LeaseDuration+st.Extra)
		for _, p := range ps {
			p.signal(syscall.SIGCONT)
		}
		r.Recv = Now()
		r.Detail = fmt.Sprintf("agent and %d client loops stopped for %s", len(s.clients), time.Duration(r.Recv-r.Send).Round(time.Millisecond))
	case FaultPartition:
		s := h.target(ctx, st)
		r.Target = s.identity()
		r.Send = Now()
		s.proxy.SetFrozen(true)
		sleepCtx(ctx, h.cfg.RenewDeadline+st.Extra)
		s.proxy.SetFrozen(false)
		r.Recv = Now()
		r.Detail = fmt.Sprintf("cut off from the API server for %s", time.Duration(r.Recv-r.Send).Round(time.Millisecond))
	case FaultBlip, FaultBlipLong:
		r.Target = "every agent"
		d := st.BlipLength(h.cfg.LeaseDuration, h.cfg.RenewDeadline)
		r.Send = Now()
		for _, s := range h.slots {
			s.proxy.SetFrozen(true)
		}
		sleepCtx(ctx, d)
		for _, s := range h.slots {
			s.proxy.SetFrozen(false)
		}
		r.Recv = Now()
		r.Detail = fmt.Sprintf("every agent cut off from the API server for %s", time.Duration(r.Recv-r.Send).Round(time.Millisecond))
	case FaultAPIRestart:
		r.Target = "kube-apiserver"
		r.Send = Now()
		detail, err := h.cfg.RestartAPIServer()
		r.Recv = Now()
		r.Detail = detail
		if err != nil {
			r.Status, r.Detail = 500, err.Error()
		}
	case FaultRewrite:
		r.Lock = h.cfg.Mutex
		if st.Leader {
			r.Lock = h.cfg.Leader
		}
		h.rewrite(ctx, &r)
	case FaultDelete:
		r.Lock = h.cfg.Mutex
		if st.Leader {
			r.Lock = h.cfg.Leader
		}
		h.delete(ctx, &r)
	case FaultStaleRelease:
		h.staleRelease(ctx, &r)
	}
	return r
}

// rewrite writes a foreign holder into the Lease, as another elector taking it would:
// leaseTransitions+1, renewTime now, the agents' lease-duration.
func (h *Harness) rewrite(ctx context.Context, r *Record) {
	leases := h.admin.CoordinationV1().Leases(h.cfg.Namespace)
	for attempt := 0; ; attempt++ {
		l, err := leases.Get(ctx, r.Lock, metav1.GetOptions{})
		if err != nil {
			r.Send, r.Recv, r.Status, r.Detail = Now(), Now(), 500, "get lease: "+err.Error()
			return
		}
		next := l.DeepCopy()
		var trans int32
		if l.Spec.LeaseTransitions != nil {
			trans = *l.Spec.LeaseTransitions
		}
		r.Displaced, r.DisplacedToken = "", 0
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			r.Displaced, r.DisplacedToken = *l.Spec.HolderIdentity, int64(trans)
		}
		h.mu.Lock()
		h.uids++
		holder := fmt.Sprintf("%s-%d", ThirdParty, h.uids)
		h.mu.Unlock()
		trans++
		dur := int32(h.cfg.LeaseDuration / time.Second)
		r.Send = Now()
		now := metav1.NowMicro()
		next.Spec.HolderIdentity, next.Spec.LeaseTransitions, next.Spec.LeaseDurationSeconds = &holder, &trans, &dur
		next.Spec.AcquireTime, next.Spec.RenewTime = &now, &now
		_, err = leases.Update(ctx, next, metav1.UpdateOptions{})
		r.Recv = Now()
		switch {
		case err == nil:
			r.Holder, r.Token, r.Status = holder, int64(trans), 200
			r.Detail = "foreign holder written (conditional on the resourceVersion read)"
			return
		case apierrors.IsConflict(err) && attempt < 5:
			continue
		default:
			r.Status, r.Detail = 500, "update lease: "+err.Error()
			return
		}
	}
}

// delete deletes the Lease (conditional on the resourceVersion read, to know whom it
// displaced).
func (h *Harness) delete(ctx context.Context, r *Record) {
	leases := h.admin.CoordinationV1().Leases(h.cfg.Namespace)
	for attempt := 0; ; attempt++ {
		l, err := leases.Get(ctx, r.Lock, metav1.GetOptions{})
		if err != nil {
			r.Send, r.Recv, r.Status, r.Detail = Now(), Now(), 500, "get lease: "+err.Error()
			return
		}
		r.Displaced, r.DisplacedToken = "", 0
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			r.Displaced = *l.Spec.HolderIdentity
			if l.Spec.LeaseTransitions != nil {
				r.DisplacedToken = int64(*l.Spec.LeaseTransitions)
			}
		}
		rv := l.ResourceVersion
		r.Send = Now()
		err = leases.Delete(ctx, r.Lock, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		r.Recv = Now()
		switch {
		case err == nil:
			r.Status = 200
			r.Detail = "Lease deleted; " + h.awaitLease(ctx, r.Lock, h.cfg.LeaseDuration+5*time.Second)
			return
		case apierrors.IsConflict(err) && attempt < 5:
			continue
		default:
			r.Status, r.Detail = 500, "delete lease: "+err.Error()
			return
		}
	}
}

// awaitLease waits until the Lease exists again: no agent may start while it is
// deleted, since an agent that never saw the deleted record starts its tokens at 1
// again (documented, not guaranteed).
func (h *Harness) awaitLease(ctx context.Context, lock string, within time.Duration) string {
	start := time.Now()
	for time.Since(start) < within && ctx.Err() == nil {
		l, err := h.admin.CoordinationV1().Leases(h.cfg.Namespace).Get(ctx, lock, metav1.GetOptions{})
		if err == nil {
			holder := ""
			if l.Spec.HolderIdentity != nil {
				holder = *l.Spec.HolderIdentity
			}
			var tok int32
			if l.Spec.LeaseTransitions != nil {
				tok = *l.Spec.LeaseTransitions
			}
			return fmt.Sprintf("created again after %s by %s with token %d", time.Since(start).Round(time.Millisecond), holder, tok)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf("not created again within %s", within)
}

// staleRelease asks the mutex's holder to release a token older than its hold's, and
// another agent to release the holder's token: both must fail and change nothing.
func (h *Harness) staleRelease(ctx context.Context, r *Record) {
	r.Lock = h.cfg.Mutex
	r.Send = Now()
	var s *slot
	var tok int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var l *coordinationv1.Lease
		if s, l = h.holder(ctx, h.cfg.Mutex); s != nil && l.Spec.LeaseTransitions != nil && *l.Spec.LeaseTransitions > 1 {
			tok = int64(*l.Spec.LeaseTransitions)
			break
		}
		s = nil
	}
	if s == nil {
		r.Recv, r.Status, r.Detail = Now(), 500, "no agent held the mutex for 5s"
		return
	}
	r.Target = s.identity()
	other := h.slots[(s.i+1)%len(h.slots)]
	calls := []struct {
		s   *slot
		tok int64
	}{{s, tok - 1}, {other, tok}}
	for _, c := range calls {
		q := Record{Op: OpStaleRelease, Lock: h.cfg.Mutex, ReqToken: c.tok, Agent: c.s.identity()}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://leasehold/v1/locks/%s/release?token=%d", h.cfg.Mutex, c.tok), nil)
		q.Send = Now()
		resp, err := c.s.http.Do(req)
		var a answer
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			q.Status = resp.StatusCode
			_ = json.Unmarshal(b, &a)
		}
		q.Recv = Now()
		if err != nil {
			q.Err = err.Error()
		}
		q.Held, q.Holder, q.Token, q.Reason = a.Held, a.Holder, a.Token, a.Reason
		h.flog.Add(q)
	}
	r.Recv = Now()
	r.Detail = fmt.Sprintf("release?token=%d at the holder, release?token=%d at %s", tok-1, tok, other.identity())
}
