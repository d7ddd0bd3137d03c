package agent

import (
	"context"

	"github.com/go-logr/logr"
)

// runnable is one long-running part of the agent (a server, the lock manager, the
// Event recorder...): Start runs it until ctx ends, stops it, and returns. It has the
// shape of controller-runtime's manager.Runnable; the manager itself is not used, as
// it would bring its dependencies into the agent, whose idle memory is kept small.
type runnable interface {
	Start(ctx context.Context) error
}

// runnableFunc makes a function a runnable (controller-runtime's manager.RunnableFunc).
type runnableFunc func(ctx context.Context) error

func (f runnableFunc) Start(ctx context.Context) error { return f(ctx) }

// runs makes a runnable of a function that runs until ctx ends and returns nothing.
func runs(f func(ctx context.Context)) runnable {
	return runnableFunc(func(ctx context.Context) error { f(ctx); return nil })
}

// part is a runnable started by startPart, to be stopped by stopParts.
type part struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startPart runs r in a goroutine until stopParts is called on the part it returns:
// ending ctx does not stop it, so that Run chooses the order of the stops (ctx's values
// are passed on). An error r returns is logged with name; the other parts go on.
func startPart(ctx context.Context, log logr.Logger, name string, r runnable) *part {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &part{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		if err := r.Start(ctx); err != nil {
			log.Error(err, "Failed to run", "part", name)
		}
	}()
	return p
}

// stopParts tells every part at once to stop, then waits until they all have returned or
// ctx ends. Nil parts (parts not started) are skipped.
func stopParts(ctx context.Context, parts ...*part) {
	for _, p := range parts {
		if p != nil {
			p.cancel()
		}
	}
	for _, p := range parts {
		if p == nil {
			continue
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			return
		}
	}
}
