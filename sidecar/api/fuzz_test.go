package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// recordingEngine declares the locks "a" and "b" and records which lock each mutating
// call names. It never grants a hold, so no request can block on one.
type recordingEngine struct {
	fakeEngine
	mu      sync.Mutex
	touched []string
}

func (r *recordingEngine) touch(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.touched = append(r.touched, name)
}

func (r *recordingEngine) Names() []string { return []string{"a", "b"} }
func (r *recordingEngine) State(name string) (lock.State, error) {
	if name != "a" && name != "b" {
		return lock.State{}, lock.ErrUndeclared
	}
	return lock.State{Name: name, Mode: lock.ModeMutex}, nil
}
func (r *recordingEngine) Acquire(_ context.Context, name string, _ lock.AcquireOptions) (*lock.Hold, lock.State, error) {
	r.touch(name)
	return nil, lock.State{Name: name}, lock.ErrNotAcquired
}
func (r *recordingEngine) Release(_ context.Context, name string, _ int64) (lock.State, error) {
	r.touch(name)
	return lock.State{Name: name}, &lock.StaleTokenError{Token: 1}
}
func (r *recordingEngine) Renew(name string, _ int64, _ time.Duration) (lock.State, error) {
	r.touch(name)
	return lock.State{Name: name}, &lock.StaleTokenError{Token: 1}
}
func (r *recordingEngine) Ready() error { return nil }
func (r *recordingEngine) Subscribe(name string) (<-chan lock.Event, func(), error) {
	if _, err := r.State(name); err != nil {
		return nil, nil, err
	}
	ch := make(chan lock.Event)
	close(ch) // the stream ends at once: no request blocks
	return ch, func() {}, nil
}

// FuzzAPI sends arbitrary requests to the local API. Whatever arrives, the answer is
// one of the documented status codes, every error is JSON with a message, and a request
// that names one lock never reaches the engine for another.
func FuzzAPI(f *testing.F) {
	f.Add("POST", "/v1/locks/a/acquire", "wait=1s&ttl=5s", []byte(`{"wait":"1s"}`))
	f.Add("POST", "/v1/locks/b/release", "", []byte{})
	f.Add("POST", "/v1/locks/b/release", "token=3", []byte{})
	f.Add("POST", "/v1/locks/a/renew", "", []byte(`{"ttl":"30s","token":2}`))
	f.Add("POST", "/v1/locks/a/renew", "token=-1", []byte(`{"token":"x"}`))
	f.Add("GET", "/v1/locks/a", "require=held", []byte{})
	f.Add("GET", "/v1/locks", "", []byte{})
	f.Add("GET", "/v1/locks/b/events", "", []byte{})
	f.Add("POST", "/v1/locks/a/acquire", "hold=connection", []byte(`{"wait":"-1s","ttl":"x"}`))
	f.Add("POST", "/v1/locks/a%2Fb/acquire", "", []byte(`{"wait":`))
	f.Add("DELETE", "/v1/locks/zz/release", "wait=1s&wait=2s", bytes.Repeat([]byte("x"), MaxBodyBytes+1))
	f.Add("GET", "/healthz", "", []byte{})
	f.Add("0", "/.", "", []byte{}) // once redirected (307) by http.ServeMux

	allowed := map[int]bool{200: true, 400: true, 404: true, 405: true, 408: true, 409: true, 413: true, 503: true}
	f.Fuzz(func(t *testing.T, method, path, query string, body []byte) {
		req, err := http.NewRequest(method, "http://agent"+path+"?"+query, bytes.NewReader(body))
		if err != nil || !strings.HasPrefix(req.URL.Path, "/") {
			return // not a request an HTTP client could send
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req = req.WithContext(ctx)
		engine := &recordingEngine{}
		w := httptest.NewRecorder()
		NewHandler(engine, logr.Discard(), "").ServeHTTP(w, req)

		if !allowed[w.Code] {
			t.Fatalf("%s %s?%s: status %d is not one of the documented codes", method, path, query, w.Code)
		}
		heldCheck := w.Code == http.StatusConflict && req.Method == http.MethodGet && req.URL.Query().Get("require") == "held"
		if heldCheck {
			// ?require=held answers "not held" with the lock's state and an error, for curl -sf to branch on.
			var s struct {
				lock.State
				errorBody
			}
			if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil || s.Name == "" || s.Error == "" || s.Lock == "" {
				t.Fatalf("%s %s?%s: 409 for require=held without the lock's state and error: %q", method, path, query, w.Body.String())
			}
		} else if w.Code != http.StatusOK {
			var e errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s?%s: status %d with a body that is not a JSON error: %q", method, path, query, w.Code, w.Body.String())
			}
		}
		named := req.PathValue("name")
		if parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/v1/locks/"), "/"); len(parts) > 0 {
			named = parts[0]
		}
		for _, got := range engine.touched {
			if got != named {
				t.Fatalf("%s %s: the engine was asked to change lock %q, not the one in the path (%q)", method, req.URL.Path, got, named)
			}
		}
	})
}
