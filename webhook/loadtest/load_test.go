//go:build loadtest

// Package loadtest measures the webhook as it runs: the real leasehold-webhook binary
// serving TLS, registered with a real kube-apiserver through manifests/base's
// MutatingWebhookConfiguration. It reports the binary's memory (RSS and PSS, file-backed
// and anonymous) idle and under a load of AdmissionReviews (LOAD_RATE per second, 0 =
// closed loop; LOAD_REVIEWS; LOAD_CONCURRENCY), then the latency that the webhook adds
// to Pod creation through the API server: CREATE_PODS Pods per arm, with and without
// the webhook interleaved in random order (CREATE_SEED), with bootstrap intervals.
// Run with `make bench-webhook`; results go to BENCHMARKS.md. It is a measurement, not
// a test: it fails only when it cannot measure.
package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/webhook"
)

func env(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return sortedPct(s, p)
}

// sortedPct is the nearest-rank percentile p of sorted s.
func sortedPct(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[max(int(math.Ceil(float64(len(s))*p/100))-1, 0)]
}

// rssKiB reads VmRSS and VmHWM (peak) of pid.
func rssKiB(pid int) (rss, hwm int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "VmRSS:":
			rss, _ = strconv.Atoi(fields[1])
		case "VmHWM:":
			hwm, _ = strconv.Atoi(fields[1])
		}
	}
	return rss, hwm
}

// cpuSeconds is the user and system CPU time pid has used (/proc/<pid>/stat).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// histogramP99 reads a Prometheus histogram from a /metrics text body and returns the
// smallest bucket bound holding 99% of the observations.
func histogramP99(body, name string) (bound string, count float64) {
	type bucket struct {
		le    string
		count float64
	}
	var buckets []bucket
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"_count") {
			count, _ = strconv.ParseFloat(strings.Fields(line)[1], 64)
		}
		if !strings.HasPrefix(line, name+"_bucket{") {
			continue
		}
		i := strings.Index(line, `le="`)
		le := line[i+4 : i+4+strings.Index(line[i+4:], `"`)]
		c, _ := strconv.ParseFloat(strings.Fields(line)[len(strings.Fields(line))-1], 64)
		buckets = append(buckets, bucket{le, c})
	}
	for _, b := range buckets {
		if count > 0 && b.count >= 0.99*count {
			return b.le, count
		}
	}
	return "?", count
}

