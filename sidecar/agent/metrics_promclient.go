//go:build promclient

package agent

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// registry is the same set of metrics on prometheus/client_golang, built only with
// -tags promclient to measure what the library costs the agent (BENCHMARKS.md).
type registry struct {
	reg   *prometheus.Registry
	types map[string]string
}

func newRegistry() *registry {
	r := &registry{reg: prometheus.NewRegistry(), types: map[string]string{}}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

type counterVec struct{ v *prometheus.CounterVec }

type histogramVec struct{ v *prometheus.HistogramVec }

func (r *registry) counter(name, help string, labels ...string) *counterVec {
	r.types[name] = "counter"
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	r.reg.MustRegister(v)
	return &counterVec{v}
}

func (r *registry) histogram(name, help string, buckets []float64, labels ...string) *histogramVec {
	r.types[name] = "histogram"
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	r.reg.MustRegister(v)
	return &histogramVec{v}
}

func (r *registry) gauge(name, help string, labels []string, collect func(emit func(float64, ...string))) {
	r.types[name] = "gauge"
	r.reg.MustRegister(&gaugeCollector{prometheus.NewDesc(name, help, labels, nil), collect})
}

func (r *registry) names() map[string]string { return r.types }

func (c *counterVec) touch(values ...string) { c.v.WithLabelValues(values...) }

func (c *counterVec) inc(values ...string) { c.v.WithLabelValues(values...).Inc() }

func (h *histogramVec) observe(v float64, values ...string) {
	h.v.WithLabelValues(values...).Observe(v)
}

type gaugeCollector struct {
	desc    *prometheus.Desc
	collect func(emit func(float64, ...string))
}

func (g *gaugeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	g.collect(func(v float64, values ...string) {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v, values...)
	})
}

func (r *registry) handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 5 * time.Second})
}
