package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// fakeEngine answers every call with err; it pins the mapping of engine errors to
// status codes (the envtest suite in sidecar/agent drives the real engine).
type fakeEngine struct{ err error }

func (f fakeEngine) Names() []string      { return []string{"a"} }
func (f fakeEngine) States() []lock.State { return nil }
func (f fakeEngine) State(name string) (lock.State, error) {
	if name != "a" {
		return lock.State{}, lock.ErrUndeclared
	}
	return lock.State{Name: name}, nil
}
func (f fakeEngine) Acquire(context.Context, string, lock.AcquireOptions) (*lock.Hold, lock.State, error) {
	return nil, lock.State{}, f.err
}
func (f fakeEngine) Release(context.Context, string, int64) (lock.State, error) {
	return lock.State{}, f.err
}
func (f fakeEngine) ReleaseHold(context.Context, string, *lock.Hold, string) {}
func (f fakeEngine) Renew(string, int64, time.Duration) (lock.State, error) {
	return lock.State{}, f.err
}
func (f fakeEngine) Subscribe(string) (<-chan lock.Event, func(), error) { return nil, nil, f.err }
func (f fakeEngine) NoToken(name string) error {
	if _, err := f.State(name); err != nil {
		return err
	}
	return lock.ErrTokenRequired
}
func (f fakeEngine) Tie(string, *lock.Hold, lock.State) (lock.Tie, error) { return nil, f.err }
func (f fakeEngine) Ready() error                                         { return f.err }

func TestStatusCodes(t *testing.T) {
	tests := map[string]struct {
		err     error
		want    int
		mention string
	}{
		"held by another Pod": {&lock.HeldError{Holder: "p_u", ValidFor: time.Second}, 409, "held by p_u"},
		"held locally":        {&lock.HeldError{Local: true}, 409, "another client of this Pod"},
		"conflict on try":     {fmt.Errorf("%w: raced", lock.ErrNotAcquired), 409, "not acquired"},
		"wait timed out":      {lock.ErrTimeout, 408, "within the wait"},
		"unavailable":         {fmt.Errorf("%w: dial tcp: refused", lock.ErrUnavailable), 503, "retry when the API server answers"},
		"forbidden":           {fmt.Errorf("%w: leases is forbidden", lock.ErrForbidden), 503, "ClusterRole"},
		"shutting down":       {lock.ErrShutdown, 503, "shutting down"},
		"stale token":         {&lock.StaleTokenError{Token: 1}, 409, "token 1 does not name the current hold"},
		"tokens exhausted":    {fmt.Errorf("%w: delete the Lease", lock.ErrTokensExhausted), 503, "delete the Lease"},
		// Before the fix the handler wrote nothing: net/http sent an empty 200, and
		// `curl -sf .../acquire?wait=30s && work` went ahead during shutdown.
		"cancelled by shutdown": {context.Canceled, 503, "shutting down"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := NewHandler(fakeEngine{err: tc.err}, logr.Discard(), "bind the ClusterRole leasehold-agent")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/locks/a/acquire", nil))
			if errors.Is(tc.err, lock.ErrStaleToken) {
				w = httptest.NewRecorder()
				h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/locks/a/release?token=1", nil))
			}
			var body errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("not JSON: %q", w.Body.String())
			}
			if w.Code != tc.want || !strings.Contains(body.Error, tc.mention) || body.Lock != "a" {
				t.Fatalf("want %d mentioning %q for lock a, got %d %+v", tc.want, tc.mention, w.Code, body)
			}
		})
	}
}

func TestReadyzNotReady(t *testing.T) {
	h := NewHandler(fakeEngine{err: errors.Join(lock.ErrForbidden)}, logr.Discard(), "bind the ClusterRole leasehold-agent")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if w.Code != 503 || !strings.Contains(w.Body.String(), "leasehold-agent") {
		t.Fatalf("want 503 naming the ClusterRole, got %d %s", w.Code, w.Body)
	}
}