func TestLoad(t *testing.T) {
	bin := os.Getenv("LEASEHOLD_WEBHOOK_BIN")
	if bin == "" {
		t.Fatal("set LEASEHOLD_WEBHOOK_BIN to a built leasehold-webhook (make bench-webhook does)")
	}
	e, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	e.WebhookInstallOptions = envtest.WebhookInstallOptions{
		Paths: []string{filepath.Join("..", "..", "manifests", "base", "mutatingwebhookconfiguration.yaml")},
	}
	cfg, err := e.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	wo := e.WebhookInstallOptions
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, e.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}

	metricsPort, probePort := testenv.FreePort(t), testenv.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--kubeconfig="+kubeconfig, "--self-signed-certs=false", "--cert-dir="+wo.LocalServingCertDir,
		"--webhook-port="+strconv.Itoa(wo.LocalServingPort),
		"--metrics-bind-address=127.0.0.1:"+strconv.Itoa(metricsPort), "--metrics-secure=false",
		"--health-probe-bind-address=127.0.0.1:"+strconv.Itoa(probePort))
	cmd.Env = append(os.Environ(), "GOMEMLIMIT="+envString("WEBHOOK_GOMEMLIMIT", "90MiB"), "GOGC="+envString("WEBHOOK_GOGC", "100"))
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	}); err != nil {
		t.Fatalf("webhook not ready: %v\n%s", err, logs.String())
	}
	pid := cmd.Process.Pid
	idle := time.Duration(env("LOAD_IDLE_SECONDS", 2)) * time.Second // longer to inspect the process
	time.Sleep(idle)
	t.Logf("webhook pid %d ready (GOMEMLIMIT=%s GOGC=%s), idle %v: %s", pid, envString("WEBHOOK_GOMEMLIMIT", "90MiB"), envString("WEBHOOK_GOGC", "100"), idle, rollup(pid))

	// 1. Load against the TLS endpoint: C concurrent clients, N reviews.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(wo.LocalServingCAData)
	concurrency, total := env("LOAD_CONCURRENCY", 100), env("LOAD_REVIEWS", 20000)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: concurrency, ForceAttemptHTTP2: false}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := fmt.Sprintf("https://127.0.0.1:%d%s", wo.LocalServingPort, webhook.Path)
	body := reviewBody(t)

	var peakRSS int
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				if r, _ := rssKiB(pid); r > peakRSS {
					peakRSS = r
				}
			}
		}
	}()
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs int
		next = make(chan struct{}, total)
		wg   sync.WaitGroup
	)
	// LOAD_RATE=0: closed loop, every client sends its next review as soon as the last
	// is answered (saturation). LOAD_RATE=r: reviews are released at r per second
	// (open loop), still served by up to `concurrency` clients at once.
	rate := env("LOAD_RATE", 0)
	go func() {
		defer close(next)
		if rate <= 0 {
			for range total {
				next <- struct{}{}
			}
			return
		}
		interval := time.Second / time.Duration(rate)
		t0 := time.Now()
		for i := range total {
			time.Sleep(time.Until(t0.Add(time.Duration(i) * interval)))
			next <- struct{}{}
		}
	}()
	cpu0 := cpuSeconds(pid)
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for range next {
				s := time.Now()
				resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					mu.Lock()
					errs++
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(s))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopSampling)
	<-sampled
	_, hwm := rssKiB(pid)
	cpu := cpuSeconds(pid) - cpu0
	t.Logf("TLS load: at the end: %s", rollup(pid))
	if errs > 0 {
		t.Errorf("%d of %d reviews failed", errs, total)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	bound, count := histogramP99(string(mb), "leasehold_webhook_request_duration_seconds")
	crBound, _ := histogramP99(string(mb), "controller_runtime_webhook_latency_seconds")
	t.Logf("TLS load: %d reviews, %d concurrent clients, rate %s, %.0f reviews/s achieved", len(lats), concurrency,
		map[bool]string{true: "unlimited (closed loop)", false: strconv.Itoa(rate) + "/s (open loop)"}[rate <= 0],
		float64(len(lats))/elapsed.Seconds())
	t.Logf("TLS load: webhook CPU %.2f s (user+system), %.0f µs per review", cpu, cpu/float64(max(len(lats), 1))*1e6)
	t.Logf("TLS load: client-side latency p50 %v p99 %v max %v", pct(lats, 50), pct(lats, 99), pct(lats, 100))
	t.Logf("TLS load: server-side p99 <= %ss (leasehold_webhook_request_duration_seconds bucket, %v observations); controller-runtime latency p99 bucket <= %ss",
		bound, count, crBound)
	t.Logf("TLS load: webhook RSS peak sampled %.1f MiB, VmHWM %.1f MiB", float64(peakRSS)/1024, float64(hwm)/1024)
	t.Logf("TLS load: Go runtime after the load (/metrics): %s", goMem(string(mb)))

	// 2. Creating an annotated Pod through the API server, with the webhook and without,
	// interleaved in one run: the same Pod, created in a namespace the webhook
	// configuration selects ("bench") or in one its namespaceSelector excludes
	// ("leasehold-system", the webhook's own), in blocks of one of each in random order,
	// so that drift in the machine's load falls on both arms alike.
	pods := env("CREATE_PODS", 3000)
	if pods <= 0 {
		return
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const nsOn, nsOff = "bench", "leasehold-system"
	for _, ns := range []string{nsOn, nsOff} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	seq := 0
	create := func(ns string) (time.Duration, bool, error) {
		seq++
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", seq),
				Annotations: map[string]string{webhook.AnnotationLocks: "db"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
		}
		s := time.Now()
		err := c.Create(ctx, p)
		return time.Since(s), len(p.Spec.InitContainers) == 1, err
	}
	// The API server learns of new namespaces and of the webhook configuration
	// asynchronously: create until a Pod in "bench" is injected.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		_, injected, err := create(nsOn)
		return err == nil && injected, nil
	}); err != nil {
		t.Fatalf("the webhook does not inject Pods in namespace %s: %v", nsOn, err)
	}
	calls0 := webhookCalls(ctx, t, cfg)
	rng := rand.New(rand.NewPCG(uint64(env("CREATE_SEED", 1)), 0))
	warmup := 50
	var on, off []time.Duration
	for i := range warmup + pods {
		order := []bool{true, false}
		if rng.IntN(2) == 0 {
			order = []bool{false, true}
		}
		for _, wantOn := range order {
			ns := map[bool]string{true: nsOn, false: nsOff}[wantOn]
			d, injected, err := create(ns)
			if err != nil {
				t.Fatalf("create pod in %s: %v", ns, err)
			}
			if injected != wantOn {
				t.Fatalf("pod in %s injected=%v, want %v", ns, injected, wantOn)
			}
			if i < warmup {
				continue
			}
			if wantOn {
				on = append(on, d)
			} else {
				off = append(off, d)
			}
		}
	}
	if calls := webhookCalls(ctx, t, cfg); calls.count > calls0.count {
		t.Logf("API server's view of the webhook call (apiserver_admission_webhook_admission_duration_seconds): %v calls, mean %v",
			calls.count-calls0.count, time.Duration((calls.sum-calls0.sum)/(calls.count-calls0.count)*float64(time.Second)))
	}
	t.Logf("Pod create via API server, %d annotated Pods per arm after %d warm-up pairs, interleaved in random order, one at a time:", len(on), warmup)
	boot := bootstrap(on, off, 1000, rng)
	for _, q := range []float64{50, 99, 99.9} {
		t.Logf("  p%-4v with webhook %-9v without %-9v added %-9v (95%% bootstrap interval of added: %v to %v)",
			q, pct(on, q).Round(time.Microsecond), pct(off, q).Round(time.Microsecond),
			(pct(on, q) - pct(off, q)).Round(time.Microsecond), boot[q][0].Round(time.Microsecond), boot[q][1].Round(time.Microsecond))
	}
}

