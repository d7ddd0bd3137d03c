package webhook

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// RequestDuration is the server-side time to answer one admission review over HTTP
// (decode, handle, encode), with buckets fine enough to read a p99 in the
// low milliseconds; controller-runtime's controller_runtime_webhook_latency_seconds
// covers the same span with decade-wide buckets.
var RequestDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
	Name:    "leasehold_webhook_request_duration_seconds",
	Help:    "Server-side duration of an admission review handled by the Leasehold injector.",
	Buckets: []float64{0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1},
})

func init() { metrics.Registry.MustRegister(RequestDuration) }

// Instrument records RequestDuration around h.
func Instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h.ServeHTTP(w, r)
		RequestDuration.Observe(time.Since(start).Seconds())
	})
}
