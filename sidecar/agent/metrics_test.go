package agent

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// parseExposition parses body with prometheus/common's text parser, as a Prometheus
// server would, and fails the test on anything it refuses.
func parseExposition(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}
	return fams
}

func labelsOf(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// The hand-written exposition is valid text format 0.0.4: counters created at 0 by
// declare, histograms with cumulative buckets ending in +Inf equal to _count, and
// _sum; label values escaped; every family the alert rules and the dashboard use.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	m := newMetrics()
	states := []lock.State{{Name: "db", Mode: lock.ModeMutex}, {Name: "sched", Mode: lock.ModeLeader, Held: true, HeldFor: 90 * time.Second}}
	m.declare(states)
	m.reg.gauge("leasehold_test_gauge", "held", []string{"lock", "mode"}, func(emit func(float64, ...string)) {
		for _, s := range states {
			v := 0.0
			if s.Held {
				v = 1
			}
			emit(v, s.Name, string(s.Mode))
		}
	})

	m.event(lock.Event{Type: lock.EventAcquired, Lock: "db", HandoverFrom: "released", Handover: 7 * time.Millisecond}, lock.ModeMutex)
	m.event(lock.Event{Type: lock.EventReleased, Lock: "db", HeldFor: 2 * time.Second}, lock.ModeMutex)
	m.event(lock.Event{Type: lock.EventAcquired, Lock: "db"}, lock.ModeMutex) // did not wait: no handover
	m.event(lock.Event{Type: lock.EventLost, Lock: "db", Cause: lock.LossDeleted, HeldFor: 500 * time.Millisecond}, lock.ModeMutex)
	m.holderChanges.inc("db")
	m.acquired("db", nil, 3*time.Millisecond)
	m.acquired("db", lock.ErrTimeout, 30*time.Second)
	m.acquired("db", &lock.HeldError{Holder: "x"}, time.Millisecond)
	m.acquired("nope", lock.ErrUndeclared, time.Millisecond) // no series for undeclared names
	m.acquired("db", fmt.Errorf("wrapped: %w", lock.ErrUnavailable), 5*time.Second)
	m.acquired("db", errors.New("odd"), 0)
	m.request("PUT", "update", "leases", 200, nil, 4*time.Millisecond)
	m.request("PUT", "update", "leases", 409, nil, 6*time.Millisecond)
	m.request("GET", "list", "leases", 0, errors.New("connection refused"), time.Second)
	m.request("POST", "create", "leases", 201, nil, 1000*time.Second) // past every bucket but +Inf
	m.reg.counter("leasehold_test_escaping_total", "a \\ and a\nnewline", "v").inc("quote \" backslash \\ newline \n")

	rec := httptest.NewRecorder()
	m.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	fams := parseExposition(t, rec.Body.String())

	value := func(name, labels string) float64 {
		t.Helper()
		f, ok := fams[name]
		if !ok {
			t.Fatalf("no family %s in:\n%s", name, rec.Body.String())
		}
		for _, mm := range f.GetMetric() {
			if labelsOf(mm) == labels {
				switch f.GetType() {
				case dto.MetricType_COUNTER:
					return mm.GetCounter().GetValue()
				case dto.MetricType_GAUGE:
					return mm.GetGauge().GetValue()
				case dto.MetricType_HISTOGRAM:
					return float64(mm.GetHistogram().GetSampleCount())
				}
			}
		}
		t.Fatalf("no series %s{%s} in:\n%s", name, labels, rec.Body.String())
		return 0
	}
	for _, c := range []struct {
		name, labels string
		want         float64
	}{
		{MetricLockEvents, "lock=db,type=acquired", 2},
		{MetricLockEvents, "lock=sched,type=lost", 0}, // declared at 0
		{MetricLockLosses, "cause=deleted,lock=db", 1},
		{MetricLockLosses, "cause=renew_deadline,lock=db", 0},
		{MetricLockHolderChanges, "lock=db", 1},
		{MetricLockHolderChanges, "lock=sched", 0},
		{MetricLockHandover, "from=released,lock=db", 1},
		{MetricLockHoldDuration, "lock=db,mode=mutex", 2},
		{MetricLockAcquireWait, "lock=db,outcome=acquired", 1},
		{MetricLockAcquireWait, "lock=db,outcome=timeout", 1},
		{MetricLockAcquireWait, "lock=db,outcome=not_acquired", 1},
		{MetricLockAcquireWait, "lock=db,outcome=unavailable", 1},
		{MetricLockAcquireWait, "lock=db,outcome=error", 1},
		{MetricAPIRequests, "method=PUT,resource=leases", 2},
		{MetricAPIDuration, "outcome=conflict,resource=leases,verb=update", 1},
		{MetricAPIDuration, "outcome=error,resource=leases,verb=list", 1},
		{"leasehold_test_gauge", "lock=sched,mode=leader", 1},
		{MetricAgentReady, "", 0}, // no engine yet
		{MetricBuildInfo, "goversion=" + goVersion() + ",revision=" + func() string { _, r := buildVersion(); return r }() + ",version=" + func() string { v, _ := buildVersion(); return v }(), 1},
		{"leasehold_test_escaping_total", "v=quote \" backslash \\ newline \n", 1},
	} {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, mm := range fams[MetricLockAcquireWait].GetMetric() {
		if strings.Contains(labelsOf(mm), "nope") {
			t.Errorf("a series for an undeclared lock: %s", labelsOf(mm))
		}
	}

	// Histograms: cumulative, ascending bounds, +Inf last and equal to _count, _sum.
	for _, name := range []string{MetricLockHoldDuration, MetricLockAcquireWait, MetricLockHandover, MetricAPIDuration} {
		for _, mm := range fams[name].GetMetric() {
			h := mm.GetHistogram()
			var prev uint64
			prevBound := math.Inf(-1)
			for _, b := range h.GetBucket() {
				if b.GetCumulativeCount() < prev || b.GetUpperBound() <= prevBound {
					t.Errorf("%s{%s}: buckets not cumulative/ascending: %v", name, labelsOf(mm), h.GetBucket())
				}
				prev, prevBound = b.GetCumulativeCount(), b.GetUpperBound()
			}
			if prev > h.GetSampleCount() {
				t.Errorf("%s{%s}: last finite bucket %d > count %d", name, labelsOf(mm), prev, h.GetSampleCount())
			}
		}
	}
	// The hold durations 2 s and 0.5 s: sum 2.5, le=0.5 holds one (le is inclusive), le=1 one, le=5 two.
	h := fams[MetricLockHoldDuration].GetMetric()[0].GetHistogram()
	if h.GetSampleSum() != 2.5 {
		t.Errorf("hold duration sum %v, want 2.5", h.GetSampleSum())
	}
	for _, b := range h.GetBucket() {
		want := map[float64]uint64{0.1: 0, 0.5: 1, 1: 1, 5: 2}
		if w, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
			t.Errorf("hold duration bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
	}
	// The +Inf bucket is written, and counts the sample past every bound.
	if !strings.Contains(rec.Body.String(), `leasehold_kube_api_request_duration_seconds_bucket{verb="create",resource="leases",outcome="ok",le="+Inf"} 1`) ||
		!strings.Contains(rec.Body.String(), `leasehold_kube_api_request_duration_seconds_bucket{verb="create",resource="leases",outcome="ok",le="10"} 0`) {
		t.Errorf("the +Inf bucket is not right:\n%s", rec.Body.String())
	}

	// Only GET /metrics: the lock API is never on this listener.
	for _, path := range []string{"/v1/locks", "/readyz", "/"} {
		rec := httptest.NewRecorder()
		m.handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if body, _ := io.ReadAll(rec.Body); rec.Code != 404 {
			t.Errorf("GET %s on the metrics listener: %d %s, want 404", path, rec.Code, body)
		}
	}
	rec = httptest.NewRecorder()
	m.handler().ServeHTTP(rec, httptest.NewRequest("POST", "/metrics", nil))
	if rec.Code != 404 && rec.Code != 405 {
		t.Errorf("POST /metrics: %d, want 404 or 405", rec.Code)
	}
}
