package webhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

// ServerOptions are the defences of the webhook's HTTPS server against clients that
// hold connections open (finding "one slow connection stops every annotated Pod
// create"): every one is a flag (BindFlags).
type ServerOptions struct {
	// ReadTimeout bounds the TLS handshake, and then each request as a whole (header
	// and body), from its first byte: a client that trickles a review, or stops in
	// the middle of a ClientHello, is cut off after it. Well inside the webhook
	// configuration's timeoutSeconds (5), so that the API server's own reviews, which
	// arrive in milliseconds, are never the ones cut off.
	ReadTimeout time.Duration
	// MaxConnsPerPeer caps the connections open at once from one remote address; the
	// excess is closed as soon as it is accepted. The API server's webhook client
	// keeps 25 idle connections per webhook and opens one per review in flight beyond;
	// the default stays above the 200 mutating requests a kube-apiserver handles at
	// once by default (--max-mutating-requests-inflight), so that even a burst of Pod
	// creates through one API server is not cut, while one other client holds at most
	// some 12 MiB of connection buffers.
	MaxConnsPerPeer int
	// ClientCAFile, when set, makes the server require a client certificate signed by
	// one of the CAs in this PEM file: the API server presents one when its admission
	// configuration names a kubeconfig for the webhook (README, "Who may call the
	// webhook").
	ClientCAFile string
}

// Defaults of ServerOptions and the server's other limits.
const (
	DefaultReadTimeout     = 2 * time.Second
	DefaultMaxConnsPerPeer = 256
	// writeTimeout bounds handling plus writing the answer; the API server has given
	// up long before (timeoutSeconds 5, 30 at most).
	writeTimeout = 30 * time.Second
	// idleTimeout matches the idle timeout of the API server's webhook client (90 s,
	// client-go's transport default), so that it does not pick a connection the server
	// is closing.
	idleTimeout = 90 * time.Second
	// maxHeaderBytes: the API server sends a few hundred bytes of headers (a bearer
	// token from its admission kubeconfig at most adds a few KiB).
	maxHeaderBytes = 64 << 10
)

// DefaultServerOptions returns the flag defaults.
func DefaultServerOptions() ServerOptions {
	return ServerOptions{ReadTimeout: DefaultReadTimeout, MaxConnsPerPeer: DefaultMaxConnsPerPeer}
}

// BindFlags registers the options on fs.
func (o *ServerOptions) BindFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.ReadTimeout, "request-read-timeout", o.ReadTimeout,
		"Longest time a client may take for the TLS handshake, then for each request (header and body); keep it well under the webhook configuration's timeoutSeconds.")
	fs.IntVar(&o.MaxConnsPerPeer, "max-connections-per-peer", o.MaxConnsPerPeer,
		"Most connections open at once from one remote address; more are closed when accepted.")
	fs.StringVar(&o.ClientCAFile, "client-ca-file", o.ClientCAFile,
		"PEM file of the CA(s) whose client certificates the webhook requires (the API server's, from its admission configuration); empty: no client certificate asked for.")
}

// Validate checks the options, naming the flag to fix.
func (o ServerOptions) Validate() error {
	var errs []error
	if o.ReadTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--request-read-timeout=%s must be positive", o.ReadTimeout))
	}
	if o.MaxConnsPerPeer < 1 {
		errs = append(errs, fmt.Errorf("--max-connections-per-peer=%d must be at least 1", o.MaxConnsPerPeer))
	}
	if o.ClientCAFile != "" {
		if _, err := loadClientCAs(o.ClientCAFile); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func loadClientCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--client-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--client-ca-file=%s holds no PEM certificate; fix: point it at the CA that signed the API server's admission client certificate", file)
	}
	return pool, nil
}

// ConnectionsRefused counts connections the webhook server closed as soon as it
// accepted them, by reason.
var ConnectionsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "leasehold_webhook_connections_refused_total",
	Help: "Connections to the webhook port closed when accepted: peer-limit (over --max-connections-per-peer from one address).",
}, []string{"reason"})

// RefusedPeerLimit is the reason of a connection over MaxConnsPerPeer.
const RefusedPeerLimit = "peer-limit"

func init() {
	metrics.Registry.MustRegister(ConnectionsRefused)
	ConnectionsRefused.WithLabelValues(RefusedPeerLimit)
}

// Server is the webhook's HTTPS server: controller-runtime's webhook.Server (Register,
// WebhookMux and its per-webhook metrics are controller-runtime's) with a listener and
// an http.Server that defend themselves. controller-runtime's DefaultServer sets no
// read timeout on the body (32 s on the header and handshake) and offers no hook for
// its listener, so Start is this package's.
type Server struct {
	crwebhook.Server
	opts    crwebhook.Options
	defence ServerOptions
	log     logr.Logger

	mu      sync.Mutex
	started bool
	addr    net.Addr
}

var _ crwebhook.Server = &Server{}

