package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

func benchReview(b *testing.B, golden string) []byte {
	pod := readPod(b, "testdata/golden/"+golden+".in.yaml")
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "bench", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "team-a", Operation: admissionv1.Create,
			Object: kruntime.RawExtension{Raw: podJSON(b, pod)},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// BenchmarkHandle is the handler alone (decode pod, parse, inject, patch).
func BenchmarkHandle(b *testing.B) {
	h := NewPodInjector(DefaultOptions())
	pod := readPod(b, "testdata/golden/template.in.yaml")
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "bench", Namespace: "team-a", Operation: admissionv1.Create,
		Object: kruntime.RawExtension{Raw: podJSON(b, pod)},
	}}
	b.ReportAllocs()
	for b.Loop() {
		if resp := h.Handle(b.Context(), req); len(resp.Patches) == 0 {
			b.Fatal("no patch")
		}
	}
}

// BenchmarkServeHTTPConcurrent100 serves the injector over TLS (an in-process
// httptest server with controller-runtime's admission.Webhook, HTTP/1.1 keep-alive) to
// 100 concurrent clients, and reports the server-side latency of single reviews
// (handler entry to response written: decode the AdmissionReview, handle, encode) as
// p50/p99, and the client-side p99 (adds TLS, loopback and the clients' own CPU, which
// shares the machine's cores with the server).
func BenchmarkServeHTTPConcurrent100(b *testing.B) {
	var (
		mu             sync.Mutex
		server, client []time.Duration
	)
	hook := &admission.Webhook{Handler: NewPodInjector(DefaultOptions())}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		hook.ServeHTTP(w, r)
		d := time.Since(start)
		mu.Lock()
		server = append(server, d)
		mu.Unlock()
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut short by Close at the end of each run
	srv.StartTLS()
	defer srv.Close()
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 100
	hc := &http.Client{Transport: tr}
	url := srv.URL + Path
	body := benchReview(b, "template")

	b.SetParallelism((100 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			mine = append(mine, time.Since(start))
			if resp.StatusCode != http.StatusOK {
				b.Errorf("HTTP %d", resp.StatusCode)
			}
		}
		mu.Lock()
		client = append(client, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	pct := func(ds []time.Duration, p int) float64 {
		slices.Sort(ds)
		return float64(ds[(len(ds)-1)*p/100].Microseconds())
	}
	if len(server) > 0 && len(client) > 0 {
		b.ReportMetric(pct(server, 50), "server-p50-µs")
		b.ReportMetric(pct(server, 99), "server-p99-µs")
		b.ReportMetric(pct(client, 99), "client-p99-µs")
	}
}

// largeReview is an AdmissionReview of an annotated Pod of about size bytes of JSON:
// 20 containers sharing out env vars of 200-byte values (the shape of a Pod that
// carries its configuration in env).
func largeReview(tb testing.TB, size int) []byte {
	tb.Helper()
	pod := readPod(tb, "testdata/golden/bare.in.yaml")
	pod.Spec.Containers = nil
	for i := range 20 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "example.com/app:1"})
	}
	value := strings.Repeat("v", 200)
	for n, i := len(podJSON(tb, pod)), 0; n < size-1024; i++ {
		c := &pod.Spec.Containers[i%len(pod.Spec.Containers)]
		c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("CONFIG_%d", i), Value: value})
		n += len(`{"name":"CONFIG_","value":""},`) + len(strconv.Itoa(i)) + len(value)
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "large", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "team-a", Operation: admissionv1.Create,
			Object: kruntime.RawExtension{Raw: podJSON(tb, pod)},
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return body
}

