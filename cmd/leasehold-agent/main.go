// Command leasehold-agent is the Leasehold lock agent, injected into Pods as a native
// sidecar. See sidecar/agent for what it does; this file only wires flags, the logger
// and signals.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/leasehold/leasehold/internal/version"
	"github.com/leasehold/leasehold/sidecar/agent"
)

func main() {
	o := agent.NewOptions()
	fs := flag.NewFlagSet("leasehold-agent", flag.ExitOnError)
	o.BindFlags(fs)
	verbosity := fs.Int("v", 0, "Log verbosity: 0 info, 1 lock state changes, 5 every renew.")
	printVersion := fs.Bool("version", false, "Print the version and exit.")
	_ = fs.Parse(os.Args[1:])
	if *printVersion {
		fmt.Println(version.String("leasehold-agent"))
		return
	}

	if o.Probe != "" {
		os.Exit(agent.Probe(o.Socket, o.Probe, os.Stdout))
	}

	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zapcore.Level(-*verbosity))
	zc.Sampling = nil
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	zl, err := zc.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "build logger:", err)
		os.Exit(2)
	}
	log := zapr.NewLogger(zl)
	log.Info("Starting leasehold-agent", "version", version.Version())
	// Before anything allocates much: a memory limit the runtime knows of makes it
	// collect garbage harder before the kernel's limit would kill the agent.
	if limit, from, err := agent.SetMemoryLimit(os.Getenv); err != nil {
		log.Error(err, "Failed to set the Go memory limit; running without one")
	} else if limit > 0 {
		log.Info("Set the Go memory limit", "bytes", limit, "from", from)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := agent.Run(ctx, o, log); err != nil {
		log.Error(err, "Failed to run the agent")
		_ = zl.Sync()
		os.Exit(1)
	}
	_ = zl.Sync()
}
