package listen

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// dialAndAsk sends one GET on a new connection and returns the connection (left open,
// keep-alive) with the response, its body already read.
func dialAndAsk(t *testing.T, network, addr, body string) (net.Conn, *http.Response, string) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	req := "GET /x HTTP/1.1\r\nHost: agent\r\n"
	if body != "" {
		req += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"+body); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	return c, resp, string(b)
}

func TestConnLimitAnswers503BeyondTheLimitAndServesAgainAfterAClose(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			var l net.Listener
			var err error
			if network == "unix" {
				l, err = Unix(filepath.Join(t.TempDir(), "agent.sock"), SocketMode)
			} else {
				l, err = Loopback("127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			limit := NewConnLimit(2)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
			go srv.Serve(limit.Wrap(l))
			defer srv.Close()
			addr := l.Addr().String()

			first, r1, _ := dialAndAsk(t, network, addr, "")
			second, r2, _ := dialAndAsk(t, network, addr, "")
			defer second.Close()
			if r1.StatusCode != 200 || r2.StatusCode != 200 || limit.Open() != 2 {
				t.Fatalf("two connections within the limit: got %d, %d, %d open", r1.StatusCode, r2.StatusCode, limit.Open())
			}
			// The third, with a body the server never reads: the 503 must still arrive.
			third, r3, body3 := dialAndAsk(t, network, addr, strings.Repeat("x", 32<<10))
			third.Close()
			var e struct{ Error string }
			if err := json.Unmarshal([]byte(body3), &e); err != nil || r3.StatusCode != http.StatusServiceUnavailable ||
				!strings.Contains(e.Error, "limit of 2 connections") || !strings.Contains(e.Error, "--max-connections") {
				t.Fatalf("beyond the limit: want 503 with a JSON error naming the limit and the flag, got %d %q (%v)", r3.StatusCode, body3, err)
			}
			if r3.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("503 Content-Type %q", r3.Header.Get("Content-Type"))
			}

			// The open connections still work.
			if _, err := io.WriteString(second, "GET /x HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			if resp, err := http.ReadResponse(bufio.NewReader(second), nil); err != nil || resp.StatusCode != 200 {
				t.Fatalf("an open connection after the refusal: %v %v", resp, err)
			}

			// Once a client leaves, a new one is served.
			first.Close()
			var code int
			if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
				c, r, _ := dialAndAsk(t, network, addr, "")
				c.Close()
				code = r.StatusCode
				return code == 200, nil
			}); err != nil {
				t.Fatalf("after a client closed: still %d, %d open", code, limit.Open())
			}
		})
	}
}

// The 503 names the flag that raises the limit it enforces (the metrics port has its own).
func TestConnLimitForNamesItsFlag(t *testing.T) {
	l, err := Loopback("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(NewConnLimitFor(1, "--metrics-max-connections").Wrap(l))
	defer srv.Close()
	first, _, _ := dialAndAsk(t, "tcp", l.Addr().String(), "")
	defer first.Close()
	second, r, body := dialAndAsk(t, "tcp", l.Addr().String(), "")
	second.Close()
	if r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "--metrics-max-connections") || strings.Contains(body, "--max-connections") {
		t.Fatalf("beyond the limit: %d %q, want 503 naming --metrics-max-connections alone", r.StatusCode, body)
	}
}