// memPeak samples, every millisecond until stop is closed, the Go heap (live and not
// yet collected objects) and all the memory the Go runtime holds from the OS (heap,
// stacks, metadata; released pages not counted): the process's anonymous memory, what
// counts against a container's limit beside the binary's own pages. It returns the
// highest sample of each.
func memPeak(stop <-chan struct{}) <-chan [2]uint64 {
	out := make(chan [2]uint64, 1)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"},
			{Name: "/memory/classes/heap/released:bytes"}}
		var peak [2]uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			peak[0] = max(peak[0], s[0].Value.Uint64())
			peak[1] = max(peak[1], s[1].Value.Uint64()-s[2].Value.Uint64())
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// BenchmarkLargeReview serves large reviews (Pods of 2.5 MB and of 4 MiB, near and at
// --max-review-bytes; the API server accepts up to 3 MiB of request) through the
// handler chain that leasehold-webhook registers, one at a time and 8 at once, without
// and with Guard (DefaultReviewLimits), under GOMEMLIMIT as in
// manifests/base/deployment.yaml. It reports the heap allocated per review and the
// highest heap sampled (every ms) during the run: what the webhook's memory limit must
// hold. Refused (429) reviews are counted, not failed.
func BenchmarkLargeReview(b *testing.B) {
	limit := int64(benchMemLimit)
	if q, err := resource.ParseQuantity(os.Getenv("GOMEMLIMIT")); err == nil {
		limit = q.Value() // as set for this run (GOMEMLIMIT=72MiB: the Go runtime's syntax is a quantity's)
	}
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(limit))
	b.Logf("GOMEMLIMIT %d MiB", limit>>20)
	for _, tc := range []struct {
		name       string
		size       int
		concurrent int
		guarded    bool
	}{
		{"2.5MB/concurrent=1", 2500 * 1000, 1, false},
		{"2.5MB/concurrent=8/unbounded", 2500 * 1000, 8, false},
		{"2.5MB/concurrent=8/guarded", 2500 * 1000, 8, true},
		{"4MiB/concurrent=1", 4<<20 - 4<<10, 1, true},
		{"4MiB/concurrent=8/guarded", 4<<20 - 4<<10, 8, true},
	} {
		body := largeReview(b, tc.size)
		b.Run(tc.name, func(b *testing.B) {
			var h http.Handler = &admission.Webhook{Handler: NewPodInjector(DefaultOptions())}
			if tc.guarded {
				h = Guard(h, DefaultReviewLimits())
			}
			h = Instrument(h)
			debug.FreeOSMemory()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)
			stop := make(chan struct{})
			peak := memPeak(stop)
			var refused atomic.Int64
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var wg sync.WaitGroup
				for range tc.concurrent {
					wg.Go(func() {
						req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
						req.Header.Set("Content-Type", "application/json")
						rec := httptest.NewRecorder()
						h.ServeHTTP(rec, req)
						switch {
						case strings.Contains(rec.Body.String(), `"code":429`):
							refused.Add(1)
						case rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"allowed":true`):
							b.Errorf("HTTP %d: %.300s", rec.Code, rec.Body)
						}
					})
				}
				wg.Wait()
			}
			close(stop)
			p := <-peak
			b.ReportMetric(float64(p[0])/(1<<20), "peak-heap-MiB")
			b.ReportMetric(float64(p[1])/(1<<20), "peak-go-MiB")
			b.ReportMetric(float64(base.HeapAlloc)/(1<<20), "idle-heap-MiB")
			b.ReportMetric(float64(refused.Load())/float64(b.N), "refused/op")
		})
	}
}

// benchMemLimit is GOMEMLIMIT in manifests/base/deployment.yaml.
const benchMemLimit = 90 << 20

// BenchmarkServerConcurrent100 serves reviews of an annotated Pod through the whole
// stack cmd/leasehold-webhook runs (TLS server, Instrument, Guard, admission.Webhook,
// PodInjector) to 100 concurrent keep-alive clients, on this package's Server (read
// timeout, per-peer cap, budget by bytes received) and, for comparison, on
// controller-runtime's DefaultServer, which it replaced. It reports the client-side
// p50 and p99.
func BenchmarkServerConcurrent100(b *testing.B) {
	logf.SetLogger(logr.Discard()) // the servers' start and stop, in the benchmark's output
	servers := map[string]func(crwebhook.Options) crwebhook.Server{
		"defended":           func(o crwebhook.Options) crwebhook.Server { return NewServer(o, DefaultServerOptions()) },
		"controller-runtime": func(o crwebhook.Options) crwebhook.Server { return crwebhook.NewServer(o) },
	}
	for _, name := range []string{"defended", "controller-runtime"} {
		b.Run(name, func(b *testing.B) {
			ca := newTestCA(b, "serving-ca")
			addr := startServerWith(b, ca, servers[name], DefaultReviewLimits())
			hc := apiServerClient(ca, nil)
			hc.Transport.(*http.Transport).MaxIdleConnsPerHost = 100
			body := annotatedReview(b, "pod-1")
			var (
				mu   sync.Mutex
				lats []time.Duration
			)
			b.SetParallelism((100 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					start := time.Now()
					resp, err := hc.Post("https://"+addr+Path, "application/json", bytes.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("HTTP %d", resp.StatusCode)
						return
					}
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lats = append(lats, mine...)
				mu.Unlock()
			})
			b.StopTimer()
			if len(lats) > 0 {
				slices.Sort(lats)
				b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "client-p50-µs")
				b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "client-p99-µs")
			}
		})
	}
}
