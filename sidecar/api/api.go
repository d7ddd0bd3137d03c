package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// Engine is the door to the lock engine.
type Engine interface {
	Names() []string
	States() []lock.State
	State(name string) (lock.State, error)
	Acquire(ctx context.Context, name string, opts lock.AcquireOptions) (*lock.Hold, lock.State, error)
	Release(ctx context.Context, name string, token int64) (lock.State, error)
	ReleaseHold(ctx context.Context, name string, h *lock.Hold, reason string)
	Renew(name string, token int64, ttl time.Duration) (lock.State, error)
	Subscribe(name string) (<-chan lock.Event, func(), error)
	// NoToken is the error of a release or renew that names no hold (lock.Locker.NoToken).
	NoToken(name string) error
	// Tie is what a connection hold follows (lock.Locker.Tie).
	Tie(name string, h *lock.Hold, s lock.State) (lock.Tie, error)
	Ready() error
}

var _ Engine = (*lock.Manager)(nil)

const (
	// MaxBodyBytes is the largest request body accepted (413 beyond).
	MaxBodyBytes = 4 << 10
	// BodyTimeout is how long a client may take to send its body (408 beyond).
	BodyTimeout = 5 * time.Second
	// heartbeat keeps event streams and connection holds alive through proxies.
	heartbeat = 15 * time.Second
)

// Handler serves the local API v1.
type Handler struct {
	Engine Engine
	Log    logr.Logger
	// ForbiddenHint is appended to readiness and write errors when the agent may not
	// write Leases (names the ServiceAccount, namespace and ClusterRole to bind).
	ForbiddenHint string
	// ReleaseTimeout bounds the release write made when a connection hold ends.
	ReleaseTimeout time.Duration

	mux *http.ServeMux
}

// NewHandler returns the API handler.
func NewHandler(engine Engine, log logr.Logger, forbiddenHint string) *Handler {
	h := &Handler{Engine: engine, Log: log, ForbiddenHint: forbiddenHint, ReleaseTimeout: 5 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", h.only(http.MethodGet, h.healthz))
	mux.HandleFunc("/readyz", h.only(http.MethodGet, h.readyz))
	mux.HandleFunc("/v1/locks", h.only(http.MethodGet, h.list))
	mux.HandleFunc("/v1/locks/{name}", h.only(http.MethodGet, h.get))
	mux.HandleFunc("/v1/locks/{name}/acquire", h.only(http.MethodPost, h.acquire))
	mux.HandleFunc("/v1/locks/{name}/release", h.only(http.MethodPost, h.release))
	mux.HandleFunc("/v1/locks/{name}/renew", h.only(http.MethodPost, h.renew))
	mux.HandleFunc("/v1/locks/{name}/events", h.only(http.MethodGet, h.events))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no such endpoint %s %s: the API is GET /v1/locks, "+
			"GET /v1/locks/{name}, POST /v1/locks/{name}/acquire|release|renew, GET /v1/locks/{name}/events, /healthz, /readyz",
			r.Method, r.URL.Path))
	})
	h.mux = mux
	return h
}

// ServeHTTP answers a path with "." or ".." segments or doubled slashes with a 404 naming
// the clean path. http.ServeMux would redirect it (307) instead: curl without -L prints
// nothing then, and a lock call should never land on a path the client did not name.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.EscapedPath(); cleanPath(p) != p { // the mux's test, on the escaped path
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no such endpoint %s %s: use the clean path %s",
			r.Method, p, cleanPath(p)))
		return
	}
	h.mux.ServeHTTP(w, r)
}

