package lock

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"

	"github.com/leasehold/leasehold/sidecar/kubeapi"
)

// startManager runs the locks that declare declares for the Pod identity id on cp, until
// the test ends (shut down first, as the agent does).
func (cp *controlPlane) startManager(t *testing.T, id string, declare func(*ManagerConfig)) *Manager {
	t.Helper()
	kc, err := kubeapi.New(rest.CopyConfig(cp.cfg), "ns")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ManagerConfig{Namespace: "ns", Identity: id, LeaseDuration: 6 * time.Second, RenewDeadline: 4 * time.Second,
		RetryPeriod: time.Second, Client: kc, Log: logr.Discard()}
	declare(&cfg)
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = m.Shutdown(sctx)
		cancel()
		<-done
	})
	return m
}

// locker is the declared lock name of m, through the interface only.
func locker(t *testing.T, m *Manager, name string) Locker {
	t.Helper()
	k, err := m.Locker(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// awaitState waits, on the lock's change channel, until its state satisfies cond.
func awaitState(t *testing.T, k Locker, what string, cond func(State) bool) State {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		ch := k.Changed()
		if s := k.State(); cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s %s: not true after 30s: %s; state %+v", k.Mode(), k.Name(), what, k.State())
		}
	}
}

// closedSoon says whether ch is closed within 30s.
func closedSoon(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(30 * time.Second):
		return false
	}
}

