package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// scrape GETs http://addr/metrics and parses it as a Prometheus server would. It
// returns each series' value (a histogram's count) keyed by name{sorted labels}.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics of %s do not parse: %v", addr, err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			key := name + "{" + strings.Join(ls, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// Two agents share a mutex: the metrics of each show the hold, the wait, the handover
// (from the release the Lease recorded), the holder changes and, when the Lease is
// deleted under a hold, the loss and its cause. The metrics listen on every address
// (":port", as injected) and serve nothing but /metrics.
func TestMetricsOfSharedLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	a := startAgent(t, "pod-ma", "--locks=metrics-shared", fmt.Sprintf("--metrics-bind-address=:%d", pa))
	b := startAgent(t, "pod-mb", "--locks=metrics-shared", fmt.Sprintf("--metrics-bind-address=:%d", pb))
	addrA, addrB := fmt.Sprintf("127.0.0.1:%d", pa), fmt.Sprintf("127.0.0.1:%d", pb)

	if got := scrape(t, addrA); got[`leasehold_agent_ready{}`] != 1 || got[`leasehold_lock_held{lock=metrics-shared,mode=mutex}`] != 0 ||
		got[`leasehold_lock_losses_total{cause=deleted,lock=metrics-shared}`] != 0 {
		t.Fatalf("a fresh agent: want ready 1, held 0, losses at 0; got %v", got)
	}
	resp, err := http.Get("http://" + addrA + "/v1/locks")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("GET /v1/locks on the metrics port: %d, want 404 (never the lock API)", resp.StatusCode)
	}

	sa, err := a.c.Acquire(ctx, "metrics-shared", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, addrA); got[`leasehold_lock_held{lock=metrics-shared,mode=mutex}`] != 1 || got[`leasehold_lock_hold_age_seconds{lock=metrics-shared,mode=mutex}`] <= 0 {
		t.Fatalf("holder A: want held 1 and a hold age; got %v", got)
	}
	acquired := make(chan error, 1)
	go func() {
		_, err := b.c.Acquire(ctx, "metrics-shared", 20*time.Second, 0)
		acquired <- err
	}()
	waitQueue(t, "metrics-shared", b.identity()) // B is waiting
	if _, err := a.c.Release(ctx, "metrics-shared", sa.Token); err != nil {
		t.Fatal(err)
	}
	if err := <-acquired; err != nil {
		t.Fatalf("B acquire: %v", err)
	}
	gb := scrape(t, addrB)
	for key, want := range map[string]float64{
		`leasehold_lock_held{lock=metrics-shared,mode=mutex}`:                       1,
		`leasehold_lock_handover_seconds{from=released,lock=metrics-shared}`:        1,
		`leasehold_lock_acquire_wait_seconds{lock=metrics-shared,outcome=acquired}`: 1,
		`leasehold_lock_events_total{lock=metrics-shared,type=acquired}`:            1,
		`leasehold_lock_holder_changes_total{lock=metrics-shared}`:                  1,
		// Two writes: B's entry in the queue, then its acquisition (queue.go).
		`leasehold_kube_api_request_duration_seconds{outcome=ok,resource=leases,verb=update}`: 2,
	} {
		if gb[key] != want {
			t.Errorf("waiter B: %s = %v, want %v", key, gb[key], want)
		}
	}
	waitFor(t, "A to see B as the holder", func() bool {
		ga := scrape(t, addrA)
		return ga[`leasehold_lock_holder_changes_total{lock=metrics-shared}`] == 1
	})
	ga := scrape(t, addrA)
	for key, want := range map[string]float64{
		`leasehold_lock_held{lock=metrics-shared,mode=mutex}`:                       0,
		`leasehold_lock_hold_duration_seconds{lock=metrics-shared,mode=mutex}`:      1,
		`leasehold_lock_events_total{lock=metrics-shared,type=released}`:            1,
		`leasehold_lock_acquire_wait_seconds{lock=metrics-shared,outcome=acquired}`: 1,
	} {
		if ga[key] != want {
			t.Errorf("former holder A: %s = %v, want %v", key, ga[key], want)
		}
	}
	if ga[`leasehold_lock_handover_seconds{from=released,lock=metrics-shared}`] != 0 {
		t.Errorf("A acquired a free lock: no handover, got %v", ga)
	}

	// The Lease deleted under B's hold: a loss, caused by the deletion.
	if err := kube.CoordinationV1().Leases("default").Delete(ctx, "metrics-shared", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B's loss in its metrics", func() bool {
		return scrape(t, addrB)[`leasehold_lock_losses_total{cause=deleted,lock=metrics-shared}`] == 1
	})
	if gb := scrape(t, addrB); gb[`leasehold_lock_held{lock=metrics-shared,mode=mutex}`] != 0 ||
		gb[`leasehold_lock_hold_duration_seconds{lock=metrics-shared,mode=mutex}`] != 1 {
		t.Errorf("after the loss B holds nothing and the hold is measured: %v", gb)
	}
}

// A semaphore's series carry its declared name and mode semaphore, never a slot's.
func TestMetricsOfSemaphore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	a := startAgent(t, "pod-msa", "--semaphores=msem=1", fmt.Sprintf("--metrics-bind-address=:%d", pa))
	b := startAgent(t, "pod-msb", "--semaphores=msem=1", fmt.Sprintf("--metrics-bind-address=:%d", pb))
	sa, err := a.c.Acquire(ctx, "msem", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	acquired := make(chan error, 1)
	go func() {
		_, err := b.c.Acquire(ctx, "msem", 20*time.Second, 0)
		acquired <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if _, err := a.c.Release(ctx, "msem", sa.Token); err != nil {
		t.Fatal(err)
	}
	if err := <-acquired; err != nil {
		t.Fatal(err)
	}
	gb := scrape(t, fmt.Sprintf("127.0.0.1:%d", pb))
	for key, want := range map[string]float64{
		`leasehold_lock_held{lock=msem,mode=semaphore}`:                   1,
		`leasehold_lock_events_total{lock=msem,type=acquired}`:            1,
		`leasehold_lock_holder_changes_total{lock=msem}`:                  1,
		`leasehold_lock_acquire_wait_seconds{lock=msem,outcome=acquired}`: 1,
	} {
		if gb[key] != want {
			t.Errorf("waiter B: %s = %v, want %v", key, gb[key], want)
		}
	}
	for key := range gb {
		if strings.Contains(key, "lock=msem.") {
			t.Errorf("a series names a slot: %s", key)
		}
	}
}
