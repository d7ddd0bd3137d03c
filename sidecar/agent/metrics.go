package agent

import (
	"context"
	"errors"
	"net/http"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// Metric names, also used by the alert rules and the dashboard in manifests/monitoring
// (a test checks that every name they use is one the agent or the webhook serves).
const (
	MetricLockHeld          = "leasehold_lock_held"
	MetricLockJeopardy      = "leasehold_lock_jeopardy"
	MetricLockToken         = "leasehold_lock_token"
	MetricLockHoldAge       = "leasehold_lock_hold_age_seconds"
	MetricLockEvents        = "leasehold_lock_events_total"
	MetricLockHolderChanges = "leasehold_lock_holder_changes_total"
	MetricLockLosses        = "leasehold_lock_losses_total"
	MetricLockHoldDuration  = "leasehold_lock_hold_duration_seconds"
	MetricLockAcquireWait   = "leasehold_lock_acquire_wait_seconds"
	MetricLockHandover      = "leasehold_lock_handover_seconds"
	MetricAPIRequests       = "leasehold_kube_api_requests_total"
	MetricAPIDuration       = "leasehold_kube_api_request_duration_seconds"
	MetricAgentReady        = "leasehold_agent_ready"
	MetricBuildInfo         = "leasehold_build_info"
)

// Outcomes of an acquire call (leasehold_lock_acquire_wait_seconds).
const (
	acquireAcquired    = "acquired"
	acquireNotAcquired = "not_acquired"
	acquireTimeout     = "timeout"
	acquireCanceled    = "canceled"
	acquireUnavailable = "unavailable"
	acquireShutdown    = "shutdown"
	acquireError       = "error"
)

// metrics are the agent's Prometheus metrics. Label values are bounded: lock names are
// the Pod's declared locks, causes and outcomes are fixed sets; the holder's identity is
// never a label.
//
// The registry behind them is written by hand (metrics_text.go) rather than taken from
// prometheus/client_golang (metrics_promclient.go, built with -tags promclient): linking
// client_golang makes the idle agent 16.2 MiB instead of 14.2, and 18.9 MiB instead of 14.6 once
// scraped, which breaks the agent's 15 MiB budget (BENCHMARKS.md, "Agent metrics: the cost
// of client_golang"). Both serve the same metrics; a unit test parses the hand-written
// exposition with prometheus/common's text parser.
type metrics struct {
	reg           *registry
	eng           atomic.Pointer[engine] // set by watch, before the metrics are served
	events        *counterVec
	holderChanges *counterVec
	losses        *counterVec
	holdDuration  *histogramVec
	acquireWait   *histogramVec
	handover      *histogramVec
	requests      *counterVec
	apiDuration   *histogramVec
}

func newMetrics() *metrics {
	r := newRegistry()
	m := &metrics{
		reg: r,
		events: r.counter(MetricLockEvents,
			"Lock events of this Pod by lock and type (acquired, lost, released, shutdown).", "lock", "type"),
		holderChanges: r.counter(MetricLockHolderChanges,
			"Changes of the lock's holder (any Pod) that this agent saw on the Lease. Every agent of a lock counts the same changes: take max, not sum, across them.", "lock"),
		losses: r.counter(MetricLockLosses,
			"Holds of this Pod that ended without a release, by cause (renew_deadline, taken_over, rewritten, deleted, conflict). The client was told through its event stream and validFor; any increase deserves a look.", "lock", "cause"),
		holdDuration: r.histogram(MetricLockHoldDuration,
			"How long the holds of this Pod lasted, observed when each ended (released, lost, shut down).",
			[]float64{0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600}, "lock", "mode"),
		acquireWait: r.histogram(MetricLockAcquireWait,
			"Time an acquire call of the local API took, from the request to the answer, by outcome (acquired, not_acquired, timeout, canceled, unavailable, shutdown, error).",
			[]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900}, "lock", "outcome"),
		handover: r.histogram(MetricLockHandover,
			"For acquisitions that waited for another holder: from the moment the Lease says the lock became free "+
				"(from=released: the previous holder's release write; from=expired: its last renewTime + leaseDurationSeconds) "+
				"to this agent's successful write. Compares two Pods' wall clocks.",
			[]float64{0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}, "lock", "from"),
		requests: r.counter(MetricAPIRequests,
			"Requests made to the Kubernetes API server, by method (WATCH for watches) and resource.", "method", "resource"),
		apiDuration: r.histogram(MetricAPIDuration,
			"Time to the answer of a request to the Kubernetes API server (for a watch: until it is open), by verb, "+
				"resource and outcome (ok, conflict, not_found, forbidden, throttled, client_error, server_error, error: no answer).",
			[]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}, "verb", "resource", "outcome"),
	}
	version, revision := buildVersion()
	r.gauge(MetricBuildInfo, "1, labelled with the agent's version (the main module's), VCS revision and Go version.",
		[]string{"version", "revision", "goversion"}, func(emit func(float64, ...string)) { emit(1, version, revision, goVersion()) })
	m.stateGauges()
	return m
}

// watch makes the state gauges read eng, and creates the counters of its locks.
func (m *metrics) watch(eng *engine) {
	m.eng.Store(eng)
	m.declare(eng.States())
}

// states are the locks' states for the gauges, from memory (no API call).
func (m *metrics) states() []lock.State {
	if eng := m.eng.Load(); eng != nil {
		return eng.States()
	}
	return nil
}

