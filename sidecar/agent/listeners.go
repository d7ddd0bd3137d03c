package agent

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/leasehold/leasehold/sidecar/listen"
)

// listeners are every address the agent serves on, all opened before any part starts:
// a listener that cannot be opened stops the agent before it serves or takes a lock.
type listeners struct {
	api     []net.Listener // the Unix socket, and loopback TCP with --tcp-port
	probes  net.Listener   // --probe-socket, or nil
	metrics net.Listener   // --metrics-bind-address, or nil
	sockets []string       // the socket files, removed by close
}

// openListeners opens the listeners o asks for. When one fails, those already open are
// closed and the error names the flag to fix.
func openListeners(o *Options) (_ *listeners, err error) {
	ls := &listeners{}
	defer func() {
		if err != nil {
			ls.close()
		}
	}()
	sock, err := listen.Unix(o.Socket, listen.SocketMode)
	if err != nil {
		return nil, fmt.Errorf("--socket: %w", err)
	}
	ls.api, ls.sockets = append(ls.api, sock), append(ls.sockets, o.Socket)
	if o.TCPPort > 0 {
		tcp, err := listen.Loopback(net.JoinHostPort("127.0.0.1", strconv.Itoa(o.TCPPort)))
		if err != nil {
			return nil, fmt.Errorf("--tcp-port: %w", err)
		}
		ls.api = append(ls.api, tcp)
	}
	if o.ProbeSocket != "" {
		if ls.probes, err = listen.Unix(o.ProbeSocket, ProbeSocketMode); err != nil {
			return nil, fmt.Errorf("--probe-socket: %w", err)
		}
		ls.sockets = append(ls.sockets, o.ProbeSocket)
	}
	if o.MetricsOn() {
		// On every address of the Pod (the webhook passes ":<port>"): read-only
		// metrics, never the lock API.
		if ls.metrics, err = listen.TCP(o.MetricsBindAddress); err != nil {
			return nil, fmt.Errorf("--metrics-bind-address: %w", err)
		}
	}
	return ls, nil
}

// close closes every listener (those a server has closed already are no matter) and
// removes the socket files.
func (ls *listeners) close() {
	all := append([]net.Listener{ls.probes, ls.metrics}, ls.api...)
	for _, l := range all {
		if l != nil {
			_ = l.Close()
		}
	}
	for _, s := range ls.sockets {
		_ = os.Remove(s)
	}
}
