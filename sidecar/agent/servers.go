package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/leasehold/leasehold/sidecar/api"
	"github.com/leasehold/leasehold/sidecar/listen"
)

// server is an HTTP server on its listeners, as a runnable: it serves until ctx ends,
// then ends its long requests (beforeShutdown), shuts down gracefully within
// shutdownTimeout and returns (controller-runtime's manager.Server does the same).
type server struct {
	name            string
	srv             *http.Server
	listeners       []net.Listener
	beforeShutdown  func()
	shutdownTimeout time.Duration
	log             logr.Logger
}

func (s *server) Start(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, l := range s.listeners {
		wg.Go(func() {
			if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error(err, "Failed to serve", "server", s.name, "address", l.Addr().String())
			}
		})
	}
	<-ctx.Done()
	if s.beforeShutdown != nil {
		s.beforeShutdown()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("connections still open after --shutdown-timeout %s: %w", s.shutdownTimeout, err)
	}
	return nil
}

// apiServer serves the lock API on the Unix socket (and loopback TCP), at most
// --max-connections at once: a flood gets 503, the open holds stay served. When it
// stops, its requests' context ends first, which ends the event streams and the
// acquire calls still waiting.
func apiServer(o *Options, handler http.Handler, ls []net.Listener, log logr.Logger) *server {
	s := &server{name: "api", shutdownTimeout: o.ShutdownTimeout, log: log}
	limit := listen.NewConnLimit(o.MaxConnections)
	for _, l := range ls {
		s.listeners = append(s.listeners, limit.Wrap(l))
	}
	requests, stopRequests := context.WithCancel(context.Background())
	s.beforeShutdown = stopRequests
	s.srv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 2 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    8 << 10,
		BaseContext:       func(net.Listener) context.Context { return requests },
	}
	return s
}

// probeServer serves only /healthz and /readyz on the probe socket, with a cap of its
// own, so that clients at --max-connections never fail the kubelet's probes (a failed
// startup probe restarts the agent and drops its leader locks).
func probeServer(o *Options, handler *api.Handler, l net.Listener, log logr.Logger) *server {
	return &server{
		name:      "probes",
		listeners: []net.Listener{listen.NewConnLimit(ProbeConnections).Wrap(l)},
		srv: &http.Server{
			Handler:           handler.Probes(),
			ReadHeaderTimeout: 2 * time.Second,
			IdleTimeout:       10 * time.Second,
			MaxHeaderBytes:    4 << 10,
		},
		shutdownTimeout: o.ShutdownTimeout,
		log:             log,
	}
}

// Limits of the metrics server, the one listener on the Pod's IP (any Pod of the cluster
// may connect to it unless a NetworkPolicy says otherwise). Each connection held open
// costs the agent about 33 KiB (its goroutine, buffers and the last answer); with 90 s
// of keep-alive, 5,000 idle scrapers took an agent to 173 MiB, past its 64 Mi limit.
// So: at most MetricsConnections at once (beyond, a 503 at once, see listen.ConnLimit;
// the lock API's connections are counted apart and never refused because of these),
// and a connection idle for MetricsIdleTimeout is closed: a Prometheus scraping every
// 15 s or more opens a new connection per scrape, which costs it nothing measurable.
const MetricsIdleTimeout = 5 * time.Second

// metricsServer serves GET /metrics, read-only, on --metrics-bind-address, at most
// --metrics-max-connections at once, each closed after MetricsIdleTimeout idle.
func metricsServer(o *Options, m *metrics, l net.Listener, log logr.Logger) *server {
	return &server{
		name:      "metrics",
		listeners: []net.Listener{listen.NewConnLimitFor(o.MetricsMaxConnections, "--metrics-max-connections").Wrap(l)},
		srv: &http.Server{
			Handler:           m.handler(),
			ReadHeaderTimeout: 2 * time.Second,
			ReadTimeout:       5 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       MetricsIdleTimeout,
			MaxHeaderBytes:    4 << 10,
		},
		shutdownTimeout: o.ShutdownTimeout,
		log:             log,
	}
}