// Probes serves only GET /healthz and /readyz, as ServeHTTP does, and 404 for
// anything else: the handler of the agent's probe socket, which the kubelet's exec
// probes use and which no lock call may reach.
func (h *Handler) Probes() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.EscapedPath(); p != "/healthz" && p != "/readyz" {
			writeError(w, http.StatusNotFound, "", fmt.Sprintf("no such endpoint %s %s: the probe socket serves only /healthz and /readyz",
				r.Method, p))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// cleanPath is the path http.ServeMux would redirect to (path.Clean, keeping a trailing slash).
func cleanPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

func (h *Handler) only(method string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, r.PathValue("name"),
				fmt.Sprintf("%s is not allowed on %s: use %s", r.Method, r.URL.Path, method))
			return
		}
		next(w, r)
	}
}

type errorBody struct {
	Error string `json:"error"`
	Lock  string `json:"lock,omitempty"`
	// Reason tells apart the errors a script may want to branch on beyond the status
	// code: ReasonTokenRequired, ReasonStaleToken.
	Reason string `json:"reason,omitempty"`
}

// Reasons in error bodies.
const (
	// ReasonTokenRequired: release or renew without the fencing token of the hold (400).
	ReasonTokenRequired = "TokenRequired"
	// ReasonStaleToken: release or renew with a token that is not the current hold's (409).
	// Nothing was changed.
	ReasonStaleToken = "StaleToken"
	// ReasonJeopardy: renew of a hold in jeopardy (503): its ttl was restarted, but the
	// hold may not be relied on until it is safe again.
	ReasonJeopardy = "Jeopardy"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, name, msg string) {
	writeJSON(w, code, errorBody{Error: msg, Lock: name})
}

func writeReason(w http.ResponseWriter, code int, name, reason, msg string) {
	writeJSON(w, code, errorBody{Error: msg, Lock: name, Reason: reason})
}

