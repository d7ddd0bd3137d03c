package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// BenchmarkFairness measures how Pods that contend for one mutex in a tight loop share
// it: each of N agent processes (one per Pod, default timings 15s/10s/2s) has one client
// that acquires (waiting), holds 20 ms, releases and acquires again, for
// LEASEHOLD_FAIR_DURATION (5m) per N in LEASEHOLD_FAIR_PODS (3,5,10). With
// LEASEHOLD_FAIR_BASELINE_BIN it runs the same loops with that agent binary too (`make
// bench-fair` builds it from the commit before fair queueing), and with
// LEASEHOLD_BENCH_OUT it writes the table into BENCHMARKS.md.
func BenchmarkFairness(b *testing.B) {
	dur := 5 * time.Minute
	if v := os.Getenv("LEASEHOLD_FAIR_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("LEASEHOLD_FAIR_DURATION: %v", err)
		}
		dur = d
	}
	pods := []int{3, 5, 10}
	if v := os.Getenv("LEASEHOLD_FAIR_PODS"); v != "" {
		pods = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 2 {
				b.Fatalf("LEASEHOLD_FAIR_PODS: %q is not a number of Pods ≥ 2", f)
			}
			pods = append(pods, n)
		}
	}
	builds := []struct{ name, bin string }{{"fair queue (this tree)", ""}}
	if base := os.Getenv("LEASEHOLD_FAIR_BASELINE_BIN"); base != "" {
		builds = append([]struct{ name, bin string }{{"before (" + os.Getenv("LEASEHOLD_FAIR_BASELINE") + ")", base}}, builds...)
	}
	var rows []string
	for _, n := range pods {
		for _, bld := range builds {
			b.Run(fmt.Sprintf("pods=%d/%s", n, strings.Fields(bld.name)[0]), func(b *testing.B) {
				r := fairLoop(b, n, dur, bld.bin)
				rows = append(rows, fmt.Sprintf("| %d | %s | %s | %.1f %% | %s / %s | %s / %s | %.2f (%.2f writes, %.2f conflicts) | %.1f / %.1f |",
					n, bld.name, r.shares, r.again, fmtD(r.waitP99), fmtD(r.waitMax), fmtD(r.handoverP50), fmtD(r.handoverP99),
					r.perAcq, r.writesPerAcq, r.conflictsPerAcq, r.okPerSec, r.conflictsPerSec))
				b.ReportMetric(float64(r.handoverP99.Microseconds()), "handover-p99-µs")
				b.ReportMetric(r.perAcq, "requests/acquisition")
			})
		}
	}
	writeFairReport(dur, rows)
}

type fairResult struct {
	shares                                     string
	again                                      float64 // % of acquisitions by the Pod that released last
	waitP99, waitMax, handoverP50, handoverP99 time.Duration
	perAcq, writesPerAcq, conflictsPerAcq      float64
	okPerSec, conflictsPerSec                  float64
}

