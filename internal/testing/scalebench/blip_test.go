//go:build scalebench

package scalebench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// blips are how long kube-apiserver is frozen (SIGSTOP, then SIGCONT) under the largest
// fleet, after its restart: the whole control plane unreachable for every agent at once
// (connections open, nothing answered), as a stalled API server or a network blip
// looks. With the agents' defaults (15s/10s/2s, grace 30s), 5s is shorter than
// renew-deadline, 13s between renew-deadline and lease-duration, and 20s longer than
// lease-duration but within the grace period. SCALE_BLIPS=5s,20s; "0" skips them.
var blips = dursEnv("SCALE_BLIPS", []time.Duration{5 * time.Second, 13 * time.Second, 20 * time.Second})

// blipResult is what one freeze of kube-apiserver cost the fleet.
type blipResult struct {
	pods   int
	length time.Duration
	// renewedAll is from SIGCONT until every leader Lease held before was renewed again
	// (by whoever holds it then); notRenewed counts those that were not within
	// blipObserve. That is how long a lock went without a live holder after the API
	// server came back.
	renewedAll time.Duration
	notRenewed int
	// holderChanged counts leader Leases whose holder or token changed; lost, jeopardy
	// and safe count the agents' "Lost lock", "Lock in jeopardy", "Lock safe again".
	holderChanged, lost, jeopardy, safe int
	// safeAll is from SIGCONT until the last hold in jeopardy was safe again (the
	// agents' log).
	safeAll time.Duration
}

// blipObserve is how long after SIGCONT the renewals are waited for.
const blipObserve = 30 * time.Second

func runBlip(b *testing.B, c *cluster, f *fleet, ns string, length time.Duration) *blipResult {
	ctx := context.Background()
	r := &blipResult{pods: len(f.agents), length: length}
	type rec struct {
		holder string
		token  int32
	}
	before, err := c.cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	snap := map[string]rec{}
	for _, l := range before.Items {
		if strings.HasPrefix(l.Name, "lead-") && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && l.Spec.LeaseTransitions != nil {
			snap[l.Name] = rec{*l.Spec.HolderIdentity, *l.Spec.LeaseTransitions}
		}
	}
	p, err := os.FindProcess(c.apiPID)
	if err != nil {
		b.Fatal(err)
	}
	stopped := time.Now()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		b.Fatal(err)
	}
	time.Sleep(length)
	if err := p.Signal(syscall.SIGCONT); err != nil {
		b.Fatal(err)
	}
	resumed := time.Now()
	renewed := map[string]bool{}
	for deadline := resumed.Add(blipObserve); len(renewed) < len(snap) && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		now, err := c.cs.CoordinationV1().Leases(ns).List(lctx, metav1.ListOptions{})
		cancel()
		if err != nil {
			continue
		}
		at := time.Since(resumed)
		for _, l := range now.Items {
			if _, ok := snap[l.Name]; !ok || renewed[l.Name] || l.Spec.RenewTime == nil {
				continue
			}
			if l.Spec.RenewTime.Time.After(resumed) && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				renewed[l.Name] = true
				r.renewedAll = max(r.renewedAll, at)
			}
		}
	}
	r.notRenewed = len(snap) - len(renewed)
	time.Sleep(5 * time.Second) // the waiters' restarted expiry would run out well after this
	after, err := c.cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range after.Items {
		s, ok := snap[l.Name]
		if ok && (l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != s.holder || l.Spec.LeaseTransitions == nil || *l.Spec.LeaseTransitions != s.token) {
			r.holderChanged++
		}
	}
	for _, l := range f.logs() {
		for _, x := range l.lost {
			if x.TS.After(stopped) {
				r.lost++
			}
		}
		for _, x := range l.jeopardy {
			if x.TS.After(stopped) {
				r.jeopardy++
			}
		}
		for _, x := range l.safe {
			if x.TS.After(stopped) {
				r.safe++
				r.safeAll = max(r.safeAll, x.TS.Sub(resumed))
			}
		}
	}
	logf(b, "kube-apiserver frozen %s under %d Pods: %d held leader Leases; every one renewed again %s after SIGCONT (%d not within %s); holders or tokens changed %d; agents' log: lost %d, in jeopardy %d, safe again %d (the last %s after SIGCONT)",
		length, r.pods, len(snap), fmtD(r.renewedAll), r.notRenewed, blipObserve, r.holderChanged, r.lost, r.jeopardy, r.safe, fmtD(r.safeAll))
	return r
}

func dursEnv(name string, def []time.Duration) []time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	if v == "0" {
		return nil
	}
	var out []time.Duration
	for _, s := range strings.Split(v, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d <= 0 {
			panic(fmt.Sprintf("%s=%q: want positive Go durations, comma-separated (e.g. 5s,20s), or 0", name, v))
		}
		out = append(out, d)
	}
	return out
}
