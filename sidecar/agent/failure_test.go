package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// Three agents hand one lock around many times: at every moment at most one says
// held, and every acquisition's token is greater than every earlier one's.
func TestTokensStrictlyIncreaseOverHandovers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	agents := []*agentProc{
		startAgent(t, "pod-t1", "--locks=tokens"),
		startAgent(t, "pod-t2", "--locks=tokens"),
		startAgent(t, "pod-t3", "--locks=tokens"),
	}
	const rounds = 20 // per agent
	var mu sync.Mutex
	var tokens []int64
	var wg sync.WaitGroup
	errs := make(chan error, len(agents))
	for i, a := range agents {
		wg.Go(func() {
			for r := 0; r < rounds; r++ {
				s, err := a.c.Acquire(ctx, "tokens", 20*time.Second, 0)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				tokens = append(tokens, s.Token)
				mu.Unlock()
				// Nobody else says held while this agent does.
				for j, o := range agents {
					if j != i {
						if os, err := o.c.State(ctx, "tokens"); err != nil || os.Held {
							errs <- errors.New("two agents say held at once: " + o.pod + " and " + a.pod)
							return
						}
					}
				}
				if _, err := a.c.Release(ctx, "tokens", s.Token); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(tokens) != rounds*len(agents) {
		t.Fatalf("want %d acquisitions, got %d", rounds*len(agents), len(tokens))
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("token %d at acquisition %d is not greater than %d before it: %v", tokens[i], i, tokens[i-1], tokens)
		}
	}
}

// A holder killed with SIGKILL (no release) loses the lock to a waiter only after
// lease-duration from its last renew, and not much later.
func TestKilledHolderLosesLockAfterLeaseDuration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-k1", "--locks=killed")
	b := startAgent(t, "pod-k2", "--locks=killed")
	sa, err := a.c.Acquire(ctx, "killed", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(leaseDuration) // some renewals
	a.signal(syscall.SIGKILL)
	<-a.exited
	killed := time.Now()
	lease, err := kube.CoordinationV1().Leases("default").Get(ctx, "killed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lastRenew := lease.Spec.RenewTime.Time
	sb, err := b.c.Acquire(ctx, "killed", 10*time.Second, 0)
	took := time.Now()
	if err != nil || sb.Token <= sa.Token {
		t.Fatalf("B: want the lock with a token > %d, got %+v %v", sa.Token, sb, err)
	}
	if early := lastRenew.Add(leaseDuration); took.Before(early) {
		t.Fatalf("B took the lock at %s, before the killed holder's last renew %s + lease-duration", took, lastRenew)
	}
	if late := killed.Add(leaseDuration + 2*time.Second); took.After(late) {
		t.Fatalf("B took the lock %s after the kill: far more than lease-duration %s", took.Sub(killed), leaseDuration)
	}
}

// When the API server stops answering, the holder stops saying held within
// renew-deadline of its last successful write, before anyone else can acquire.
func TestFrozenAPIServerHolderStopsSayingHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, p := cutOffAgent(t, "pod-f1", "--locks=frozen")
	b := startAgent(t, "pod-f2", "--locks=frozen")
	if _, err := a.c.Acquire(ctx, "frozen", 0, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(leaseDuration)
	p.SetFrozen(true)
	frozen := time.Now()
	var bAcquired time.Time
	bDone := make(chan error, 1)
	go func() {
		_, err := b.c.Acquire(ctx, "frozen", 10*time.Second, 0)
		bAcquired = time.Now()
		bDone <- err
	}()
	var aNotHeld time.Time
	for aNotHeld.IsZero() {
		s := a.state("frozen")
		if !s.Held {
			aNotHeld = time.Now()
			break
		}
		if time.Since(frozen) > renewDeadline+time.Second {
			t.Fatalf("A still says held %s after the API server froze (renew-deadline %s): %+v", time.Since(frozen), renewDeadline, s)
		}
		select {
		case err := <-bDone:
			t.Fatalf("B acquired (%v) while A still says held: %+v", err, s)
		default:
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("B: want the lock after A's lease expired, got %v", err)
	}
	if !aNotHeld.Before(bAcquired) {
		t.Fatalf("A stopped saying held at %s, not before B acquired at %s", aNotHeld, bAcquired)
	}
	t.Logf("A not held %s after freeze; B acquired %s after freeze", aNotHeld.Sub(frozen), bAcquired.Sub(frozen))
	p.SetFrozen(false)
	if s := a.state("frozen"); s.Held {
		t.Fatalf("A says held after B took the lock: %+v", s)
	}
}

// SIGTERM releases at once: a waiter gets the lock long before lease-duration, the
// event stream hears "shutdown", and the agent exits 0.
func TestSIGTERMReleasesAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const longLease = "--lease-duration=20s"
	a := startAgent(t, "pod-s1", "--locks=term", longLease, "--renew-deadline=15s", "--retry-period=1s")
	b := startAgent(t, "pod-s2", "--locks=term", longLease, "--renew-deadline=15s", "--retry-period=1s")
	if _, err := a.c.Acquire(ctx, "term", 0, 0); err != nil {
		t.Fatal(err)
	}
	code, body, err := a.c.Get(ctx, "/v1/locks/term")
	if err != nil || code != 200 {
		t.Fatalf("state: %d %s %v", code, body, err)
	}
	events := streamEvents(t, a, "term")
	bDone := make(chan error, 1)
	go func() {
		_, err := b.c.Acquire(ctx, "term", 15*time.Second, 0)
		bDone <- err
	}()
	waitQueue(t, "term", b.identity()) // B is waiting
	sent := time.Now()
	a.signal(syscall.SIGTERM)
	if err := <-bDone; err != nil {
		t.Fatalf("B after SIGTERM to A: %v", err)
	}
	if took := time.Since(sent); took > 5*time.Second {
		t.Fatalf("B got the lock %s after SIGTERM: not released at once (lease-duration 20s)", took)
	}
	<-a.exited
	if a.err() != nil {
		t.Fatalf("agent exit after SIGTERM: %v", a.err())
	}
	if !waitEvent(events, lock.EventShutdown, 5*time.Second) {
		t.Fatal("event stream did not hear shutdown")
	}
}

// A hold tied to a connection ends when its client is killed; `leasehold run`
// passes the command's exit status through.
func TestConnectionHoldEndsWhenClientKilled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-c1", "--locks=conn", "--lease-duration=20s", "--renew-deadline=15s", "--retry-period=1s")
	b := startAgent(t, "pod-c2", "--locks=conn", "--lease-duration=20s", "--renew-deadline=15s", "--retry-period=1s")
	leasehold := filepath.Join(binDir, "leasehold")

	run := exec.Command(leasehold, "run", "--socket="+a.socket, "conn", "--", "sh", "-c", "exit 7")
	if err := run.Run(); run.ProcessState.ExitCode() != 7 {
		t.Fatalf("leasehold run -- exit 7: want exit status 7, got %v", err)
	}
	if s := a.state("conn"); s.Held {
		t.Fatalf("lock still held after leasehold run ended: %+v", s)
	}

	hold := exec.Command(leasehold, "run", "--socket="+a.socket, "conn", "--", "sleep", "60")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hold.Process.Kill(); _ = hold.Wait() }()
	waitState(t, a, "conn", 10*time.Second, "leasehold run takes the lock", func(s lock.State) bool { return s.Held })
	if _, err := b.c.Acquire(ctx, "conn", 0, 0); status(err) != 409 {
		t.Fatalf("B try while the connection holds: want 409, got %v", err)
	}
	bDone := make(chan error, 1)
	var bToken int64
	go func() {
		s, err := b.c.Acquire(ctx, "conn", 15*time.Second, 0)
		bToken = s.Token
		bDone <- err
	}()
	waitQueue(t, "conn", b.identity()) // B is waiting
	killed := time.Now()
	_ = hold.Process.Kill() // SIGKILL: no chance to release
	if err := <-bDone; err != nil {
		t.Fatalf("B after the client was killed: %v", err)
	}
	if took := time.Since(killed); took > 5*time.Second {
		t.Fatalf("B got the lock %s after the client was killed (lease-duration 20s): the hold did not end at once", took)
	}

	// The other subcommands' exit statuses, now that B holds the lock.
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"status", "--socket=" + a.socket, "conn"}, 0},
		{[]string{"acquire", "--socket=" + a.socket, "conn"}, 1},
		{[]string{"acquire", "--socket=" + a.socket, "--wait=200ms", "conn"}, 2},
		{[]string{"release", "--socket=" + a.socket, "conn"}, 64},                                   // no token
		{[]string{"release", "--socket=" + a.socket, fmt.Sprintf("--token=%d", bToken), "conn"}, 1}, // not A's hold
		{[]string{"release", "--socket=" + b.socket, fmt.Sprintf("--token=%d", bToken-1), "conn"}, 1},
		{[]string{"status", "--socket=" + a.socket, "nope"}, 64},
		{[]string{"acquire", "--socket=" + b.socket, "-o", "yaml", "conn"}, 64},
		{[]string{"renew", "--socket=" + b.socket, fmt.Sprintf("--token=%d", bToken), "--ttl=10s", "conn"}, 0},
		{[]string{"release", "--socket=" + b.socket, fmt.Sprintf("--token=%d", bToken), "conn"}, 0},
	} {
		cmd := exec.Command(leasehold, tc.args...)
		out, _ := cmd.CombinedOutput()
		if got := cmd.ProcessState.ExitCode(); got != tc.want {
			t.Fatalf("leasehold %v: want exit %d, got %d: %s", tc.args, tc.want, got, out)
		}
	}
	// acquire -o token prints the token alone, for T=$(leasehold acquire -o token LOCK).
	out, err := exec.Command(leasehold, "acquire", "--socket="+b.socket, "-o", "token", "conn").Output()
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(bToken+1) {
		t.Fatalf("leasehold acquire -o token: want %d, got %q %v", bToken+1, out, err)
	}
}