// stateGauges adds the gauges read from the engine at each scrape.
func (m *metrics) stateGauges() {
	m.reg.gauge(MetricLockHeld, "1 while this Pod holds the lock (within renew-deadline of its last successful write), else 0.",
		[]string{"lock", "mode"}, func(emit func(float64, ...string)) {
			for _, s := range m.states() {
				held := 0.0
				if s.Held {
					held = 1
				}
				emit(held, s.Name, string(s.Mode))
			}
		})
	m.reg.gauge(MetricLockJeopardy, "1 while this Pod's hold of the lock is in jeopardy (renew-deadline passed while the API server was unavailable; not held, may resume with the same token within the grace period), else 0.",
		[]string{"lock", "mode"}, func(emit func(float64, ...string)) {
			for _, s := range m.states() {
				v := 0.0
				if s.Phase == lock.PhaseJeopardy {
					v = 1
				}
				emit(v, s.Name, string(s.Mode))
			}
		})
	m.reg.gauge(MetricLockToken, "Fencing token (the Lease's leaseTransitions) of this Pod's hold, or the last one seen when not held.",
		[]string{"lock", "mode"}, func(emit func(float64, ...string)) {
			for _, s := range m.states() {
				emit(float64(s.Token), s.Name, string(s.Mode))
			}
		})
	m.reg.gauge(MetricLockHoldAge, "How long this Pod's current hold of the lock has lasted; 0 when not held.",
		[]string{"lock", "mode"}, func(emit func(float64, ...string)) {
			for _, s := range m.states() {
				emit(s.HeldFor.Seconds(), s.Name, string(s.Mode))
			}
		})
	m.reg.gauge(MetricAgentReady, "1 when the agent is ready (every Lease synced with the API server, Lease writes allowed), else 0; as /readyz.",
		nil, func(emit func(float64, ...string)) {
			ready := 0.0
			if eng := m.eng.Load(); eng != nil && eng.Ready() == nil {
				ready = 1
			}
			emit(ready)
		})
}

// MetricNames are the names and types of the metric families the agent serves (for the
// tests of the alert rules and the dashboard).
func MetricNames() map[string]string { return newMetrics().reg.names() }

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// buildVersion is the main module's version and VCS revision, as the Go toolchain
// stamped them into the binary.
func buildVersion() (version, revision string) {
	version, revision = "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return
}

// declare creates every series of the declared locks at 0, so that rate() and
// increase() see the first event (a series born at 1 hides its first increment).
func (m *metrics) declare(states []lock.State) {
	for _, s := range states {
		for _, t := range lock.EventTypes {
			m.events.touch(s.Name, string(t))
		}
		m.holderChanges.touch(s.Name)
		for _, c := range lock.LossCauses {
			m.losses.touch(s.Name, c)
		}
	}
}

// event records ev; called from the lock's OnEvent (must not block).
func (m *metrics) event(ev lock.Event, mode lock.Mode) {
	m.events.inc(ev.Lock, string(ev.Type))
	switch ev.Type {
	case lock.EventLost:
		m.losses.inc(ev.Lock, ev.Cause)
		m.holdDuration.observe(ev.HeldFor.Seconds(), ev.Lock, string(mode))
	case lock.EventReleased:
		m.holdDuration.observe(ev.HeldFor.Seconds(), ev.Lock, string(mode))
	case lock.EventAcquired:
		if ev.HandoverFrom != "" {
			m.handover.observe(ev.Handover.Seconds(), ev.Lock, ev.HandoverFrom)
		}
	}
}

// acquired records one acquire call of a declared lock.
func (m *metrics) acquired(name string, err error, d time.Duration) {
	outcome := acquireError
	switch {
	case err == nil:
		outcome = acquireAcquired
	case errors.Is(err, lock.ErrUndeclared):
		return // not a declared lock: no series for names a client makes up
	case errors.Is(err, lock.ErrTimeout):
		outcome = acquireTimeout
	case errors.Is(err, lock.ErrNotAcquired):
		outcome = acquireNotAcquired
	case errors.Is(err, lock.ErrShutdown):
		outcome = acquireShutdown
	case errors.Is(err, lock.ErrUnavailable), errors.Is(err, lock.ErrForbidden):
		outcome = acquireUnavailable
	case errors.Is(err, context.Canceled):
		outcome = acquireCanceled
	}
	m.acquireWait.observe(d.Seconds(), name, outcome)
}

// request records one request to the API server and its answer.
func (m *metrics) request(method, verb, resource string, code int, err error, d time.Duration) {
	m.requests.inc(method, resource)
	outcome := "error"
	switch {
	case err != nil:
	case code < 400:
		outcome = "ok"
	case code == http.StatusConflict:
		outcome = "conflict"
	case code == http.StatusNotFound:
		outcome = "not_found"
	case code == http.StatusForbidden:
		outcome = "forbidden"
	case code == http.StatusTooManyRequests:
		outcome = "throttled"
	case code < 500:
		outcome = "client_error"
	default:
		outcome = "server_error"
	}
	m.apiDuration.observe(d.Seconds(), verb, resource, outcome)
}

// handler serves /metrics and nothing else: the metrics listener is on the Pod's IP,
// and never serves the lock API.
func (m *metrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.reg.handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "only GET /metrics is served here; the lock API is on the Pod's Unix socket", http.StatusNotFound)
	})
	return mux
}