// engineError maps an engine error to a status code and an actionable message.
func (h *Handler) engineError(w http.ResponseWriter, name string, err error) {
	var held *lock.HeldError
	var stale *lock.StaleTokenError
	switch {
	case errors.Is(err, lock.ErrUndeclared):
		writeError(w, http.StatusNotFound, name, fmt.Sprintf("lock %q is not declared for this Pod (declared: %s): "+
			"add it to the leasehold.io/locks, leasehold.io/leader or leasehold.io/semaphores annotation", name, strings.Join(h.Engine.Names(), ", ")))
	case errors.As(err, &held) && held.Local:
		writeError(w, http.StatusConflict, name, fmt.Sprintf("lock %q is held by another client of this Pod: "+
			"retry later or pass wait (e.g. ?wait=10s) to queue for it", name))
	case errors.As(err, &held):
		writeError(w, http.StatusConflict, name, fmt.Sprintf("lock %q is %s: retry later or pass wait (e.g. ?wait=10s) to wait for it",
			name, held.Error()))
	case errors.Is(err, lock.ErrNotAcquired):
		writeError(w, http.StatusConflict, name, fmt.Sprintf("lock %q was not acquired: %v: retry later or pass wait (e.g. ?wait=10s) to wait for it", name, err))
	case errors.Is(err, lock.ErrTimeout):
		writeError(w, http.StatusRequestTimeout, name, fmt.Sprintf("lock %q was not acquired within the wait: "+
			"wait longer, or check who holds it with GET /v1/locks/%s", name, name))
	case errors.As(err, &stale):
		writeReason(w, http.StatusConflict, name, ReasonStaleToken, fmt.Sprintf("lock %q: %v: nothing was changed; "+
			"call with the token of your own acquire answer, and do not rely on a hold whose token is stale", name, stale))
	case errors.Is(err, lock.ErrTokensExhausted):
		writeError(w, http.StatusServiceUnavailable, name, err.Error())
	case errors.Is(err, lock.ErrLeaderLock):
		writeError(w, http.StatusBadRequest, name, fmt.Sprintf("lock %q is a leader lock that the agent holds "+
			"continuously: it cannot be released or renewed; ask GET /v1/locks/%s?require=held", name, name))
	case errors.Is(err, lock.ErrForbidden):
		writeError(w, http.StatusServiceUnavailable, name, fmt.Sprintf("%v: %s", err, h.ForbiddenHint))
	case errors.Is(err, lock.ErrJeopardy):
		writeReason(w, http.StatusServiceUnavailable, name, ReasonJeopardy, fmt.Sprintf("lock %q: %v", name, err))
	case errors.Is(err, lock.ErrUnavailable), errors.Is(err, lock.ErrShutdown):
		writeError(w, http.StatusServiceUnavailable, name, fmt.Sprintf("%v: retry when the API server answers", err))
	case errors.Is(err, context.Canceled):
		// The agent is shutting down, or the client went away (then nobody reads
		// this). Never leave it to net/http's empty 200.
		writeError(w, http.StatusServiceUnavailable, name, fmt.Sprintf("lock %q: the request ended before it completed: "+
			"the agent is shutting down; retry against a running agent", name))
	default:
		writeError(w, http.StatusInternalServerError, name, err.Error())
	}
}

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := h.Engine.Ready(); err != nil {
		msg := err.Error()
		if errors.Is(err, lock.ErrForbidden) {
			msg += ": " + h.ForbiddenHint
		}
		writeError(w, http.StatusServiceUnavailable, "", msg)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (h *Handler) list(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"locks": h.Engine.States()})
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s, err := h.Engine.State(name)
	if err != nil {
		h.engineError(w, name, err)
		return
	}
	switch req := r.URL.Query().Get("require"); req {
	case "":
	case "held":
		if !s.Held {
			// The state, plus the error fields every error carries.
			writeJSON(w, http.StatusConflict, struct {
				lock.State
				errorBody
			}{s, errorBody{Error: notHeldMessage(name, s), Lock: name}})
			return
		}
	default:
		writeError(w, http.StatusBadRequest, name, fmt.Sprintf("require=%q is not understood: the only value is require=held", req))
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// notHeldMessage says why require=held failed: not held, or held but in jeopardy.
func notHeldMessage(name string, s lock.State) string {
	if s.Phase == lock.PhaseJeopardy {
		return fmt.Sprintf("lock %q is in jeopardy: this Pod's hold (token %d) could not be renewed before renew-deadline "+
			"because the API server is unavailable; do not rely on it until it is safe again (or lost)", name, s.Token)
	}
	return fmt.Sprintf("lock %q is not held by this Pod (holder: %q)", name, s.Holder)
}

// params are the options of acquire, release and renew, from the body and/or the query.
type params struct {
	Wait  string          `json:"wait"`
	TTL   string          `json:"ttl"`
	Token json.RawMessage `json:"token"`
}

// callParams are the parsed params; token is 0 when not given (tokens start at 1).
type callParams struct {
	wait, ttl time.Duration
	token     int64
}

// readParams reads the optional JSON body and the query. It writes the error itself.
func (h *Handler) readParams(w http.ResponseWriter, r *http.Request, allowed ...string) (cp callParams, ok bool) {
	name := r.PathValue("name")
	var p params
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(BodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		// Do not wait for the rest of a bad body: answer and close the connection.
		w.Header().Set("Connection", "close")
	} else {
		_ = rc.SetReadDeadline(time.Time{})
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, name, fmt.Sprintf("request body is larger than %d bytes: send only {\"wait\":\"5s\",\"ttl\":\"30s\"}", MaxBodyBytes))
		return cp, false
	case isTimeout(err):
		writeError(w, http.StatusRequestTimeout, name, fmt.Sprintf("request body not received within %s: send the whole body at once", BodyTimeout))
		return cp, false
	case err != nil:
		writeError(w, http.StatusBadRequest, name, fmt.Sprintf("read request body: %v", err))
		return cp, false
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			writeError(w, http.StatusBadRequest, name, fmt.Sprintf("request body is not valid JSON of the form "+
				"{\"wait\":\"5s\",\"ttl\":\"30s\",\"token\":7} (durations as Go duration strings): %v", err))
			return cp, false
		}
	}
	q := r.URL.Query()
	for k := range q {
		if !contains(allowed, k) {
			writeError(w, http.StatusBadRequest, name, fmt.Sprintf("query parameter %q is not understood here: allowed are %s", k, strings.Join(allowed, ", ")))
			return cp, false
		}
	}
	if v := q.Get("wait"); v != "" {
		p.Wait = v
	}
	if v := q.Get("ttl"); v != "" {
		p.TTL = v
	}
	token := strings.Trim(string(p.Token), `"`)
	if v := q.Get("token"); v != "" {
		token = v
	}
	parse := func(field, v string) (time.Duration, bool) {
		if v == "" {
			return 0, true
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, name, fmt.Sprintf("%s=%q is not a non-negative Go duration: write e.g. %s=10s or %s=1m30s",
				field, v, field, field))
			return 0, false
		}
		return d, true
	}
	if cp.wait, ok = parse("wait", p.Wait); !ok {
		return cp, false
	}
	if cp.ttl, ok = parse("ttl", p.TTL); !ok {
		return cp, false
	}
	if token != "" && token != "null" {
		n, err := strconv.ParseInt(token, 10, 64)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, name, fmt.Sprintf("token=%q is not a fencing token: pass the positive "+
				"integer \"token\" of the acquire answer, e.g. token=7", token))
			return cp, false
		}
		cp.token = n
	}
	return cp, true
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func (h *Handler) acquire(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := h.readParams(w, r, "wait", "ttl", "hold")
	if !ok {
		return
	}
	wait, ttl := p.wait, p.ttl
	connection := false
	switch v := r.URL.Query().Get("hold"); v {
	case "":
	case "connection":
		connection = true
	default:
		writeError(w, http.StatusBadRequest, name, fmt.Sprintf("hold=%q is not understood: the only value is hold=connection", v))
		return
	}
	if _, err := h.Engine.State(name); err != nil {
		h.engineError(w, name, err)
		return
	}
	hold, s, err := h.Engine.Acquire(r.Context(), name, lock.AcquireOptions{Wait: wait, TTL: ttl})
	if err != nil {
		h.engineError(w, name, err)
		return
	}
	if r.Context().Err() != nil {
		// The client left (or the agent is shutting down) while we acquired: nobody
		// would ever release this hold. Answer anyway, never with an empty 200.
		h.releaseHold(name, hold, "client disconnected")
		h.engineError(w, name, r.Context().Err())
		return
	}
	if !connection {
		writeJSON(w, http.StatusOK, s)
		return
	}
	tie, err := h.Engine.Tie(name, hold, s)
	var events <-chan lock.Event
	cancel := func() {}
	if err == nil {
		events, cancel, err = h.Engine.Subscribe(name)
	}
	if err != nil {
		h.releaseHold(name, hold, "could not follow the hold's events")
		h.engineError(w, name, err)
		return
	}
	defer cancel()
	h.holdConnection(w, r, name, hold, tie, s, events)
}

