package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/sidecar/api/wire"
)

// DefaultSocket is the agent's default socket.
const DefaultSocket = contract.SocketPath

// Client talks to one agent.
type Client struct {
	base string
	http *http.Client
}

// New returns a client for the agent at socket (a Unix socket path) or, when rawURL
// is not empty, at rawURL (http://127.0.0.1:port).
func New(socket, rawURL string) *Client {
	if rawURL != "" {
		return &Client{base: strings.TrimSuffix(rawURL, "/"), http: &http.Client{}}
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 64,
	}
	return &Client{base: "http://leasehold", http: &http.Client{Transport: tr}}
}

// CloseIdleConnections closes the keep-alive connections the client is not using; each
// open one counts against the agent's --max-connections.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// FromEnv uses $LEASEHOLD_URL, else $LEASEHOLD_SOCKET, else the default socket.
func FromEnv() *Client {
	if u := os.Getenv(contract.EnvURL); u != "" {
		return New("", u)
	}
	s := os.Getenv(contract.EnvSocket)
	if s == "" {
		s = DefaultSocket
	}
	return New(s, "")
}

// Error is a non-2xx answer of the agent.
type Error struct {
	Status  int
	Message string `json:"error"`
	Lock    string `json:"lock"`
	// Reason is "TokenRequired" or "StaleToken" on those errors of release and renew.
	Reason string `json:"reason"`
}

func (e *Error) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

func (c *Client) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	return c.http.Do(req)
}

func decode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
		}
		// Answers like 409 on ?require=held carry a state, not an error.
		if v != nil {
			_ = json.Unmarshal(b, v)
		}
		return e
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(b, v)
}

func durations(wait, ttl time.Duration) url.Values {
	q := url.Values{}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	if ttl > 0 {
		q.Set("ttl", ttl.String())
	}
	return q
}

// State asks for one lock.
func (c *Client) State(ctx context.Context, name string) (wire.State, error) {
	var s wire.State
	resp, err := c.do(ctx, http.MethodGet, "/v1/locks/"+url.PathEscape(name), nil)
	if err != nil {
		return s, err
	}
	return s, decode(resp, &s)
}

// States asks for every lock.
func (c *Client) States(ctx context.Context) ([]wire.State, error) {
	var out struct {
		Locks []wire.State `json:"locks"`
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/locks", nil)
	if err != nil {
		return nil, err
	}
	return out.Locks, decode(resp, &out)
}

// Acquire takes the lock (wait 0 = try once).
func (c *Client) Acquire(ctx context.Context, name string, wait, ttl time.Duration) (wire.State, error) {
	var s wire.State
	resp, err := c.do(ctx, http.MethodPost, "/v1/locks/"+url.PathEscape(name)+"/acquire", durations(wait, ttl))
	if err != nil {
		return s, err
	}
	return s, decode(resp, &s)
}

// Release ends the hold that token (the acquire answer's) names.
func (c *Client) Release(ctx context.Context, name string, token int64) (wire.State, error) {
	var s wire.State
	q := url.Values{"token": {strconv.FormatInt(token, 10)}}
	resp, err := c.do(ctx, http.MethodPost, "/v1/locks/"+url.PathEscape(name)+"/release", q)
	if err != nil {
		return s, err
	}
	return s, decode(resp, &s)
}

// Renew restarts the ttl of the hold that token names (ttl 0: the ttl given before).
func (c *Client) Renew(ctx context.Context, name string, token int64, ttl time.Duration) (wire.State, error) {
	var s wire.State
	q := durations(0, ttl)
	q.Set("token", strconv.FormatInt(token, 10))
	resp, err := c.do(ctx, http.MethodPost, "/v1/locks/"+url.PathEscape(name)+"/renew", q)
	if err != nil {
		return s, err
	}
	return s, decode(resp, &s)
}

// Get does a GET of path and returns the status code and body.
func (c *Client) Get(ctx context.Context, path string) (int, []byte, error) {
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Hold is a hold tied to a connection.
type Hold struct {
	State wire.State
	body  io.ReadCloser
	// Ended is closed when the agent ends the hold (lost, shutdown) or the connection
	// breaks; Reason says why.
	Ended  chan struct{}
	Reason string
	// Changed receives when the hold goes into jeopardy or is safe again (the agent's
	// "jeopardy" and "safe" lines); Jeopardy tells which it is now. It holds at most one
	// signal: read Jeopardy after each.
	Changed  chan struct{}
	jeopardy atomic.Bool
}

// Jeopardy is true while the agent says the hold is in jeopardy: not to be relied on,
// but not lost either (it may resume with the same token).
func (h *Hold) Jeopardy() bool { return h.jeopardy.Load() }

// holdLine is one line the agent sends on a connection hold after the state.
type holdLine struct {
	Event  string `json:"event"`
	Reason string `json:"reason"`
}

// Close ends the hold (closes the connection).
func (h *Hold) Close() error { return h.body.Close() }

// HoldConnection acquires the lock with ?hold=connection.
func (c *Client) HoldConnection(ctx context.Context, name string, wait, ttl time.Duration) (*Hold, error) {
	q := durations(wait, ttl)
	q.Set("hold", "connection")
	// The hold outlives ctx's wait: only the dial and the answer use ctx.
	resp, err := c.do(context.WithoutCancel(ctx), http.MethodPost, "/v1/locks/"+url.PathEscape(name)+"/acquire", q)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, decode(resp, nil)
	}
	r := bufio.NewReader(resp.Body)
	line, err := r.ReadBytes('\n')
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("read hold state: %w", err)
	}
	h := &Hold{body: resp.Body, Ended: make(chan struct{}), Changed: make(chan struct{}, 1)}
	if err := json.Unmarshal(line, &h.State); err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("decode hold state: %w", err)
	}
	h.jeopardy.Store(h.State.Phase == wire.PhaseJeopardy)
	go func() {
		defer close(h.Ended)
		for {
			line, err := r.ReadBytes('\n')
			if len(strings.TrimSpace(string(line))) > 0 {
				var ev holdLine
				_ = json.Unmarshal(line, &ev)
				if ev.Event == string(wire.EventJeopardy) || ev.Event == string(wire.EventSafe) {
					h.jeopardy.Store(ev.Event == string(wire.EventJeopardy))
					select {
					case h.Changed <- struct{}{}:
					default:
					}
					continue
				}
				h.Reason = ev.Reason
				return
			}
			if err != nil {
				h.Reason = "connection to the agent closed: " + err.Error()
				return
			}
		}
	}()
	return h, nil
}
