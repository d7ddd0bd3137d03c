package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// serve sends body to h as the API server does and decodes the AdmissionReview answer.
func serve(t testing.TB, h http.Handler, body []byte, chunked bool) (*httptest.ResponseRecorder, *admissionv1.AdmissionResponse) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if chunked {
		req.ContentLength = -1
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	out := admissionv1.AdmissionReview{}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
		return rec, nil
	}
	return rec, out.Response
}

// TestGuardRefusesOversizedReviewEarly: a review larger than MaxReviewBytes is refused
// with an admission answer that names the limit and the fix, for the request's UID (so
// the API server shows the message), before it is read into memory or decoded.
func TestGuardRefusesOversizedReviewEarly(t *testing.T) {
	limits := DefaultReviewLimits()
	h := Guard(&admission.Webhook{Handler: NewPodInjector(DefaultOptions())}, limits)
	body := largeReview(t, int(limits.MaxReviewBytes)+(1<<20))
	for _, chunked := range []bool{false, true} {
		name := "Content-Length"
		if chunked {
			name = "chunked"
		}
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			rec, resp := serve(t, h, body, chunked)
			runtime.ReadMemStats(&after)
			if resp == nil {
				t.Fatalf("HTTP %d, no AdmissionReview: %.300s", rec.Code, rec.Body)
			}
			if resp.UID != "large" || resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("want a 413 refusal for UID large, got uid=%q allowed=%v result=%+v", resp.UID, resp.Allowed, resp.Result)
			}
			for _, w := range []string{"leasehold:", "more than --max-review-bytes=4Mi", "fix:"} {
				if !strings.Contains(resp.Result.Message, w) {
					t.Errorf("message %q lacks %q", resp.Result.Message, w)
				}
			}
			// Refused before it is decoded (which allocates some 20 times the size): with
			// a Content-Length, before it is read at all; without, once MaxReviewBytes
			// have been read.
			bound := uint64(1 << 20)
			if chunked {
				bound += 3 * uint64(limits.MaxReviewBytes)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > bound {
				t.Errorf("refusing a %d-byte review allocated %d bytes, want at most %d", len(body), n, bound)
			}
		})
	}
}

// blockingHandler answers nothing until release is closed, and counts who got in.
type blockingHandler struct {
	mu      sync.Mutex
	in, max int
	release chan struct{}
}

