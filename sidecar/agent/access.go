package agent

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/sidecar/kubeapi"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// engine adds the RBAC check to the lock manager's readiness, and times acquire calls.
type engine struct {
	*lock.Manager
	m      *metrics
	denied atomic.Pointer[string]
	// allowed is set once the API server said every request of leaseAccess is allowed:
	// until then the agent is not ready, even when its Leases are synced.
	allowed atomic.Bool
}

// Acquire is the manager's, timed for leasehold_lock_acquire_wait_seconds.
func (e *engine) Acquire(ctx context.Context, name string, opts lock.AcquireOptions) (*lock.Hold, lock.State, error) {
	start := time.Now()
	h, s, err := e.Manager.Acquire(ctx, name, opts)
	e.m.acquired(name, err, time.Since(start))
	return h, s, err
}

func (e *engine) Ready() error {
	if msg := e.denied.Load(); msg != nil {
		return fmt.Errorf("%w: %s", lock.ErrForbidden, *msg)
	}
	if err := e.Manager.Ready(); err != nil {
		return err
	}
	if !e.allowed.Load() {
		return fmt.Errorf("%w: access to Leases not yet reviewed by the API server", lock.ErrUnavailable)
	}
	return nil
}

// leaseAccess is every request the agent makes on Leases: list, watch and update of each
// lock's Lease by name (so that a Role narrowed to the locks with resourceNames, as
// `kubectl leasehold rbac` prints it, passes), and create, which has no name.
func leaseAccess(locks []string) []kubeapi.LeaseAccess {
	access := []kubeapi.LeaseAccess{{Verb: "create"}}
	for _, name := range locks {
		for _, verb := range []string{"list", "watch", "update"} {
			access = append(access, kubeapi.LeaseAccess{Verb: verb, Name: name})
		}
	}
	return access
}

// accessReviewTimeout bounds one review of the agent's access. Not shorter: when a
// cluster's agents start at once the review waits in the API server's queues, and one
// given up after 5 s (as before) was work done for nothing and asked again.
const accessReviewTimeout = 30 * time.Second

// checkAccess asks the API server whether the agent may do what it does with the
// Leases of its locks, until it may. Between attempts it waits a jittered, growing
// pause (as the lock engine's watch does), so that agents started together and refused
// together (a busy API server answering 429) do not ask again all at the same moment.
func (e *engine) checkAccess(ctx context.Context, kc *kubeapi.Client, o *Options, log logr.Logger) {
	access := leaseAccess(e.LeaseNames())
	backoff := wait.Backoff{Duration: o.RetryPeriod / 2, Factor: 2, Jitter: 1, Steps: math.MaxInt32, Cap: 2 * o.RetryPeriod}.DelayFunc()
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, accessReviewTimeout)
		denied, err := kc.DeniedLeaseAccess(actx, access...)
		cancel()
		switch {
		case err != nil:
			log.V(1).Info("Failed to check access to Leases", "err", err.Error())
		case len(denied) > 0:
			what := make([]string, len(denied))
			for i, d := range denied {
				what[i] = d.String()
			}
			msg := fmt.Sprintf("may not %s in namespace %s", strings.Join(what, ", "), o.Namespace)
			e.denied.Store(&msg)
			log.Info("Not allowed to write Leases", "namespace", o.Namespace, "denied", what)
		default:
			e.denied.Store(nil)
			e.allowed.Store(true)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff()):
		}
	}
}