func (h *Handler) releaseHold(name string, hold *lock.Hold, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), h.ReleaseTimeout)
	defer cancel()
	h.Engine.ReleaseHold(ctx, name, hold, reason)
}

// holdConnection keeps the response open while the hold lasts: the state line first,
// then a line when the hold goes into jeopardy or is safe again, and a last line when
// the agent ends it; the connection's close calls ReleaseHold with the acquire's hold.
// What ends the hold is the lock kind's (tie): a client's hold (mutex, semaphore) ends
// when released, lost or at shutdown, and the connection's close releases it; a leader
// lock has no client hold (hold is nil): the connection follows the agent's term until
// it ends, and its close does not give the lock up.
func (h *Handler) holdConnection(w http.ResponseWriter, r *http.Request, name string, hold *lock.Hold, tie lock.Tie,
	s lock.State, events <-chan lock.Event) {
	writeJSON(w, http.StatusOK, s)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	line := func(v map[string]any) {
		b, _ := json.Marshal(v)
		_, _ = w.Write(append(b, '\n'))
		_ = rc.Flush()
	}
	done := tie.Done()
	// Between the acquisition and the subscription the hold may have gone into
	// jeopardy, or ended in a way that only the state tells (a leader's term).
	if now, err := h.Engine.State(name); err == nil {
		if reason, ended := tie.Ended(now); ended {
			line(map[string]any{"event": "ended", "lock": name, "reason": reason})
			return
		}
		if now.Phase == lock.PhaseJeopardy && now.Token == s.Token {
			line(map[string]any{"event": string(lock.EventJeopardy), "lock": name, "token": s.Token})
		}
	}
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			h.Log.V(1).Info("Closing connection hold", "lock", name, "token", s.Token)
			h.releaseHold(name, hold, "client connection closed")
			return
		case <-done:
			line(map[string]any{"event": "ended", "lock": name, "reason": tie.Reason()})
			return
		case ev, ok := <-events:
			switch {
			case !ok:
				// Dropped as a slow subscriber (it never reads: cannot happen here), or the
				// agent stops: the hold's own end still comes through done.
				events = nil
			case ev.Token != s.Token:
				// Another hold of the lock (another client of this Pod, another slot).
			case ev.Type == lock.EventJeopardy || ev.Type == lock.EventSafe:
				line(map[string]any{"event": string(ev.Type), "lock": name, "token": ev.Token, "reason": ev.Reason})
			case tie.EndedBy(ev):
				line(map[string]any{"event": "ended", "lock": name, "reason": ev.Reason})
				return
			}
		case <-t.C:
			_, _ = w.Write([]byte("\n"))
			_ = rc.Flush()
		}
	}
}