// NewServer returns a Server for o (Host, Port, CertDir, CertName, KeyName, TLSOpts,
// WebhookMux as controller-runtime's; ClientCAName is ignored: use
// defence.ClientCAFile) with the defences of defence.
func NewServer(o crwebhook.Options, defence ServerOptions) *Server {
	if o.Port == 0 {
		o.Port = crwebhook.DefaultPort
	}
	if o.CertName == "" {
		o.CertName = "tls.crt"
	}
	if o.KeyName == "" {
		o.KeyName = "tls.key"
	}
	if o.WebhookMux == nil {
		o.WebhookMux = http.NewServeMux()
	}
	return &Server{Server: crwebhook.NewServer(o), opts: o, defence: defence, log: logf.Log.WithName("webhook-server")}
}

// Addr is the address the server listens on, once it has started.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Start serves until ctx ends, then shuts down (a minute for reviews in flight).
func (s *Server) Start(ctx context.Context) error {
	cfg := &tls.Config{}
	for _, op := range s.opts.TLSOpts {
		op(cfg)
	}
	if cfg.GetCertificate == nil {
		cw, err := certwatcher.New(filepath.Join(s.opts.CertDir, s.opts.CertName), filepath.Join(s.opts.CertDir, s.opts.KeyName))
		if err != nil {
			return fmt.Errorf("load the serving certificate: %w", err)
		}
		cfg.GetCertificate = cw.GetCertificate
		go func() {
			if err := cw.Start(ctx); err != nil {
				s.log.Error(err, "Failed to watch the serving certificate")
			}
		}()
	}
	if s.defence.ClientCAFile != "" {
		pool, err := loadClientCAs(s.defence.ClientCAFile)
		if err != nil {
			return err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.Port)))
	if err != nil {
		return fmt.Errorf("listen on the webhook port: %w", err)
	}
	// The handshake happens in the http.Server, under its timeouts (below).
	tlsLn := tls.NewListener(PeerLimitListener(ln, s.defence.MaxConnsPerPeer), cfg)

	srv := &http.Server{
		Handler:     s.WebhookMux(),
		BaseContext: func(net.Listener) context.Context { return ctx },
		// ReadTimeout is the whole request, header and body; net/http also bounds the
		// TLS handshake by it (the smallest of its timeouts).
		ReadTimeout:       s.defence.ReadTimeout,
		ReadHeaderTimeout: s.defence.ReadTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Failed handshakes and cut-off clients, at debug level: a flood of them would
		// otherwise flood the log.
		ErrorLog: log.New(logWriter{s.log.V(1)}, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			s.log.Error(err, "Failed to shut down the webhook server")
		}
	}()
	s.mu.Lock()
	s.started, s.addr = true, ln.Addr()
	s.mu.Unlock()
	s.log.Info("Serving webhook server", "address", ln.Addr().String(), "readTimeout", s.defence.ReadTimeout,
		"maxConnectionsPerPeer", s.defence.MaxConnsPerPeer, "clientCA", s.defence.ClientCAFile)
	if err := srv.Serve(tlsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-done
	return nil
}

// StartedChecker is healthy once the server listens. Unlike controller-runtime's, it
// does not dial the server: a TLS handshake without a client certificate fails when
// --client-ca-file is set, and the dial would count against the peer limit.
func (s *Server) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.started {
			return errors.New("webhook server has not been started yet")
		}
		return nil
	}
}

type logWriter struct{ log logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("Dropped a webhook connection", "reason", string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	if n := len(p); n > 0 && p[n-1] == '\n' {
		return p[:n-1]
	}
	return p
}

// PeerLimitListener wraps ln so that at most max connections from one remote address
// are open at once; more are closed as soon as they are accepted (counted in
// ConnectionsRefused). Hand-written: golang.org/x/net/netutil.LimitListener caps the
// connections of all clients together and makes the excess wait in Accept, so one
// client holding its connections would keep the API server's out; no well-kept
// library caps them per peer.
func PeerLimitListener(ln net.Listener, max int) net.Listener {
	return &peerLimitListener{Listener: ln, max: max, open: map[netip.Addr]int{}}
}

type peerLimitListener struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[netip.Addr]int
}

func (l *peerLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := peerAddr(c.RemoteAddr())
		l.mu.Lock()
		if l.open[peer] >= l.max {
			l.mu.Unlock()
			ConnectionsRefused.WithLabelValues(RefusedPeerLimit).Inc()
			_ = c.Close()
			continue
		}
		l.open[peer]++
		l.mu.Unlock()
		return &peerConn{Conn: c, release: sync.OnceFunc(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.open[peer]--; l.open[peer] <= 0 {
				delete(l.open, peer)
			}
		})}, nil
	}
}

func peerAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	p, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return p.Addr().Unmap()
}

type peerConn struct {
	net.Conn
	release func()
}

func (c *peerConn) Close() error {
	c.release()
	return c.Conn.Close()
}