// fairLoop runs n agents (binary bin, "" for this tree's) in the tight loop for dur.
func fairLoop(b *testing.B, n int, dur time.Duration, bin string) fairResult {
	ctx := context.Background()
	name := fmt.Sprintf("fair-bench-%d-%d", n, time.Now().UnixNano()%100000)
	prev := agentBin
	if bin != "" {
		agentBin = bin
	}
	agents := make([]*agentProc, n)
	ports := make([]int, n)
	for i := range agents {
		ports[i] = testenv.FreePort(b)
		agents[i] = startAgentB(b, fmt.Sprintf("%s-%d", name, i), "--locks="+name,
			"--lease-duration=15s", "--renew-deadline=10s", "--retry-period=2s", "--events=false",
			fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", ports[i]))
	}
	agentBin = prev
	before := make([]map[string]float64, n)
	for i := range agents {
		before[i] = apiOutcomes(b, ports[i])
	}

	var mu sync.Mutex
	var (
		lastRelSent time.Time
		lastRelBy   = -1
		count       = make([]int, n)
		again       int
		waits, hand []time.Duration
	)
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	for i, a := range agents {
		wg.Go(func() {
			for time.Now().Before(stop) {
				t0 := time.Now()
				s, err := a.c.Acquire(ctx, name, time.Minute, 0)
				got := time.Now()
				if err != nil {
					b.Errorf("%s: %v", a.pod, err)
					return
				}
				mu.Lock()
				count[i]++
				waits = append(waits, got.Sub(t0))
				if lastRelBy == i {
					again++
				}
				if lastRelBy >= 0 && t0.Before(lastRelSent) {
					hand = append(hand, got.Sub(lastRelSent)) // waited through the release
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				mu.Lock()
				lastRelSent, lastRelBy = time.Now(), i
				mu.Unlock()
				if _, err := a.c.Release(ctx, name, s.Token); err != nil {
					b.Errorf("%s release: %v", a.pod, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(stop.Add(-dur))

	var total int
	for _, c := range count {
		total += c
	}
	var writes, conflicts, all float64
	for i := range agents {
		d := diff(apiOutcomes(b, ports[i]), before[i])
		for k, v := range d {
			verb, outcome, _ := strings.Cut(k, " ")
			if verb == "watch" {
				continue
			}
			all += v
			if (verb == "update" || verb == "create") && outcome == "ok" {
				writes += v
			}
			if outcome == "conflict" {
				conflicts += v
			}
		}
	}
	var sh []string
	for _, c := range count {
		sh = append(sh, fmt.Sprintf("%.1f", 100*float64(c)/float64(max(total, 1))))
	}
	r := fairResult{
		shares:  strings.Join(sh, ", ") + fmt.Sprintf(" %% (%d acquisitions)", total),
		again:   100 * float64(again) / float64(max(total, 1)),
		waitP99: percentile(waits, 0.99), waitMax: percentile(waits, 1),
		handoverP50: percentile(hand, 0.5), handoverP99: percentile(hand, 0.99),
		perAcq: all / float64(max(total, 1)), writesPerAcq: writes / float64(max(total, 1)),
		conflictsPerAcq: conflicts / float64(max(total, 1)),
		okPerSec:        writes / elapsed.Seconds(), conflictsPerSec: conflicts / elapsed.Seconds(),
	}
	b.Logf("%d Pods: shares %s, again %.1f%%, wait p99 %s max %s, handover p50 %s p99 %s (n=%d), %.2f requests per acquisition (%.2f writes, %.2f conflicts), %.1f writes/s, %.1f conflicts/s",
		n, r.shares, r.again, r.waitP99, r.waitMax, r.handoverP50, r.handoverP99, len(hand), r.perAcq, r.writesPerAcq, r.conflictsPerAcq, r.okPerSec, r.conflictsPerSec)
	for _, a := range agents {
		a.signal(15)
		<-a.exited
	}
	return r
}

// apiOutcomes scrapes an agent's requests to the API server by verb and outcome (the
// _count of leasehold_kube_api_request_duration_seconds), for Leases.
func apiOutcomes(b *testing.B, port int) map[string]float64 {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	const prefix = "leasehold_kube_api_request_duration_seconds_count{"
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		lbl := map[string]string{}
		for _, kv := range strings.Split(l[len(prefix):strings.IndexByte(l, '}')], ",") {
			k, v, _ := strings.Cut(kv, "=")
			lbl[k] = strings.Trim(v, `"`)
		}
		if lbl["resource"] != "leases" {
			continue
		}
		v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		out[lbl["verb"]+" "+lbl["outcome"]] += v
	}
	return out
}

// Markers of the fairness block in BENCHMARKS.md.
const (
	fairBegin = "<!-- fair-bench:begin (generated by make bench-fair) -->"
	fairEnd   = "<!-- fair-bench:end -->"
)

func writeFairReport(dur time.Duration, rows []string) {
	out := os.Getenv("LEASEHOLD_BENCH_OUT")
	if out == "" || len(rows) == 0 {
		return
	}
	load, _ := os.ReadFile("/proc/loadavg")
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nCommand: `make bench-fair` (runs `go test -count=1 -p 1 -run '^$' -bench BenchmarkFairness -benchtime=1x ./sidecar/agent/`", fairBegin)
	fmt.Fprintf(&b, " with the agent built from this tree and from %s).\n\n", os.Getenv("LEASEHOLD_FAIR_BASELINE"))
	fmt.Fprintf(&b, "Run %s, %s per row, %d CPUs, %s, load average at the end: %s; kube-apiserver + etcd v1.37.2 (envtest) on the same machine.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), dur, runtime.NumCPU(), runtime.Version(), strings.Join(strings.Fields(string(load))[:3], " "))
	b.WriteString("| Pods | agent | share per Pod | releasing Pod won again | wait p99 / longest | handover p50 / p99 | API requests per acquisition | successful writes/s / conflicts/s |\n|---|---|---|---|---|---|---|---|\n")
	b.WriteString(strings.Join(rows, "\n") + "\n")
	b.WriteString(fairEnd)
	old, _ := os.ReadFile(out)
	doc := string(old)
	i, j := strings.Index(doc, fairBegin), strings.Index(doc, fairEnd)
	if i >= 0 && j > i {
		doc = doc[:i] + b.String() + doc[j+len(fairEnd):]
	} else {
		doc += "\n## Fairness across Pods\n\n" + b.String() + "\n"
	}
	if err := os.WriteFile(out, []byte(doc), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "write", out, err)
	}
}