func (b *blockingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.in++
	b.max = max(b.max, b.in)
	b.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	<-b.release
	b.mu.Lock()
	b.in--
	b.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// TestGuardBoundsReviewsInFlight: reviews in flight are bounded by their total size;
// one beyond waits at most QueueTimeout, then gets a quick, clear 429 for its UID; once
// the others are answered, reviews get in again.
func TestGuardBoundsReviewsInFlight(t *testing.T) {
	body := largeReview(t, 1<<20) // 1 MiB
	limits := ReviewLimits{MaxReviewBytes: 4 << 20, MaxInFlightBytes: 2<<20 + 64<<10, QueueTimeout: 200 * time.Millisecond}
	next := &blockingHandler{release: make(chan struct{})}
	h := Guard(next, limits)

	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { serve(t, h, body, false) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		next.mu.Lock()
		in := next.in
		next.mu.Unlock()
		if in == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reviews got in, want 2", in)
		}
		time.Sleep(5 * time.Millisecond)
	}

	start := time.Now()
	type answer struct {
		rec  *httptest.ResponseRecorder
		resp *admissionv1.AdmissionResponse
	}
	third := make(chan answer, 1)
	go func() {
		rec, resp := serve(t, h, body, false)
		third <- answer{rec, resp}
	}()
	var rec *httptest.ResponseRecorder
	var resp *admissionv1.AdmissionResponse
	select {
	case a := <-third:
		rec, resp = a.rec, a.resp
	case <-time.After(limits.QueueTimeout + 10*time.Second):
		close(next.release)
		wg.Wait()
		<-third
		t.Fatalf("the third review was not answered within %s: it got in, beyond MaxInFlightBytes", limits.QueueTimeout+10*time.Second)
	}
	waited := time.Since(start)
	next.mu.Lock()
	maxIn := next.max
	next.mu.Unlock()
	if maxIn != 2 {
		t.Errorf("%d reviews of 1 MiB were in flight at once with MaxInFlightBytes=%d, want 2", maxIn, limits.MaxInFlightBytes)
	}
	if resp == nil {
		t.Fatalf("the third review: HTTP %d, no AdmissionReview: %.300s", rec.Code, rec.Body)
	}
	if resp.UID != "large" || resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusTooManyRequests {
		t.Errorf("the third review: want a 429 refusal for UID large, got uid=%q allowed=%v result=%+v", resp.UID, resp.Allowed, resp.Result)
	} else {
		for _, w := range []string{"busy", "--max-in-flight-review-bytes", "retry"} {
			if !strings.Contains(resp.Result.Message, w) {
				t.Errorf("message %q lacks %q", resp.Result.Message, w)
			}
		}
		if resp.Result.Details == nil || resp.Result.Details.RetryAfterSeconds < 1 {
			t.Errorf("no retryAfterSeconds: %+v", resp.Result.Details)
		}
	}
	t.Logf("refused after %s (QueueTimeout %s)", waited, limits.QueueTimeout)

	close(next.release)
	wg.Wait()
	if rec, _ := serve(t, h, body, false); rec.Code != http.StatusOK {
		t.Errorf("after the others were answered: HTTP %d", rec.Code)
	}
}

// TestGuardReservesBytesAsTheyArrive: a review is counted against MaxInFlightBytes by
// the bytes that have arrived, never by the length it announces: while ten requests
// announce 4 MiB each (the whole budget, ten times over) and have sent a few bytes, a
// review of an annotated Pod gets in at once and is patched, not refused as busy.
func TestGuardReservesBytesAsTheyArrive(t *testing.T) {
	limits := DefaultReviewLimits()
	h := Guard(&admission.Webhook{Handler: NewPodInjector(DefaultOptions())}, limits)
	var (
		wg      sync.WaitGroup
		writers []*io.PipeWriter
		sent    atomic.Int32
	)
	t.Cleanup(func() {
		for _, w := range writers {
			_ = w.CloseWithError(io.ErrUnexpectedEOF)
		}
		wg.Wait()
	})
	for range 10 {
		r, w := io.Pipe()
		writers = append(writers, w)
		req := httptest.NewRequest(http.MethodPost, Path, r)
		req.ContentLength = limits.MaxReviewBytes
		wg.Go(func() { h.ServeHTTP(httptest.NewRecorder(), req) })
		wg.Go(func() { _, _ = w.Write([]byte(`{"apiVersion":`)); sent.Add(1) })
	}
	// Until the guard has read what they sent (a guard that reserves the announced
	// length reads only the first: give it a second).
	_ = wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, time.Second, true,
		func(context.Context) (bool, error) { return sent.Load() == 10, nil })
	busy := testutil.ToFloat64(Refusals.WithLabelValues(RefusedBusy))
	rec, resp := serve(t, h, annotatedReview(t, "pod-1"), false)
	if resp == nil {
		t.Fatalf("HTTP %d, no AdmissionReview: %.300s", rec.Code, rec.Body)
	}
	if !resp.Allowed || len(resp.Patch) == 0 {
		msg := ""
		if resp.Result != nil {
			msg = resp.Result.Message
		}
		t.Errorf("want allowed with a patch while slow requests announce 4 MiB each, got allowed=%v patch=%dB: %s", resp.Allowed, len(resp.Patch), msg)
	}
	if n := testutil.ToFloat64(Refusals.WithLabelValues(RefusedBusy)) - busy; n != 0 {
		t.Errorf("%v busy refusals, want none", n)
	}
}
