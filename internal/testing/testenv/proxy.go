package testenv

import (
	"net"
	"sync"
)

// Proxy is a loopback TCP proxy that tests put between a client (an agent) and the API
// server, to cut the client off without closing its sockets. While frozen it forwards
// nothing in either direction and closes nothing: connections it already accepted stay
// open with their bytes held back, new connections are accepted and held too (a black
// hole, as a partitioned network looks to both ends). Thawing forwards what was held,
// late, in order; so requests sent during a partition may still reach the API server
// after it heals.
type Proxy struct {
	l      net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{}
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewProxy listens on 127.0.0.1 (a free port) and forwards every connection to target
// (host:port). Close it when done.
func NewProxy(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target, thaw: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if !p.track(c) {
				_ = c.Close()
				return
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
	return p, nil
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// SetFrozen freezes (black-holes) or thaws the proxy.
func (p *Proxy) SetFrozen(f bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen && !f {
		close(p.thaw)
		p.thaw = make(chan struct{})
	}
	p.frozen = f
}

// Frozen says whether the proxy black-holes traffic now.
func (p *Proxy) Frozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

// Close thaws, stops listening, closes every connection and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	p.SetFrozen(false)
	_ = p.l.Close()
	for c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

// track remembers c for Close; false when the proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// wait blocks while the proxy is frozen.
func (p *Proxy) wait() {
	p.mu.Lock()
	frozen, thaw := p.frozen, p.thaw
	p.mu.Unlock()
	if frozen {
		<-thaw
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.untrack(c)
	defer c.Close()
	p.wait()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(u) {
		_ = u.Close()
		return
	}
	defer p.untrack(u)
	defer u.Close()
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p.wait()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		_ = dst.Close()
		_ = src.Close()
	}
	wg.Go(func() { pipe(u, c) })
	wg.Go(func() { pipe(c, u) })
	wg.Wait()
}