// Every kind of lock keeps one contract, checked through Locker alone against a real API
// server: acquire (and a second Pod's try finding it held), state, the change channel,
// the events under the declared name with the hold's token, renew, a stale token,
// release, a connection's tie, ReleaseHold, and a waiter woken by shutdown. Where the
// kinds differ, the difference is the kind's answer (NoToken, Tie), not a caller's switch.
func TestEveryKindKeepsTheLockerContract(t *testing.T) {
	cp := startControlPlane(t)
	tests := map[string]struct {
		declare func(*ManagerConfig)
		name    string
		mode    Mode
		leases  []string
		// fill is how many acquisitions of one Pod take every hold the lock has.
		fill int
		// clientHold: an acquire gives the client a hold of its own, named by its token;
		// otherwise the agent holds the lock (a leader lock).
		clientHold bool
		noToken    error
		// slot is the Event.Slot of the first acquisition's events.
		slot bool
	}{
		"mutex": {
			declare: func(c *ManagerConfig) { c.Mutexes = []string{"k-mutex"} },
			name:    "k-mutex", mode: ModeMutex, leases: []string{"k-mutex"}, fill: 1, clientHold: true, noToken: ErrTokenRequired,
		},
		"leader": {
			declare: func(c *ManagerConfig) { c.Leaders = []string{"k-leader"} },
			name:    "k-leader", mode: ModeLeader, leases: []string{"k-leader"}, fill: 1, noToken: ErrLeaderLock,
		},
		"semaphore": {
			declare: func(c *ManagerConfig) { c.Semaphores = map[string]int{"k-sem": 2} },
			name:    "k-sem", mode: ModeSemaphore, leases: []string{"k-sem.1", "k-sem.2"}, fill: 2, clientHold: true,
			noToken: ErrTokenRequired, slot: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			a := cp.startManager(t, "pod-a_1", tc.declare)
			k := locker(t, a, tc.name)
			if k.Name() != tc.name || k.Mode() != tc.mode || !slices.Equal(k.Leases(), tc.leases) {
				t.Fatalf("name, mode, leases: got %s %s %v, want %s %s %v", k.Name(), k.Mode(), k.Leases(), tc.name, tc.mode, tc.leases)
			}
			if err := k.NoToken(); !errors.Is(err, tc.noToken) {
				t.Fatalf("NoToken: got %v, want %v", err, tc.noToken)
			}
			events, cancel, err := a.Subscribe(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			defer cancel()

			// Acquire until every hold of the lock is this Pod's.
			var holds []*Hold
			var states []State
			for range tc.fill {
				h, s, err := k.Acquire(ctx, AcquireOptions{Wait: 30 * time.Second})
				if err != nil || !s.Held || s.Token <= 0 || (h != nil) != tc.clientHold {
					t.Fatalf("acquire: hold %v, state %+v, err %v", h != nil, s, err)
				}
				holds, states = append(holds, h), append(states, s)
			}
			first := states[0]
			if s := k.State(); !s.Held || s.Name != tc.name || s.Mode != tc.mode {
				t.Fatalf("state after acquire: %+v", s)
			}
			// The acquired event comes under the declared name, with the answer's token.
			for ev := range events {
				if ev.Type != EventAcquired || ev.Token != first.Token {
					continue
				}
				if ev.Lock != tc.name || (ev.Slot != "") != tc.slot || ev.Slot != first.Slot {
					t.Fatalf("acquired event: %+v, want lock %s, slot %q", ev, tc.name, first.Slot)
				}
				break
			}

			// Another Pod finds it held, and waits.
			b := cp.startManager(t, "pod-b_2", tc.declare)
			kb := locker(t, b, tc.name)
			waitUntil(t, 30*time.Second, "pod-b ready", func() bool { return kb.Ready() == nil })
			if _, _, err := kb.Acquire(ctx, AcquireOptions{}); !errors.Is(err, ErrNotAcquired) {
				t.Fatalf("try of another Pod while held: got %v, want ErrNotAcquired", err)
			}
			waitB := acquireAsync(ctx, kb)

			// Renew, a stale token, the tie of a connection.
			renewed, err := k.Renew(first.Token, 20*time.Second)
			if !errors.Is(err, tc.noToken) && (err != nil || !renewed.Held || renewed.Token != first.Token) {
				t.Fatalf("renew: %+v %v", renewed, err)
			}
			if _, err := k.Renew(first.Token+5*SlotTokenBase, 0); !errors.Is(err, ErrStaleToken) && !errors.Is(err, ErrLeaderLock) {
				t.Fatalf("renew of a stale token: got %v, want ErrStaleToken (ErrLeaderLock for a leader lock)", err)
			}
			tie := k.Tie(holds[0], first)
			if reason, ended := tie.Ended(k.State()); ended {
				t.Fatalf("the tie of a hold just taken has ended: %s", reason)
			}

			sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
			defer scancel()
			if !tc.clientHold {
				// Nothing for a client to release; the agent gives the lock up at its
				// shutdown, and the other Pod leads.
				if _, err := k.Release(ctx, first.Token); !errors.Is(err, ErrLeaderLock) {
					t.Fatalf("release of a leader lock: got %v, want ErrLeaderLock", err)
				}
				if err := a.Shutdown(sctx); err != nil {
					t.Fatal(err)
				}
				if r := <-waitB; r.err != nil || !r.s.Held {
					t.Fatalf("the other Pod's wait for the leader after this Pod's shutdown: %+v %v", r.s, r.err)
				}
				if reason, ended := tie.Ended(k.State()); !ended || reason == "" {
					t.Fatal("the tie of a leader's term did not end at shutdown")
				}
				return
			}

			// Release by token tells the change channel and the tie, and hands the hold
			// to the other Pod's waiter; the token is stale then.
			changed := k.Changed()
			if _, err := k.Release(ctx, first.Token); err != nil {
				t.Fatalf("release: %v", err)
			}
			if !closedSoon(changed) || !closedSoon(tie.Done()) || tie.Reason() != "released" {
				t.Fatalf("release: the change channel and the tie did not tell (reason %q)", tie.Reason())
			}
			var staleErr *StaleTokenError
			if _, err := k.Release(ctx, first.Token); !errors.As(err, &staleErr) || !strings.Contains(staleErr.Ended, "released") {
				t.Fatalf("second release of the same token: got %v, want a StaleTokenError saying it was released", err)
			}
			rb := <-waitB
			if rb.err != nil || rb.h == nil {
				t.Fatalf("the other Pod's waiter: %v", rb.err)
			}

			// Every hold taken again: this Pod's waiter is woken when the other Pod's
			// connection closes (ReleaseHold).
			waitA := acquireAsync(ctx, k)
			kb.ReleaseHold(ctx, rb.h, "client connection closed")
			if !closedSoon(rb.h.Done()) {
				t.Fatal("ReleaseHold did not end the hold")
			}
			if ra := <-waitA; ra.err != nil || !ra.s.Held {
				t.Fatalf("this Pod's waiter after the other's ReleaseHold: %+v %v", ra.s, ra.err)
			}

			// A waiter gives up at once at its Pod's shutdown.
			waitB = acquireAsync(ctx, kb)
			if err := b.Shutdown(sctx); err != nil {
				t.Fatal(err)
			}
			if r := <-waitB; !errors.Is(r.err, ErrShutdown) {
				t.Fatalf("waiter at its Pod's shutdown: got %v, want ErrShutdown", r.err)
			}
		})
	}
}

type acquireAnswer struct {
	h   *Hold
	s   State
	err error
}

// acquireAsync starts an acquisition of k that waits up to a minute.
func acquireAsync(ctx context.Context, k Locker) <-chan acquireAnswer {
	out := make(chan acquireAnswer, 1)
	go func() {
		h, s, err := k.Acquire(ctx, AcquireOptions{Wait: time.Minute})
		out <- acquireAnswer{h, s, err}
	}()
	return out
}