// An unclean path ("/v1/locks/./a/acquire", "/.") is answered, not redirected: a 307 to
// the clean path would send a POST somewhere the client never named, and curl without -L
// would print nothing. Found by FuzzAPI.
func TestUncleanPathIsNotRedirected(t *testing.T) {
	for _, p := range []string{"/.", "/v1/locks/./a/acquire", "/v1//locks", "/v1/locks/a/../b/acquire", "/healthz/."} {
		t.Run(p, func(t *testing.T) {
			w := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, "http://agent/", nil)
			req.URL.Path = p
			NewHandler(fakeEngine{}, logr.Discard(), "").ServeHTTP(w, req)
			var body errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("%s: not a JSON error (%d): %q", p, w.Code, w.Body.String())
			}
			if w.Code != http.StatusNotFound || !strings.Contains(body.Error, "clean path") {
				t.Fatalf("%s: want 404 naming the clean path, got %d %+v (Location %q)", p, w.Code, body, w.Header().Get("Location"))
			}
		})
	}
	// An escaped slash stays inside one segment: a lock name to look up, not a path to clean.
	w := httptest.NewRecorder()
	NewHandler(fakeEngine{}, logr.Discard(), "").ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/locks/a%2F..%2Fb", nil))
	if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "not declared") {
		t.Fatalf("escaped slashes: want 404 not declared, got %d %s", w.Code, w.Body.String())
	}
}

// release and renew name the hold by its fencing token: without one, 400 TokenRequired
// showing the call with the token; with a stale one, 409 StaleToken. Both change nothing.
func TestReleaseAndRenewNeedTheToken(t *testing.T) {
	stale := &lock.StaleTokenError{Token: 3, Current: 4, Ended: "ttl expired"}
	tests := map[string]struct {
		path       string
		err        error
		wantCode   int
		wantReason string
		mention    string
	}{
		"release without token": {"/v1/locks/a/release", nil, 400, ReasonTokenRequired, "/v1/locks/a/release?token=N"},
		"renew without token":   {"/v1/locks/a/renew?ttl=5s", nil, 400, ReasonTokenRequired, "/v1/locks/a/renew?token=N"},
		"release stale token":   {"/v1/locks/a/release?token=3", stale, 409, ReasonStaleToken, "token 3 has already ended (ttl expired)"},
		"renew stale token":     {"/v1/locks/a/renew?token=3", stale, 409, ReasonStaleToken, "nothing was changed"},
		"token not a number":    {"/v1/locks/a/release?token=abc", nil, 400, "", "token=\"abc\""},
		"undeclared lock":       {"/v1/locks/zz/release", nil, 404, "", "not declared"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := httptest.NewRecorder()
			NewHandler(fakeEngine{err: tc.err}, logr.Discard(), "").ServeHTTP(w, httptest.NewRequest(http.MethodPost, tc.path, nil))
			var body errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("not JSON: %q", w.Body.String())
			}
			if w.Code != tc.wantCode || body.Reason != tc.wantReason || !strings.Contains(body.Error, tc.mention) {
				t.Fatalf("want %d %q mentioning %q, got %d %+v", tc.wantCode, tc.wantReason, tc.mention, w.Code, body)
			}
		})
	}
	// The token may come in the body too.
	w := httptest.NewRecorder()
	NewHandler(fakeEngine{}, logr.Discard(), "").ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/locks/a/release", strings.NewReader(`{"token":7}`)))
	if w.Code != 200 {
		t.Fatalf("release with the token in the body: %d %s", w.Code, w.Body)
	}
}

// ?require=held answers 409 with the lock's state and the error fields every error has.
func TestRequireHeldIsAnError(t *testing.T) {
	w := httptest.NewRecorder()
	NewHandler(fakeEngine{}, logr.Discard(), "").ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/locks/a?require=held", nil))
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("not JSON: %q", w.Body.String())
	}
	if w.Code != 409 || body["error"] == nil || body["lock"] != "a" || body["name"] != "a" || body["held"] != false {
		t.Fatalf("want 409 with error, lock and the state, got %d %v", w.Code, body)
	}
}

// The probe socket's handler answers /healthz and /readyz as the API does, and nothing
// else: no lock call through the socket that bypasses the connection cap.
func TestProbesServesOnlyHealthAndReadiness(t *testing.T) {
	h := NewHandler(fakeEngine{}, logr.Discard(), "").Probes()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/v1/locks": 404, "/v1/locks/a": 404,
		"/healthz/.": 404, "/v1/locks/a/acquire": 404} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://agent"+path, nil))
		if w.Code != want {
			t.Errorf("GET %s: %d, want %d: %s", path, w.Code, want, w.Body)
		}
	}
}
