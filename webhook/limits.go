package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// ReviewLimits bound what the webhook takes in, so that no burst of reviews can push
// it past its memory limit (with failurePolicy Fail, an OOM-killed webhook refuses
// every annotated Pod). Decoding a review, injecting and diffing the Pod allocates
// about 20 times the review's size (BENCHMARKS.md, "Large reviews").
type ReviewLimits struct {
	// MaxReviewBytes is the largest AdmissionReview accepted; a larger one is refused
	// (413) before it is read. The default, 4 MiB, passes every Pod the API server can
	// store: etcd takes about 1.5 MiB of protobuf, at most 3 MiB as JSON (the API
	// server's own limit for a request body, which assumes JSON at most twice
	// protobuf), plus the rest of the review.
	MaxReviewBytes int64
	// MaxInFlightBytes bounds the total size of the reviews being received and handled
	// at once: a review counts by the bytes that have arrived, reserved as they are
	// read (never by the Content-Length it announces), and at least MinReviewWeight
	// once whole. A review that finds no room waits up to QueueTimeout, then is
	// refused (429, retry after a second). At least MaxReviewBytes.
	MaxInFlightBytes int64
	// QueueTimeout is how long a review waits for room; well within the webhook
	// configuration's timeoutSeconds (5).
	QueueTimeout time.Duration
}

// MinReviewWeight is what the smallest review counts against MaxInFlightBytes: the
// handler allocates some 60 KB even for a small Pod.
const MinReviewWeight = 64 << 10

// DefaultReviewLimits returns the flag defaults: reviews up to 4 MiB, 4 MiB of them in
// flight (one Pod as large as etcd stores, or 64 ordinary ones), 2 s of queueing.
func DefaultReviewLimits() ReviewLimits {
	return ReviewLimits{MaxReviewBytes: 4 << 20, MaxInFlightBytes: 4 << 20, QueueTimeout: 2 * time.Second}
}

// BindFlags registers the limits on fs.
func (l *ReviewLimits) BindFlags(fs *flag.FlagSet) {
	bytesFlag(fs, &l.MaxReviewBytes, "max-review-bytes", "Largest admission review accepted; larger ones are refused unread (413).")
	bytesFlag(fs, &l.MaxInFlightBytes, "max-in-flight-review-bytes",
		"Total size of the reviews handled at once (the webhook's memory limit is sized for it); beyond, a review waits up to 2s, then gets 429.")
}

func bytesFlag(fs *flag.FlagSet, v *int64, name, usage string) {
	fs.Func(name, fmt.Sprintf("%s (a quantity, default %s)", usage, sizeString(*v)), func(s string) error {
		q, err := resource.ParseQuantity(s)
		if err != nil {
			return err
		}
		*v = q.Value()
		return nil
	})
}

// Validate checks the limits, naming the flag to fix.
func (l ReviewLimits) Validate() error {
	var errs []error
	if l.MaxReviewBytes < MinReviewWeight {
		errs = append(errs, fmt.Errorf("--max-review-bytes=%d must be at least %d", l.MaxReviewBytes, MinReviewWeight))
	}
	if l.MaxInFlightBytes < l.MaxReviewBytes {
		errs = append(errs, fmt.Errorf("--max-in-flight-review-bytes=%d must be at least --max-review-bytes=%d, or the largest review never gets in",
			l.MaxInFlightBytes, l.MaxReviewBytes))
	}
	if l.QueueTimeout < 0 {
		errs = append(errs, fmt.Errorf("queue timeout %s must not be negative", l.QueueTimeout))
	}
	return errors.Join(errs...)
}

// Refusals counts reviews refused before they reached the injector, by reason.
var Refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "leasehold_webhook_reviews_refused_total",
	Help: "Admission reviews refused before they were decoded: too-large (over --max-review-bytes) or busy " +
		"(no room within --max-in-flight-review-bytes in time).",
}, []string{"reason"})

// Refusal reasons.
const (
	RefusedTooLarge = "too-large"
	RefusedBusy     = "busy"
)

func init() {
	metrics.Registry.MustRegister(Refusals)
	Refusals.WithLabelValues(RefusedTooLarge)
	Refusals.WithLabelValues(RefusedBusy)
}