func (h *Handler) release(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := h.readParams(w, r, "token")
	if !ok || !h.requireToken(w, name, p, "release") {
		return
	}
	s, err := h.Engine.Release(r.Context(), name, p.token)
	if err != nil {
		h.engineError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (h *Handler) renew(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := h.readParams(w, r, "token", "ttl")
	if !ok || !h.requireToken(w, name, p, "renew") {
		return
	}
	s, err := h.Engine.Renew(name, p.token, p.ttl)
	if err != nil {
		h.engineError(w, name, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// requireToken answers 400 TokenRequired when a release or renew does not name the hold
// it acts on: a late call from a client whose hold already ended must never end the
// next client's hold. The message shows the call with the token.
func (h *Handler) requireToken(w http.ResponseWriter, name string, p callParams, call string) bool {
	if p.token > 0 {
		return true
	}
	if err := h.Engine.NoToken(name); err != nil && !errors.Is(err, lock.ErrTokenRequired) {
		h.engineError(w, name, err) // an undeclared lock is still a 404; a leader lock has no hold to name
		return false
	}
	writeReason(w, http.StatusBadRequest, name, ReasonTokenRequired, fmt.Sprintf("%s needs the fencing token of the hold "+
		"it acts on: POST /v1/locks/%s/%s?token=N, with N the \"token\" of your acquire answer (leasehold %s --token=N %s)",
		call, name, call, call, name))
	return false
}

// events streams server-sent events: the state first, then acquired / lost /
// released / shutdown.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ch, cancel, err := h.Engine.Subscribe(name)
	if err != nil {
		h.engineError(w, name, err)
		return
	}
	defer cancel()
	s, _ := h.Engine.State(name)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(event string, v any) {
		b, _ := json.Marshal(v)
		_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		_ = rc.Flush()
	}
	send("state", s)
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok {
				send("error", errorBody{Error: "event stream closed: the client read too slowly or the agent stops; reconnect", Lock: name})
				return
			}
			send(string(ev.Type), ev)
			if ev.Type == lock.EventShutdown {
				return
			}
		case <-t.C:
			_, _ = w.Write([]byte(": keepalive\n\n"))
			_ = rc.Flush()
		}
	}
}
