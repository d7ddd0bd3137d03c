//go:build scalebench

package scalebench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// Knobs (environment), with the defaults `make bench-scale` uses.
var (
	// steps are the fleet sizes, in Pods.
	steps = intsEnv("SCALE_STEPS", []int{100, 300, 1000})
	// window is how long the steady state is measured at each step.
	window = durEnv("SCALE_WINDOW", 30*time.Second)
	// expiryUntil is how long after the restart the watches' re-opening is followed
	// (they time out 5 to 10 minutes after they open): 0 skips that part.
	expiryUntil = durEnv("SCALE_EXPIRY_UNTIL", 620*time.Second)
	// coldTimeout bounds the wait for a step's cold start.
	coldTimeout = durEnv("SCALE_COLD_TIMEOUT", 3*time.Minute)
	// restartAt is the step (Pods) under which kube-apiserver is restarted: the largest.
	restartAt = steps[len(steps)-1]
)

// BenchmarkScale is `make bench-scale`: every step, the restart, the client-go steps.
// It runs once (-benchtime=1x) and writes its results to $LEASEHOLD_BENCH_OUT.
func BenchmarkScale(b *testing.B) {
	if b.N > 1 {
		b.Skip("runs once: use -benchtime=1x")
	}
	rep := &report{started: time.Now(), loadAt: loadavg(), rev: revision()}
	defer rep.write(b)
	dir := b.TempDir()
	if err := testenv.BuildBinaries(dir, false, "github.com/leasehold/leasehold/cmd/leasehold-agent"); err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(dir, "leasehold-agent")
	if other := os.Getenv("LEASEHOLD_BENCH_AGENT_BIN"); other != "" {
		// Another build measured the same way (an earlier commit, for a before/after).
		bin = other
		logf(b, "agent binary: %s", other)
	}
	c := startCluster(b, dir)
	logf(b, "kube-apiserver pid %d, etcd pid %d, agents as %s, at nice %d", c.apiPID, c.etcdPID, agentIdentity(), agentNice)

	for _, n := range steps {
		rep.steps = append(rep.steps, runStep(b, c, bin, dir, n, n == restartAt, rep))
	}
	for _, n := range steps {
		rep.clientGo = append(rep.clientGo, runClientGo(b, c, dir, n))
	}
}

// stepResult is one row of the table, and the cold start of that step.
type stepResult struct {
	pods, groups  int
	putPerSec     float64
	otherPerSec   float64
	otherDetail   string
	watches       float64
	apiCPU        float64
	etcdCPU       float64
	agentsCPU     float64
	apiRSS        float64 // MiB
	pssAvg        float64 // MiB
	rssAvg        float64 // MiB
	handover      []time.Duration
	handoverErr   error
	cold          coldStart
	firstHolder   time.Duration // until every leader Lease named a holder (audit)
	coldRequests  map[string]float64
	coldTimeline  string
	extraTakeover int
	// coldCPU is the CPU seconds kube-apiserver, etcd, the agents and the benchmark
	// itself used from the first exec until the cold start was done.
	coldCPU    [4]float64
	lostDuring int
}

func createNamespace(b *testing.B, c *cluster, ns string) {
	if _, err := c.cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
}