// Guard puts l in front of next (the admission webhook): it refuses a review that
// announces more than l.MaxReviewBytes before reading it (or once it has read that
// much), reads every other review whole before next sees it, reserving its bytes in
// l.MaxInFlightBytes as they arrive, and holds them until next has answered. Refusals
// are AdmissionReview answers for the request's UID (read from the start of the body),
// so the API server shows their message: "admission webhook ... denied the request:
// leasehold: ...".
//
// A client that sends slowly holds only what it sent; the server's read timeout
// (ServerOptions.ReadTimeout) ends it. Two large reviews arriving together may each
// hold part of the budget and wait for the rest: the first to reach QueueTimeout is
// refused, which lets the other in.
func Guard(next http.Handler, l ReviewLimits) http.Handler {
	return &guard{next: next, l: l, sem: semaphore.NewWeighted(l.MaxInFlightBytes)}
}

type guard struct {
	next http.Handler
	l    ReviewLimits
	sem  *semaphore.Weighted
}

// uidPrefix is how much of a refused review is read to find its UID, namespace and
// name, which the API server writes before the object.
const uidPrefix = 64 << 10

// firstBuffer is the most the guard allocates for a review before any of it has
// arrived; the buffer then doubles as bytes arrive (at most twice what arrived).
const firstBuffer = 4 << 10

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		g.next.ServeHTTP(w, r)
		return
	}
	// Every wait for room ends QueueTimeout after the request came in; the server's
	// read timeout (ServerOptions.ReadTimeout) ends a body that trickles in.
	ctx, cancel := context.WithTimeout(r.Context(), g.l.QueueTimeout)
	defer cancel()
	if size := r.ContentLength; size > g.l.MaxReviewBytes {
		// Refused unread, but for its UID, within the budget like any other bytes.
		prefix, held, _ := g.read(ctx, r.Body, uidPrefix, firstBuffer)
		g.tooLarge(w, prefix, size)
		g.sem.Release(held)
		return
	}
	first := int64(firstBuffer)
	if r.ContentLength >= 0 && r.ContentLength < first {
		first = r.ContentLength + 1 // room for the EOF: no second buffer
	}
	body, held, err := g.read(ctx, http.MaxBytesReader(w, r.Body, g.l.MaxReviewBytes), g.l.MaxReviewBytes+1, first)
	defer func() { g.sem.Release(held) }()
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		g.tooLarge(w, body, -1)
		return
	case errors.Is(err, errNoRoom):
		g.busy(w, body)
		return
	case err != nil:
		// Mostly the server's read timeout: the client sent too slowly.
		http.Error(w, fmt.Sprintf("read the admission review: %v", err), http.StatusBadRequest)
		return
	}
	// Handling allocates about MinReviewWeight even for a small review: hold that much.
	if held < MinReviewWeight {
		if more := MinReviewWeight - held; !g.sem.TryAcquire(more) && g.sem.Acquire(ctx, more) != nil {
			g.busy(w, body)
			return
		}
		held = MinReviewWeight
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	g.next.ServeHTTP(w, r)
}

// errNoRoom is read's error when the budget had no room for the bytes that arrived
// before ctx ended.
var errNoRoom = errors.New("no room in --max-in-flight-review-bytes")

