//go:build scalebench

package scalebench

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// observeRestart is how long after the restarted kube-apiserver is ready the
// reconnection is followed.
const observeRestart = 40 * time.Second

type restartResult struct {
	pods                       int
	signalled, exited, ready   time.Time
	watchesBack                time.Duration // from exited until the last agent watch opened
	watchOpenP50, watchOpenP90 time.Duration
	watchOpenMax               time.Duration
	renewedAll                 time.Duration // until every held leader Lease was renewed again
	notRenewed                 int
	requests                   map[string]float64 // "verb code" of the agents' requests in the window
	requestsPerPod             float64
	peak100ms                  int
	timeline                   string // agent requests per second from the exit
	watchTimeline              string // agent watch opens per second from the exit
	holderChanged              int
	lost                       []string
	jeopardy, safe             int // holds that went into jeopardy, and came back with their token
	watchErrors, renewErrors   int
	openAfter                  float64
	expiry                     string
	cpu                        [4]float64 // from SIGTERM until ready: the new kube-apiserver, etcd, agents, benchmark
}

func runRestart(b *testing.B, c *cluster, f *fleet, ns string) *restartResult {
	ctx := context.Background()
	r := &restartResult{pods: len(f.agents), requests: map[string]float64{}}
	before, err := c.cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	type rec struct {
		holder string
		token  int32
	}
	snap := map[string]rec{}
	for _, l := range before.Items {
		if !strings.HasPrefix(l.Name, "lead-") || l.Spec.HolderIdentity == nil || l.Spec.LeaseTransitions == nil {
			continue
		}
		snap[l.Name] = rec{*l.Spec.HolderIdentity, *l.Spec.LeaseTransitions}
	}
	ag0, etcd0, self0 := sumCPU(f.pids()), cpuSeconds(c.etcdPID), cpuSeconds(os.Getpid())
	r.signalled, r.exited, r.ready = c.restartAPIServer()
	// CPU used from SIGTERM until the new process was ready: who had the 2 CPUs while
	// kube-apiserver started and the agents reconnected.
	r.cpu = [4]float64{cpuSeconds(c.apiPID), cpuSeconds(c.etcdPID) - etcd0, sumCPU(f.pids()) - ag0, cpuSeconds(os.Getpid()) - self0}
	logf(b, "CPU seconds from SIGTERM until ready (%s): the new kube-apiserver %.1f, etcd %.1f, agents %.1f, this benchmark %.1f",
		r.ready.Sub(r.signalled).Round(time.Millisecond), r.cpu[0], r.cpu[1], r.cpu[2], r.cpu[3])
	logf(b, "kube-apiserver restarted under %d agents: SIGTERM → exited %s, → ready %s", len(f.agents),
		r.exited.Sub(r.signalled).Round(time.Millisecond), r.ready.Sub(r.signalled).Round(time.Millisecond))
	time.Sleep(observeRestart)
	end := time.Now()
	r.openAfter = c.scrape().open["WATCH leases"]

	evs := c.auditSince(r.signalled, end)
	var opens []time.Duration
	firstRenew := map[string]time.Duration{}
	perSec, watchPerSec := map[int]int{}, map[int]int{}
	per100 := map[int]int{}
	last := 0
	for _, ev := range evs {
		if !strings.HasPrefix(ev.UserAgent, "leasehold-agent") {
			continue
		}
		// From the moment the old process was gone: the new one answers requests
		// before its /readyz does.
		at := ev.Received.Sub(r.exited)
		key := ev.Verb + " " + ev.ObjectRef.Resource + " " + strconv.Itoa(ev.ResponseStatus.Code)
		if ev.Verb == "watch" && ev.Stage == "ResponseStarted" {
			key = "watch-open leases " + strconv.Itoa(ev.ResponseStatus.Code)
		}
		r.requests[key]++
		if at < 0 {
			continue
		}
		s := int(at / time.Second)
		perSec[s]++
		per100[int(at/(100*time.Millisecond))]++
		last = max(last, s)
		if ev.Verb == "watch" && ev.Stage == "ResponseStarted" {
			opens = append(opens, at)
			watchPerSec[s]++
		}
		if ev.Verb == "update" && ev.ResponseStatus.Code == 200 && strings.HasPrefix(ev.ObjectRef.Name, "lead-") {
			if _, ok := firstRenew[ev.ObjectRef.Name]; !ok {
				firstRenew[ev.ObjectRef.Name] = at
			}
		}
	}
	sort.Slice(opens, func(i, j int) bool { return opens[i] < opens[j] })
	// A watch may open more than once (from a resourceVersion too old for the new
	// watch cache: 410, a LIST, and again): back when the last one opened.
	if len(opens) >= 2*len(f.agents) {
		r.watchesBack = opens[len(opens)-1]
	} else {
		r.watchesBack = -1
	}
	r.watchOpenP50, r.watchOpenP90 = percentile(opens, 0.5), percentile(opens, 0.9)
	r.watchOpenMax = percentile(opens, 1)
	for name := range snap {
		at, ok := firstRenew[name]
		if !ok {
			r.notRenewed++
			continue
		}
		r.renewedAll = max(r.renewedAll, at)
	}
	for _, v := range per100 {
		r.peak100ms = max(r.peak100ms, v)
	}
	var tl, wtl []string
	for s := 0; s <= min(last, 30); s++ {
		tl = append(tl, strconv.Itoa(perSec[s]))
		wtl = append(wtl, strconv.Itoa(watchPerSec[s]))
	}
	r.timeline, r.watchTimeline = strings.Join(tl, " "), strings.Join(wtl, " ")
	var all float64
	for _, v := range r.requests {
		all += v
	}
	r.requestsPerPod = all / float64(len(f.agents))

	after, err := c.cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range after.Items {
		s, ok := snap[l.Name]
		if !ok || l.Spec.HolderIdentity == nil || l.Spec.LeaseTransitions == nil {
			continue
		}
		if *l.Spec.HolderIdentity != s.holder || *l.Spec.LeaseTransitions != s.token {
			r.holderChanged++
		}
	}
	for _, l := range f.logs() {
		for _, x := range l.lost {
			if x.TS.After(r.signalled) {
				r.lost = append(r.lost, fmt.Sprintf("%s %s (%s after SIGTERM)", x.Lock, x.Reason, x.TS.Sub(r.signalled).Round(time.Millisecond)))
			}
		}
		for _, x := range l.watchErr {
			if x.TS.After(r.signalled) {
				r.watchErrors++
			}
		}
		for _, x := range l.jeopardy {
			if x.TS.After(r.signalled) {
				r.jeopardy++
			}
		}
		for _, x := range l.safe {
			if x.TS.After(r.signalled) {
				r.safe++
			}
		}
		for _, x := range l.renewErr {
			if x.TS.After(r.signalled) {
				r.renewErrors++
			}
		}
	}
	logf(b, "restart (times from the old process's exit): agents' watches: %d opened (p50 %s, p90 %s, last %s), open at the end %.0f; every held leader Lease renewed again %s (%d not); holders changed %d, lost %d, in jeopardy %d (safe again with the same token %d); agents' requests SIGTERM → ready+%s: %s (%.2f per Pod); peak %d per 100 ms; per second: %s; watch opens per second: %s; logged watch failures %d, renew failures %d",
		len(opens), r.watchOpenP50.Round(time.Millisecond), r.watchOpenP90.Round(time.Millisecond), r.watchOpenMax.Round(time.Millisecond), r.openAfter,
		r.renewedAll.Round(time.Millisecond), r.notRenewed, r.holderChanged, len(r.lost), r.jeopardy, r.safe, observeRestart, summary(r.requests, 0), r.requestsPerPod,
		r.peak100ms, r.timeline, r.watchTimeline, r.watchErrors, r.renewErrors)
	for i, l := range r.lost {
		if i == 10 {
			break
		}
		logf(b, "lost: %s", l)
	}
	return r
}

