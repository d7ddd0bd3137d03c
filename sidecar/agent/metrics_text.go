//go:build !promclient

package agent

import (
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// registry writes the Prometheus text exposition format (0.0.4) by hand, instead of
// linking prometheus/client_golang, to keep the agent within its memory budget (see
// metrics). It holds counters and histograms with labels, and gauges read at each
// scrape; families are written in the order they were made, series sorted by label
// values. TestMetricsExposition parses its output with prometheus/common's parser.
type registry struct {
	mu       sync.Mutex
	families []*family
}

type family struct {
	name, help, typ string
	labels          []string
	buckets         []float64 // histograms: upper bounds, ascending, without +Inf
	series          map[string]*series
	collect         func(emit func(float64, ...string)) // gauges
}

type series struct {
	values []string
	value  float64  // counter
	counts []uint64 // histogram: per bucket (not cumulative), then +Inf
	sum    float64
}

func newRegistry() *registry { return &registry{} }

func (r *registry) add(f *family) *family {
	f.series = map[string]*series{}
	r.mu.Lock()
	r.families = append(r.families, f)
	r.mu.Unlock()
	return f
}

type counterVec struct {
	r *registry
	f *family
}

type histogramVec struct {
	r *registry
	f *family
}

func (r *registry) counter(name, help string, labels ...string) *counterVec {
	return &counterVec{r, r.add(&family{name: name, help: help, typ: "counter", labels: labels})}
}

func (r *registry) histogram(name, help string, buckets []float64, labels ...string) *histogramVec {
	return &histogramVec{r, r.add(&family{name: name, help: help, typ: "histogram", labels: labels, buckets: buckets})}
}

// gauge adds a gauge family whose series collect emits at each scrape.
func (r *registry) gauge(name, help string, labels []string, collect func(emit func(float64, ...string))) {
	r.add(&family{name: name, help: help, typ: "gauge", labels: labels, collect: collect})
}

// get returns the series of values, creating it; r.mu must be held.
func (f *family) get(values []string) *series {
	key := strings.Join(values, "\x00")
	s, ok := f.series[key]
	if !ok {
		s = &series{values: slices.Clone(values)}
		if f.typ == "histogram" {
			s.counts = make([]uint64, len(f.buckets)+1)
		}
		f.series[key] = s
	}
	return s
}

// touch creates the series at 0.
func (c *counterVec) touch(values ...string) {
	c.r.mu.Lock()
	c.f.get(values)
	c.r.mu.Unlock()
}

func (c *counterVec) inc(values ...string) {
	c.r.mu.Lock()
	c.f.get(values).value++
	c.r.mu.Unlock()
}

func (h *histogramVec) observe(v float64, values ...string) {
	h.r.mu.Lock()
	s := h.f.get(values)
	i, _ := slices.BinarySearch(h.f.buckets, v) // first bound >= v: le is inclusive
	s.counts[i]++
	s.sum += v
	h.r.mu.Unlock()
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// writeSample writes name{labels..., extra} value.
func writeSample(b *strings.Builder, name string, labels, values []string, extraName, extraValue string, v string) {
	b.WriteString(name)
	if len(labels) > 0 || extraName != "" {
		b.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(l + `="` + labelEscaper.Replace(values[i]) + `"`)
		}
		if extraName != "" {
			if len(labels) > 0 {
				b.WriteByte(',')
			}
			b.WriteString(extraName + `="` + extraValue + `"`)
		}
		b.WriteByte('}')
	}
	b.WriteString(" " + v + "\n")
}

func (f *family) write(b *strings.Builder, rows []*series) {
	b.WriteString("# HELP " + f.name + " " + helpEscaper.Replace(f.help) + "\n# TYPE " + f.name + " " + f.typ + "\n")
	slices.SortFunc(rows, func(x, y *series) int { return slices.Compare(x.values, y.values) })
	for _, s := range rows {
		switch f.typ {
		case "histogram":
			var cum uint64
			for i, bound := range f.buckets {
				cum += s.counts[i]
				writeSample(b, f.name+"_bucket", f.labels, s.values, "le", formatFloat(bound), strconv.FormatUint(cum, 10))
			}
			cum += s.counts[len(f.buckets)]
			writeSample(b, f.name+"_bucket", f.labels, s.values, "le", "+Inf", strconv.FormatUint(cum, 10))
			writeSample(b, f.name+"_sum", f.labels, s.values, "", "", formatFloat(s.sum))
			writeSample(b, f.name+"_count", f.labels, s.values, "", "", strconv.FormatUint(cum, 10))
		default:
			writeSample(b, f.name, f.labels, s.values, "", "", formatFloat(s.value))
		}
	}
}

// expose writes every family, then the process's goroutines and resident memory.
func (r *registry) expose() string {
	var b strings.Builder
	r.mu.Lock()
	families := slices.Clone(r.families)
	r.mu.Unlock()
	for _, f := range families {
		var rows []*series
		if f.collect != nil {
			// Gauges are read outside r.mu: collect takes the locks' own mutexes.
			f.collect(func(v float64, values ...string) {
				rows = append(rows, &series{values: slices.Clone(values), value: v})
			})
			f.write(&b, rows)
			continue
		}
		r.mu.Lock()
		for _, s := range f.series {
			c := *s
			c.counts = slices.Clone(s.counts)
			rows = append(rows, &c)
		}
		r.mu.Unlock()
		f.write(&b, rows)
	}
	b.WriteString("# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\ngo_goroutines " +
		strconv.Itoa(runtime.NumGoroutine()) + "\n")
	if statm, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(statm)); len(f) > 1 {
			pages, _ := strconv.ParseFloat(f[1], 64)
			b.WriteString("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n" +
				"process_resident_memory_bytes " + formatFloat(pages*float64(os.Getpagesize())) + "\n")
		}
	}
	return b.String()
}

// names are the families' names and types, with the process metrics expose adds.
func (r *registry) names() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{"go_goroutines": "gauge", "process_resident_memory_bytes": "gauge"}
	for _, f := range r.families {
		out[f.name] = f.typ
	}
	return out
}

func (r *registry) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write([]byte(r.expose()))
	})
}
