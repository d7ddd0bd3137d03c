// Command fencing-writer is the replica of the fencing example (docs/fencing.md): it takes
// a lock from its Pod's Leasehold agent, then does units of work and writes each one to
// PostgreSQL tagged with its fencing token, through a fence that refuses a token lower
// than one that has already written. After a few units it lets the lock go, so that the
// replicas take turns, and keeps going.
//
//	fencing-writer -lock ledger -units 5 -work 1s      # DSN in $DATABASE_URL
//
// Before each unit it asks the agent whether the hold is still valid for the unit's
// length, and stops when it is not or when the agent said the hold ended. A pause in the
// middle of a unit (a stop-the-world, a frozen Pod, a paused VM) outlasts both checks:
// the write that follows it carries the old token, and only the fence refuses it.
//
// Log lines (one per event, logfmt): "acquired", "working" (a unit begins), "wrote",
// "refused", "stopped" (the hold is no longer valid before a unit), "released".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leasehold/leasehold/examples/fencing"
	"github.com/leasehold/leasehold/sidecar/client"
)

func main() {
	lock := flag.String("lock", "ledger", "the lock to take: declared in the Pod's leasehold.io/locks annotation")
	dsn := flag.String("dsn", os.Getenv("DATABASE_URL"), "PostgreSQL URL (default $DATABASE_URL)")
	units := flag.Int("units", 5, "units of work per hold before the lock is let go (0: never)")
	work := flag.Duration("work", time.Second, "length of one unit of work")
	wait := flag.Duration("wait", 30*time.Second, "how long one acquire call waits for the lock (then it asks again)")
	rest := flag.Duration("rest", 500*time.Millisecond, "pause between a release and the next acquire, so other replicas get a turn")
	name := flag.String("name", "", "this writer's name in the table (default: the host name, the Pod's name)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	if err := run(log, *lock, *dsn, *name, *units, *work, *wait, *rest); err != nil {
		log.Error("Failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, lock, dsn, name string, units int, work, wait, rest time.Duration) error {
	if dsn == "" {
		return errors.New("no database: set -dsn or $DATABASE_URL (postgres://user:password@host:port/db)")
	}
	if work <= 0 || units < 0 {
		return fmt.Errorf("-work %s and -units %d: want a positive duration and a count >= 0", work, units)
	}
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return fmt.Errorf("host name: %w (set -name)", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	store, err := fencing.Open(ctx, dsn, lock)
	if err != nil {
		return err
	}
	defer store.Close()
	agent := client.FromEnv()
	w := &writer{log: log.With("writer", name, "lock", lock), store: store, agent: agent, lock: lock, name: name, work: work}
	for ctx.Err() == nil {
		hold, err := acquire(ctx, agent, lock, wait)
		var agentErr *client.Error
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &agentErr) && agentErr.Status == http.StatusRequestTimeout:
			continue // another replica holds it; ask again
		case err != nil:
			w.log.Error("Failed to acquire", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		w.log.Info("acquired", "token", hold.State.Token)
		w.units(ctx, hold, units)
		_ = hold.Close()
		w.log.Info("released", "token", hold.State.Token)
		sleep(ctx, rest)
	}
	return nil
}

// acquire takes the lock with a hold tied to the connection, waiting up to wait, and
// gives up at once when ctx ends (SIGTERM): the client's call waits out its wait whatever
// its context, and a hold the agent grants after that ends with this process.
func acquire(ctx context.Context, agent *client.Client, lock string, wait time.Duration) (*client.Hold, error) {
	type answer struct {
		hold *client.Hold
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		h, err := agent.HoldConnection(ctx, lock, wait, 0)
		ch <- answer{h, err}
	}()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case a := <-ch:
		return a.hold, a.err
	}
}

type writer struct {
	log   *slog.Logger
	store *fencing.Store
	agent *client.Client
	lock  string
	name  string
	work  time.Duration
	seq   int64
}

// units does up to n units of work (n 0: until the hold ends) under hold.
func (w *writer) units(ctx context.Context, hold *client.Hold, n int) {
	token := hold.State.Token
	for i := 0; (n == 0 || i < n) && ctx.Err() == nil; i++ {
		// Check before the unit: the hold has not ended, and the agent still vouches for
		// it for at least the unit's length.
		select {
		case <-hold.Ended:
			w.log.Info("stopped", "token", token, "reason", hold.Reason)
			return
		default:
		}
		st, err := w.agent.State(ctx, w.lock)
		if err != nil || !st.Held || st.Token != token || time.Duration(st.ValidForMillis)*time.Millisecond < w.work {
			w.log.Info("stopped", "token", token, "reason", "the hold is not valid for another unit", "validFor", st.ValidFor, "err", err)
			return
		}
		w.seq++
		started := time.Now()
		w.log.Info("working", "token", token, "seq", w.seq)
		sleep(ctx, w.work) // the unit of work: a pause that lands here is what the fence is for
		if ctx.Err() != nil {
			return // shutting down: the unit is not written
		}
		id, err := w.store.Write(ctx, fencing.Write{Token: token, Writer: w.name, Seq: w.seq, Started: started})
		var refused *fencing.RefusedError
		switch {
		case errors.As(err, &refused):
			w.log.Warn("refused", "token", token, "seq", w.seq, "fenceToken", refused.FenceToken)
			return
		case err != nil:
			w.log.Error("Failed to write", "token", token, "seq", w.seq, "err", err)
			return
		}
		w.log.Info("wrote", "token", token, "seq", w.seq, "id", id)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