// expiryAudit describes when the agents re-opened their watches from a minute after
// the restart on: each watch ends after its own timeout (5 to 10 minutes), so the
// re-openings should spread evenly, not come in waves.
func expiryAudit(evs []auditEvent, ready time.Time) string {
	per10 := map[int]int{}
	per1 := map[int]int{}
	n, first, last := 0, -1, 0
	for _, ev := range evs {
		if !strings.HasPrefix(ev.UserAgent, "leasehold-agent") || ev.Verb != "watch" || ev.Stage != "ResponseStarted" {
			continue
		}
		at := ev.Received.Sub(ready)
		if at < time.Minute {
			continue
		}
		s := int(at / time.Second)
		per1[s]++
		per10[s/10]++
		n++
		if first < 0 || s < first {
			first = s
		}
		last = max(last, s)
	}
	if n == 0 {
		return "no watch re-opened between 1 minute after the restart and the end"
	}
	max1, max10 := 0, 0
	for _, v := range per1 {
		max1 = max(max1, v)
	}
	for _, v := range per10 {
		max10 = max(max10, v)
	}
	span := float64(last-first+1) / 10
	var hist []string
	for b := first / 30; b <= last/30; b++ {
		c := 0
		for s := b * 30; s < b*30+30; s++ {
			c += per1[s]
		}
		hist = append(hist, fmt.Sprintf("%d–%d s: %d", b*30, b*30+30, c))
	}
	return fmt.Sprintf("%d re-opened from %d s to %d s after the restart: mean %.1f per 10 s, busiest 10 s %d, busiest second %d; per 30 s: %s",
		n, first, last, float64(n)/span, max10, max1, strings.Join(hist, ", "))
}