// bootstrap resamples both arms n times and returns, for p50, p99 and p99.9, the 2.5th
// and 97.5th percentiles of the added latency (with minus without).
func bootstrap(on, off []time.Duration, n int, rng *rand.Rand) map[float64][2]time.Duration {
	added := map[float64][]time.Duration{}
	a, b := make([]time.Duration, len(on)), make([]time.Duration, len(off))
	for range n {
		for i := range a {
			a[i] = on[rng.IntN(len(on))]
		}
		for i := range b {
			b[i] = off[rng.IntN(len(off))]
		}
		slices.Sort(a)
		slices.Sort(b)
		for _, q := range []float64{50, 99, 99.9} {
			added[q] = append(added[q], sortedPct(a, q)-sortedPct(b, q))
		}
	}
	out := map[float64][2]time.Duration{}
	for q, ds := range added {
		out[q] = [2]time.Duration{pct(ds, 2.5), pct(ds, 97.5)}
	}
	return out
}

type sumCount struct{ sum, count float64 }

// webhookCalls reads the API server's own histogram of its calls to the webhook.
func webhookCalls(ctx context.Context, t *testing.T, cfg *rest.Config) sumCount {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := cs.RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Logf("API server metrics: %v", err)
		return sumCount{}
	}
	sum, count := metricSumCount(string(raw), "apiserver_admission_webhook_admission_duration_seconds", `name="inject.leasehold.io"`)
	return sumCount{sum, count}
}

// rollup summarises /proc/<pid>/smaps_rollup: the resident set (RSS) and the
// proportional set (PSS: shared pages divided among the processes mapping them), each
// split into file-backed pages (the binary's code and data) and anonymous memory.
func rollup(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return err.Error()
	}
	kB := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			v, _ := strconv.ParseFloat(f[1], 64)
			kB[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return fmt.Sprintf("RSS %.1f MiB (file %.1f, anon %.1f), PSS %.1f MiB (file %.1f, anon %.1f)",
		kB["Rss"]/1024, (kB["Rss"]-kB["Anonymous"])/1024, kB["Anonymous"]/1024,
		kB["Pss"]/1024, kB["Pss_File"]/1024, kB["Pss_Anon"]/1024)
}

// goMem summarises the Go runtime's memory gauges of a /metrics body (client_golang's
// Go collector): the heap in use, goroutine stacks, and the heap goal of the next GC.
func goMem(body string) string {
	val := func(name string) float64 {
		for _, line := range strings.Split(body, "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == name {
				v, _ := strconv.ParseFloat(f[1], 64)
				return v
			}
		}
		return -1
	}
	const mib = 1 << 20
	return fmt.Sprintf("heap in use %.1f MiB, stacks %.1f MiB, next GC at %.1f MiB, %v goroutines",
		val("go_memstats_heap_inuse_bytes")/mib, val("go_memstats_stack_inuse_bytes")/mib, val("go_memstats_next_gc_bytes")/mib, val("go_goroutines"))
}

// metricSumCount returns a histogram's _sum and _count for the series whose labels
// contain match.
func metricSumCount(body, name, match string) (sum, count float64) {
	for _, line := range strings.Split(body, "\n") {
		if !strings.Contains(line, match) {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		switch {
		case strings.HasPrefix(line, name+"_sum{"):
			sum += v
		case strings.HasPrefix(line, name+"_count{"):
			count += v
		}
	}
	return sum, count
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func reviewBody(t *testing.T) []byte {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-7c9d8b6f5-", Namespace: "team-a",
			Labels:      map[string]string{"app": "web", "pod-template-hash": "7c9d8b6f5"},
			Annotations: map[string]string{webhook.AnnotationLeader: "web-leader"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example.com/web:2",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "load", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "team-a", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