func runStep(b *testing.B, c *cluster, bin, dir string, n int, restart bool, rep *report) stepResult {
	ns := fmt.Sprintf("scale-%d", n)
	createNamespace(b, c, ns)
	r := stepResult{pods: n}
	m0 := c.scrape()
	apiCold, etcdCold, selfCold := cpuSeconds(c.apiPID), cpuSeconds(c.etcdPID), cpuSeconds(os.Getpid())
	f := startFleet(b, bin, c.kubeconfig, filepath.Join(dir, ns), ns, n)
	r.groups = f.groups
	logf(b, "%d agents: started in %s", n, f.execDone.Sub(f.started).Round(time.Millisecond))

	// Cold start: until every agent is ready and every group's leader lock is held.
	var logs []agentLog
	for deadline := time.Now().Add(coldTimeout); ; time.Sleep(time.Second) {
		logs = f.logs()
		r.cold = f.coldStart(logs)
		if r.cold.notReady == 0 && r.cold.notHeld == 0 {
			break
		}
		if gone := f.exited(); len(gone) > 0 {
			b.Fatalf("%d agents exited during the cold start, e.g. %s", len(gone), gone[0])
		}
		if time.Now().After(deadline) {
			logf(b, "cold start of %d agents not done after %s: %d not ready, %d groups without a leader", n, coldTimeout, r.cold.notReady, r.cold.notHeld)
			break
		}
	}
	done := time.Now()
	r.coldCPU = [4]float64{cpuSeconds(c.apiPID) - apiCold, cpuSeconds(c.etcdPID) - etcdCold, sumCPU(f.pids()), cpuSeconds(os.Getpid()) - selfCold}
	m1 := c.scrape()
	r.coldRequests = sub(m1.requests, m0.requests)
	cold := c.auditSince(f.started, done)
	r.firstHolder, r.coldTimeline = coldAudit(cold, f.started, ns, f.groups)
	leases, err := c.cs.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range leases.Items {
		if strings.HasPrefix(l.Name, "lead-") && l.Spec.LeaseTransitions != nil && *l.Spec.LeaseTransitions > 1 {
			r.extraTakeover++
		}
	}
	logf(b, "%d agents: cold start: all ready %s (p50 %s), every leader Lease named a holder %s, every group held %s; requests %s; leader Leases past token 1: %d",
		n, r.cold.allReady.Round(time.Millisecond), r.cold.readyP50.Round(time.Millisecond), r.firstHolder.Round(time.Millisecond),
		r.cold.allHeld.Round(time.Millisecond), summary(r.coldRequests, float64(n)), r.extraTakeover)
	logf(b, "%d agents: CPU seconds used during the cold start (%s): kube-apiserver %.1f, etcd %.1f, agents %.1f (%.1f ms each), this benchmark %.1f",
		n, done.Sub(f.started).Round(time.Millisecond), r.coldCPU[0], r.coldCPU[1], r.coldCPU[2], r.coldCPU[2]/float64(n)*1000, r.coldCPU[3])
	logf(b, "%d agents: cold start timeline (lease requests per second since the first exec): %s", n, r.coldTimeline)

	time.Sleep(10 * time.Second) // past the cold start's renewals
	var rs *restartResult
	if restart {
		rs = runRestart(b, c, f, ns)
		rep.restart = rs
		time.Sleep(10 * time.Second)
		for _, d := range blips {
			rep.blips = append(rep.blips, runBlip(b, c, f, ns, d))
			time.Sleep(10 * time.Second)
		}
	}

	// Steady state.
	pids := f.pids()
	ma := c.scrape()
	t0 := time.Now()
	apiC0, etcdC0, agC0 := cpuSeconds(c.apiPID), cpuSeconds(c.etcdPID), sumCPU(pids)
	time.Sleep(window)
	mb := c.scrape()
	el := time.Since(t0).Seconds()
	apiC1, etcdC1, agC1 := cpuSeconds(c.apiPID), cpuSeconds(c.etcdPID), sumCPU(pids)
	d := sub(mb.requests, ma.requests)
	r.putPerSec = total(d, "PUT", "leases") / el
	other := map[string]float64{}
	for k, v := range d {
		if !strings.HasPrefix(k, "PUT leases") {
			other[k] = v
		}
	}
	r.otherPerSec = total(other) / el
	r.otherDetail = summary(other, 0)
	r.watches = mb.open["WATCH leases"]
	r.apiCPU, r.etcdCPU, r.agentsCPU = (apiC1-apiC0)/el, (etcdC1-etcdC0)/el, (agC1-agC0)/el
	rss, _ := memKiB(c.apiPID)
	r.apiRSS = float64(rss) / 1024
	var pssSum, rssSum float64
	for _, p := range pids {
		rss, pss := memKiB(p)
		pssSum += float64(pss)
		rssSum += float64(rss)
	}
	r.pssAvg, r.rssAvg = pssSum/float64(len(pids))/1024, rssSum/float64(len(pids))/1024
	r.handover, r.handoverErr = f.handover(min(60, f.groups))
	logf(b, "%d agents: steady %.0f s: lease PUT %.2f/s (model %d held leader locks / 5 s = %.2f), other %.2f/s (%s), watches open %.0f, kube-apiserver %.3f CPU s/s %.0f MiB, etcd %.3f CPU s/s, agents %.3f CPU s/s in all, agent PSS %.2f MiB RSS %.2f MiB (mean); handover p50 %s p99 %s (n=%d, err %v)",
		n, el, r.putPerSec, f.groups, float64(f.groups)/5, r.otherPerSec, r.otherDetail, r.watches, r.apiCPU, r.apiRSS, r.etcdCPU, r.agentsCPU, r.pssAvg, r.rssAvg,
		fmtD(percentile(r.handover, 0.5)), fmtD(percentile(r.handover, 0.99)), len(r.handover), r.handoverErr)

	if rs != nil && expiryUntil > 0 {
		until := rs.ready.Add(expiryUntil)
		logf(b, "following the watches' re-opening until %s after the restart (%s from now)", expiryUntil, time.Until(until).Round(time.Second))
		time.Sleep(time.Until(until))
		rs.expiry = expiryAudit(c.auditSince(rs.ready, time.Now()), rs.ready)
		logf(b, "watch re-opening after the restart: %s", rs.expiry)
	}
	for _, l := range f.logs() {
		r.lostDuring += len(l.lost)
	}
	f.stop()
	return r
}

func sumCPU(pids []int) float64 {
	t := 0.0
	for _, p := range pids {
		t += cpuSeconds(p)
	}
	return t
}

