package agent

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// metrics is a small Prometheus text exposition (format 0.0.4) of the agent's own
// counters and gauges. It is hand-written to keep the agent's memory small: the
// client library and its protobuf dependency cost more than the agent itself.
type metrics struct {
	mu       sync.Mutex
	events   map[[2]string]float64 // lock, type
	requests map[[2]string]float64 // method, resource
	mgr      *lock.Manager
}

func newMetrics() *metrics {
	return &metrics{events: map[[2]string]float64{}, requests: map[[2]string]float64{}}
}

func (m *metrics) event(lockName, typ string) {
	m.mu.Lock()
	m.events[[2]string{lockName, typ}]++
	m.mu.Unlock()
}

func (m *metrics) request(method, resource string) {
	m.mu.Lock()
	m.requests[[2]string{method, resource}]++
	m.mu.Unlock()
}

func writeFamily(b *strings.Builder, name, typ, help string, rows map[[2]string]float64, l1, l2 string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	keys := make([][2]string, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+"\x00"+keys[i][1] < keys[j][0]+"\x00"+keys[j][1] })
	for _, k := range keys {
		fmt.Fprintf(b, "%s{%s=%q,%s=%q} %s\n", name, l1, k[0], l2, k[1], strconv.FormatFloat(rows[k], 'g', -1, 64))
	}
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	m.mu.Lock()
	writeFamily(&b, "leasehold_lock_events_total", "counter", "Lock events by lock and type (acquired, lost, released, shutdown).", m.events, "lock", "type")
	writeFamily(&b, "leasehold_kube_api_requests_total", "counter", "Requests made to the Kubernetes API server, by method (WATCH for watches) and resource.", m.requests, "method", "resource")
	m.mu.Unlock()
	if m.mgr != nil {
		held, token := map[[2]string]float64{}, map[[2]string]float64{}
		for _, s := range m.mgr.States() {
			k := [2]string{s.Name, string(s.Mode)}
			token[k] = float64(s.Token)
			if s.Held {
				held[k] = 1
			} else {
				held[k] = 0
			}
		}
		writeFamily(&b, "leasehold_lock_held", "gauge", "1 while this Pod holds the lock (within renew-deadline of its last write).", held, "lock", "mode")
		writeFamily(&b, "leasehold_lock_token", "gauge", "Fencing token (leaseTransitions) last seen for the lock.", token, "lock", "mode")
	}
	fmt.Fprintf(&b, "# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines %d\n", runtime.NumGoroutine())
	if statm, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(statm)); len(f) > 1 {
			pages, _ := strconv.ParseFloat(f[1], 64)
			fmt.Fprintf(&b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %g\n", pages*float64(os.Getpagesize()))
		}
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write([]byte(b.String()))
}
