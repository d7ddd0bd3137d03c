package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
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
