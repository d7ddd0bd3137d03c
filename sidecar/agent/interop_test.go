package agent_test

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// clientGoElector runs client-go's own leader election (LeaseLock) on name.
type clientGoElector struct {
	le      *leaderelection.LeaderElector
	leading atomic.Bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func startClientGo(t *testing.T, name, identity string) *clientGoElector {
	t.Helper()
	return startClientGoAs(t, kube, "default", name, identity)
}

// startClientGoAs runs client-go's leader election on Lease ns/name with client cs.
func startClientGoAs(t *testing.T, cs kubernetes.Interface, ns, name, identity string) *clientGoElector {
	t.Helper()
	e := &clientGoElector{done: make(chan struct{})}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: name},
			Client:     cs.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
		},
		LeaseDuration:   leaseDuration,
		RenewDeadline:   renewDeadline,
		RetryPeriod:     retryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { e.leading.Store(true) },
			OnStoppedLeading: func() { e.leading.Store(false) },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.le = le
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { le.Run(ctx); close(e.done) }()
	t.Cleanup(e.stop)
	return e
}

// says is client-go's "I am the leader": leading and the record names it.
func (e *clientGoElector) says() bool { return e.leading.Load() && e.le.IsLeader() }

func (e *clientGoElector) stop() {
	e.cancel()
	<-e.done
}

// The Lease written by the agent is respected by client-go's leader election on the
// same name, and the other way round: neither ever holds while the other says held,
// and the fencing token rises across both.
func TestInteropWithClientGoLeaderElection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const name = "interop"

	// client-go first: it leads, the agent (leader mode) waits.
	cg := startClientGo(t, name, "client-go-1")
	waitFor(t, "client-go to lead", cg.says)
	a := startAgent(t, "pod-i1", "--leader="+name)

	var violations atomic.Int32
	var maxToken atomic.Int64
	stopCheck := make(chan struct{})
	var wg sync.WaitGroup
	var cgMu sync.Mutex
	current := cg
	wg.Go(func() {
		for {
			select {
			case <-stopCheck:
				return
			default:
			}
			cgMu.Lock()
			c := current
			cgMu.Unlock()
			cgSays := c != nil && c.says()
			s, err := a.c.State(ctx, name)
			if err == nil && s.Held && cgSays && c.says() {
				violations.Add(1)
			}
			if err == nil && s.Held {
				if s.Token < maxToken.Load() {
					violations.Add(1)
				}
				maxToken.Store(s.Token)
			}
			time.Sleep(2 * time.Millisecond)
		}
	})

	// The agent must not take the Lease while client-go renews it.
	time.Sleep(2 * leaseDuration)
	if s := a.state(name); s.Held || s.Holder != "client-go-1" {
		t.Fatalf("agent while client-go leads: want not held, holder client-go-1, got %+v", s)
	}
	tokenCG := a.state(name).Token

	// client-go steps down (ReleaseOnCancel): the agent takes over with a greater token.
	cg.stop()
	waitFor(t, "the agent to lead after client-go released", func() bool { return a.state(name).Held })
	if s := a.state(name); s.Token <= tokenCG {
		t.Fatalf("agent token %d not greater than client-go's %d", s.Token, tokenCG)
	}

	// A new client-go candidate must not lead while the agent holds.
	cg2 := startClientGo(t, name, "client-go-2")
	cgMu.Lock()
	current = cg2
	cgMu.Unlock()
	time.Sleep(2 * leaseDuration)
	if cg2.leading.Load() {
		t.Fatal("client-go led while the agent held the Lease")
	}
	tokenAgent := a.state(name).Token

	// The agent stops (SIGTERM releases): client-go takes over.
	a.signal(syscall.SIGTERM)
	<-a.exited
	waitFor(t, "client-go to lead after the agent released", cg2.says)
	close(stopCheck)
	wg.Wait()
	lease, err := kube.CoordinationV1().Leases("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if int64(*lease.Spec.LeaseTransitions) <= tokenAgent {
		t.Fatalf("client-go's transitions %d not greater than the agent's token %d", *lease.Spec.LeaseTransitions, tokenAgent)
	}
	if n := violations.Load(); n > 0 {
		t.Fatalf("%d samples where the agent and client-go both said held, or a token went down", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 15*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}
