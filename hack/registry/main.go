// Command registry serves an OCI registry (go-containerregistry's pkg/registry, what
// `crane registry serve` wraps) on a loopback address, with blobs on disk. hack/cluster.sh
// runs it for the local node: the images and the Helm chart are pushed there and the
// node's containerd pulls from it (a registry mirror in its hosts.toml).
//
//	registry -addr 127.0.0.1:15500 -dir /var/lib/leasehold-cluster/registry
//
// Blobs live under -dir; manifests and tags in memory: a restarted registry is empty, as
// hack/cluster.sh up starts it (and down removes -dir). It answers plain HTTP and only on
// a loopback address: it has no authentication, so nothing beyond this machine may reach it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:15500", "listen address (loopback only)")
	dir := flag.String("dir", "", "blob directory (required)")
	verbose := flag.Bool("v", false, "log every request")
	flag.Parse()
	if err := run(*addr, *dir, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}

func run(addr, dir string, verbose bool) error {
	if dir == "" {
		return errors.New("-dir is required (the blob directory)")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("bad -addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %q is not a loopback address: the registry has no authentication, serve it on 127.0.0.1 or ::1", addr)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create the blob directory: %w", err)
	}
	logger := log.New(io.Discard, "", 0)
	if verbose {
		logger = log.New(os.Stderr, "", log.LstdFlags)
	}
	srv := &http.Server{
		Handler: registry.New(registry.WithBlobHandler(registry.NewDiskBlobHandler(dir)),
			registry.WithReferrersSupport(true), registry.Logger(logger)),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("Serving an OCI registry on http://%s (blobs in %s)", addr, dir)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
