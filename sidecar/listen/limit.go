package listen

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ConnLimit caps the connections served at once across every listener it wraps. A
// connection beyond the cap is answered at once with HTTP 503 and a JSON error, then
// closed: a flood of clients gets a clear answer, the agent's memory stays bounded, and
// the connections already open (holds, event streams) are not disturbed.
//
// golang.org/x/net/netutil.LimitListener caps connections too, but it blocks in Accept:
// the next client (or the kubelet's probe) would hang with no message, which is why this
// one is written here.
type ConnLimit struct {
	open     chan struct{} // one token per connection being served
	refusing chan struct{} // one token per refusal being written; beyond: close at once
	answer   []byte
}

// RefuseTimeout bounds how long a refused connection is kept to deliver its 503.
const RefuseTimeout = 2 * time.Second

// NewConnLimit allows n connections at once (n ≥ 1); the 503 names --max-connections.
func NewConnLimit(n int) *ConnLimit { return NewConnLimitFor(n, "--max-connections") }

// NewConnLimitFor allows n connections at once (n ≥ 1); the 503 names flag as the way
// to raise the limit.
func NewConnLimitFor(n int, flag string) *ConnLimit {
	body, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("the agent is already serving its limit of %d connections: "+
		"reuse a keep-alive connection or close idle ones, or raise the agent's %s", n, flag)})
	body = append(body, '\n')
	answer := fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	return &ConnLimit{open: make(chan struct{}, n), refusing: make(chan struct{}, 64), answer: answer}
}

// Wrap returns l with the limit applied to the connections it accepts.
func (c *ConnLimit) Wrap(l net.Listener) net.Listener { return &limitListener{Listener: l, limit: c} }

// Open is how many connections are being served now.
func (c *ConnLimit) Open() int { return len(c.open) }

type limitListener struct {
	net.Listener
	limit *ConnLimit
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.limit.open <- struct{}{}:
			return &limitConn{Conn: conn, limit: l.limit}, nil
		default:
			l.limit.refuse(conn)
		}
	}
}

// refuse answers 503 without reading the request first, then drains what the client
// sent (closing a TCP socket with unread data would reset it, and the client could miss
// the answer) until it closes or RefuseTimeout passes.
func (c *ConnLimit) refuse(conn net.Conn) {
	select {
	case c.refusing <- struct{}{}:
	default:
		_ = conn.Close() // a flood of refusals: don't spend a goroutine on each
		return
	}
	go func() {
		defer func() { <-c.refusing }()
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(RefuseTimeout))
		if _, err := conn.Write(c.answer); err != nil {
			return
		}
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
	}()
}

type limitConn struct {
	net.Conn
	limit *ConnLimit
	once  sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.limit.open })
	return err
}