// read reads body up to limit bytes, reserving in g.sem what each read brought as it
// arrives (never a length the client announced), waiting for room until ctx ends. It
// reads into a buffer of first bytes, doubled when full. It returns what it read and
// how much it holds (the caller releases it), also on error.
func (g *guard) read(ctx context.Context, body io.Reader, limit, first int64) ([]byte, int64, error) {
	buf := make([]byte, 0, min(first, limit))
	var held int64
	for int64(len(buf)) < limit {
		if len(buf) == cap(buf) {
			// Double (append grows large slices by a quarter: five times the
			// allocation for a 4 MiB review), never past limit.
			grown := make([]byte, len(buf), min(2*int64(cap(buf)), limit))
			copy(grown, buf)
			buf = grown
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		if n > 0 {
			// Wait only when there is no room: a client that merely sends slowly is
			// the server's read timeout's to end, not a "busy" refusal.
			if !g.sem.TryAcquire(int64(n)) && g.sem.Acquire(ctx, int64(n)) != nil {
				return buf, held, errNoRoom
			}
			held += int64(n)
			buf = buf[:len(buf)+n]
		}
		if errors.Is(err, io.EOF) {
			return buf, held, nil
		}
		if err != nil {
			return buf, held, err
		}
	}
	return buf, held, nil
}

func (g *guard) busy(w http.ResponseWriter, read []byte) {
	Refusals.WithLabelValues(RefusedBusy).Inc()
	uid, pod := reviewOf(read)
	refuse(w, uid, http.StatusTooManyRequests, fmt.Sprintf(
		"leasehold: the webhook is busy: no room for the review of pod %s within %s (--max-in-flight-review-bytes=%s of reviews "+
			"are handled at once); retry in a moment (controllers retry by themselves)",
		pod, g.l.QueueTimeout, sizeString(g.l.MaxInFlightBytes)))
}

func (g *guard) tooLarge(w http.ResponseWriter, read []byte, size int64) {
	Refusals.WithLabelValues(RefusedTooLarge).Inc()
	uid, pod := reviewOf(read)
	what := "more than --max-review-bytes=" + sizeString(g.l.MaxReviewBytes)
	if size > 0 {
		what = fmt.Sprintf("%.1f MiB, more than --max-review-bytes=%s", float64(size)/(1<<20), sizeString(g.l.MaxReviewBytes))
	}
	refuse(w, uid, http.StatusRequestEntityTooLarge, fmt.Sprintf(
		"leasehold: the admission review of pod %s is %s, and a Pod this large is at "+
			"the edge of what etcd stores (about 1.5 MiB encoded); fix: make the Pod smaller (move large env values "+
			"and files into ConfigMaps or Secrets), or raise the webhook's --max-review-bytes, "+
			"--max-in-flight-review-bytes and memory limit together", pod, what))
}

func sizeString(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }

// refuse answers an AdmissionReview (v1, the only version the webhook configuration
// allows) that denies the request with code and msg.
func refuse(w http.ResponseWriter, uid types.UID, code int32, msg string) {
	status := &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg}
	if code == http.StatusTooManyRequests {
		status.Reason = metav1.StatusReasonTooManyRequests
		status.Details = &metav1.StatusDetails{RetryAfterSeconds: 1}
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: &admissionv1.AdmissionResponse{UID: uid, Allowed: false, Result: status},
	}
	w.Header().Set("Content-Type", "application/json")
	if uid == "" {
		// Not an AdmissionReview the API server sent: say so in HTTP too.
		w.WriteHeader(int(code))
	}
	_ = json.NewEncoder(w).Encode(review)
}

// reviewOf reads the UID, namespace and name of an AdmissionReview from the first
// uidPrefix bytes of read, which is where the API server writes them: request.uid
// comes first, the object last. It returns "" and "(unknown)" for what it does not
// find.
func reviewOf(read []byte) (types.UID, string) {
	if len(read) > uidPrefix {
		read = read[:uidPrefix]
	}
	var uid, ns, name string
	dec := json.NewDecoder(bytes.NewReader(read))
	scan := func(want func(key string) bool) bool {
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			return false
		}
		for dec.More() {
			tok, err := dec.Token()
			key, ok := tok.(string)
			if err != nil || !ok {
				return false
			}
			if !want(key) {
				return true
			}
		}
		return true
	}
	str := func(into *string) bool {
		tok, err := dec.Token()
		if s, ok := tok.(string); err == nil && ok {
			*into = s
			return true
		}
		return false
	}
	skip := func() bool { var v json.RawMessage; return dec.Decode(&v) == nil }
	scan(func(key string) bool {
		if key != "request" {
			return skip()
		}
		scan(func(key string) bool {
			switch key {
			case "uid":
				return str(&uid)
			case "namespace":
				return str(&ns)
			case "name":
				return str(&name)
			case "object", "oldObject":
				return false // the object itself: stop
			}
			return skip()
		})
		return false
	})
	pod := ns + "/" + name
	if name == "" {
		pod = ns + "/(generated name)"
	}
	if ns == "" && name == "" {
		pod = "(unknown)"
	}
	return types.UID(uid), pod
}