// coldAudit reads the cold start's Lease requests: when every leader Lease first named
// a holder, and the requests per second.
func coldAudit(evs []auditEvent, start time.Time, ns string, groups int) (time.Duration, string) {
	first := map[string]time.Time{}
	perSec := map[int]int{}
	last := 0
	for _, ev := range evs {
		if ev.ObjectRef.Namespace != ns || ev.ObjectRef.Resource != "leases" {
			continue
		}
		s := int(ev.Received.Sub(start) / time.Second)
		perSec[s]++
		last = max(last, s)
		ok := ev.ResponseStatus.Code/100 == 2
		if ok && (ev.Verb == "create" || ev.Verb == "update") && strings.HasPrefix(ev.ObjectRef.Name, "lead-") {
			if _, seen := first[ev.ObjectRef.Name]; !seen {
				first[ev.ObjectRef.Name] = ev.Received
			}
		}
	}
	var worst time.Duration
	for _, t := range first {
		worst = max(worst, t.Sub(start))
	}
	if len(first) < groups {
		worst = -1
	}
	parts := make([]string, 0, last+1)
	for s := 0; s <= last; s++ {
		parts = append(parts, strconv.Itoa(perSec[s]))
	}
	return worst, strings.Join(parts, " ")
}

func runClientGo(b *testing.B, c *cluster, dir string, n int) clientGoResult {
	ns := fmt.Sprintf("clientgo-%d", n)
	createNamespace(b, c, ns)
	groups := (n + groupSize - 1) / groupSize
	start := time.Now()
	e := startElectors(b, c.kubeconfig, ns, filepath.Join(dir, ns+".log"), n)
	r := clientGoResult{pods: n, groups: groups}
	for deadline := time.Now().Add(4 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		leases, err := c.cs.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		held := 0
		for _, l := range leases.Items {
			if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				held++
			}
		}
		if held == groups {
			r.allHeld = time.Since(start)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("client-go: %d of %d Leases held after 4 minutes", held, groups)
		}
	}
	time.Sleep(10 * time.Second)
	ma := c.scrape()
	t0 := time.Now()
	apiC0, etcdC0, cgC0 := cpuSeconds(c.apiPID), cpuSeconds(c.etcdPID), cpuSeconds(e.cmd.Process.Pid)
	time.Sleep(window)
	mb := c.scrape()
	el := time.Since(t0).Seconds()
	d := sub(mb.requests, ma.requests)
	r.putPerSec = total(d, "PUT", "leases") / el
	r.getPerSec = total(d, "GET", "leases") / el
	r.allPerSec = total(d) / el
	r.apiCPU = (cpuSeconds(c.apiPID) - apiC0) / el
	r.etcdCPU = (cpuSeconds(c.etcdPID) - etcdC0) / el
	r.electorsCPU = (cpuSeconds(e.cmd.Process.Pid) - cgC0) / el
	rss, _ := memKiB(e.cmd.Process.Pid)
	r.electorsRSS = float64(rss) / 1024
	if n == restartAt {
		r.restart = clientGoRestart(b, c, ns)
	}
	logf(b, "client-go %d electors: all %d Leases held after %s; steady %.0f s: lease PUT %.2f/s, GET %.2f/s, all %.2f/s (%s); kube-apiserver %.3f CPU s/s, etcd %.3f, electors' process %.3f CPU s/s, %.0f MiB RSS",
		n, groups, r.allHeld.Round(time.Millisecond), el, r.putPerSec, r.getPerSec, r.allPerSec, summary(d, 0), r.apiCPU, r.etcdCPU, r.electorsCPU, r.electorsRSS)
	e.stop()
	return r
}

// clientGoRestart restarts kube-apiserver under the electors as runRestart does under
// the agents, and says how many leaders lost their Lease.
func clientGoRestart(b *testing.B, c *cluster, ns string) string {
	ctx := context.Background()
	holders := func() map[string]string {
		l, err := c.cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		out := map[string]string{}
		for _, x := range l.Items {
			if x.Spec.HolderIdentity != nil && x.Spec.LeaseTransitions != nil {
				out[x.Name] = fmt.Sprintf("%s/%d", *x.Spec.HolderIdentity, *x.Spec.LeaseTransitions)
			}
		}
		return out
	}
	before := holders()
	sig, exited, ready := c.restartAPIServer()
	time.Sleep(observeRestart)
	after := holders()
	changed := 0
	for k, v := range before {
		if after[k] != v {
			changed++
		}
	}
	s := fmt.Sprintf("kube-apiserver restarted under the electors: SIGTERM → exited %s → ready %s; %d of %d Leases changed holder or token within %s",
		fmtD(exited.Sub(sig)), fmtD(ready.Sub(sig)), changed, len(before), observeRestart)
	logf(b, "client-go: %s", s)
	return s
}

type clientGoResult struct {
	restart                         string
	pods, groups                    int
	allHeld                         time.Duration
	putPerSec, getPerSec, allPerSec float64
	apiCPU, etcdCPU, electorsCPU    float64
	electorsRSS                     float64
}

func intsEnv(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, p := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < groupSize {
			panic(fmt.Sprintf("%s=%q: want Pod counts of at least %d, comma-separated (e.g. 100,300,1000)", name, v, groupSize))
		}
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

func niceEnv(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 19 {
		panic(fmt.Sprintf("%s=%q: want a nice value from 0 to 19", name, v))
	}
	return n
}

func durEnv(name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		panic(fmt.Sprintf("%s=%q: want a Go duration (e.g. 30s): %v", name, v, err))
	}
	return d
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

func fmtD(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
}
