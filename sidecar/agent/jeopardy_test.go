package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// cutOffAgent starts an agent whose only way to the API server is a proxy the test can
// freeze (a black hole with the sockets open, as a partitioned control plane looks).
func cutOffAgent(t testing.TB, pod string, args ...string) (*agentProc, *testenv.Proxy) {
	t.Helper()
	u, err := url.Parse(restCfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	p, err := testenv.NewProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := writeKubeconfig(kc, "https://"+p.Addr()); err != nil {
		t.Fatal(err)
	}
	return startAgent(t, pod, append(args, "--kubeconfig="+kc)...), p
}

// waitPhase waits until the lock's state at a is in phase want, at most within.
func waitPhase(t *testing.T, a *agentProc, name string, want lock.Phase, within time.Duration) lock.State {
	t.Helper()
	return waitState(t, a, name, within, fmt.Sprintf("phase %q", want), func(s lock.State) bool { return s.Phase == want })
}

// outputFile is a file a process writes its output into (the process holds the file
// itself: nothing copies it in the test's process) and the test reads at any time.
type outputFile struct{ *os.File }

func newOutputFile(t *testing.T) outputFile {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return outputFile{f}
}

// String is what the process wrote so far.
func (o outputFile) String() string {
	b, _ := os.ReadFile(o.Name())
	return string(b)
}

func lineCount(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// The API server away for longer than lease-duration: the holder's agent says
// jeopardy (state, events stream, require=held), `leasehold run` freezes its command's
// whole process group, and when the API server is back the hold is safe again with
// the same token and the command goes on.
func TestLeaseholdRunFreezesItsCommandInJeopardy(t *testing.T) {
	t.Parallel()
	a, proxy := cutOffAgent(t, "pod-j1", "--locks=jrun", "--grace=30s")
	events := streamEvents(t, a, "jrun")
	out := filepath.Join(t.TempDir(), "ticks")
	// The loop's ticks come from a child process (the shell's date), so a freeze of
	// the command's process alone would not stop them: the whole group must stop.
	run := exec.Command(filepath.Join(binDir, "leasehold"), "run", "--socket="+a.socket, "jrun", "--",
		"sh", "-c", `echo "$LEASEHOLD_TOKEN" > "$0.token"; while :; do date +%s%N >> "$0"; sleep 0.02; done`, out)
	stderr := newOutputFile(t) // read while leasehold run writes to it
	run.Stderr = stderr.File
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	run.WaitDelay = time.Second // the command's group holds stderr open until it is killed too
	t.Cleanup(func() {
		_ = run.Process.Kill()
		_ = exec.Command("pkill", "-KILL", "-f", out).Run() // the command's process group
		_ = run.Wait()
		if t.Failed() {
			t.Logf("leasehold run said: %s", stderr.String())
		}
	})
	waitFor(t, "the command ticks", func() bool { return lineCount(t, out) > 5 })
	held := waitPhase(t, a, "jrun", lock.PhaseHeld, time.Second)
	if !waitEvent(events, lock.EventAcquired, 5*time.Second) {
		t.Fatal("no acquired event")
	}

	proxy.SetFrozen(true)
	cut := time.Now()
	s := waitPhase(t, a, "jrun", lock.PhaseJeopardy, renewDeadline+2*time.Second)
	if s.Held || s.ValidForMillis != 0 || s.Token != held.Token {
		t.Fatalf("in jeopardy: want not held, validFor 0, token %d; got %+v", held.Token, s)
	}
	if code, _, _ := a.c.Get(context.Background(), "/v1/locks/jrun?require=held"); code != 409 {
		t.Fatalf("require=held in jeopardy: %d, want 409", code)
	}
	if !waitEvent(events, lock.EventJeopardy, 2*time.Second) {
		t.Fatal("no jeopardy event on the stream")
	}
	time.Sleep(300 * time.Millisecond) // leasehold run hears it and stops the group
	n := lineCount(t, out)
	time.Sleep(time.Second)
	if m := lineCount(t, out); m != n {
		t.Fatalf("the command went on in jeopardy: %d ticks in 1 s (stderr: %s)", m-n, stderr.String())
	}
	time.Sleep(leaseDuration + time.Second - time.Since(cut)) // away longer than lease-duration
	proxy.SetFrozen(false)
	t.Logf("API server away for %s", time.Since(cut).Round(time.Millisecond))

	s = waitPhase(t, a, "jrun", lock.PhaseHeld, 10*time.Second)
	if !s.Held || s.Token != held.Token {
		t.Fatalf("safe again: want held with the same token %d, got %+v", held.Token, s)
	}
	if !waitEvent(events, lock.EventSafe, 2*time.Second) {
		t.Fatal("no safe event on the stream")
	}
	waitFor(t, "the command ticks again", func() bool { return lineCount(t, out) > n+5 })
	tok, err := os.ReadFile(out + ".token")
	if err != nil || strings.TrimSpace(string(tok)) != strconv.FormatInt(held.Token, 10) {
		t.Fatalf("the command's LEASEHOLD_TOKEN %q, want %d (%v)", tok, held.Token, err)
	}
	for _, want := range []string{"in jeopardy", "freezing the command", "safe again", "continuing the command"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("leasehold run said %q, want it to mention %q", stderr.String(), want)
		}
	}
}

// With --on-jeopardy=end, leasehold run ends its command (SIGTERM) when the hold goes
// into jeopardy, for programs that must not be frozen.
func TestLeaseholdRunEndsItsCommandInJeopardyWhenAsked(t *testing.T) {
	t.Parallel()
	a, proxy := cutOffAgent(t, "pod-j2", "--locks=jend", "--grace=30s")
	pidFile := filepath.Join(t.TempDir(), "pid")
	run := exec.Command(filepath.Join(binDir, "leasehold"), "run", "--socket="+a.socket, "--on-jeopardy=end", "jend", "--",
		"sh", "-c", `echo $$ > "$0"; exec sleep 60`, pidFile)
	stderr := newOutputFile(t) // read while leasehold run writes to it
	run.Stderr = stderr.File
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = run.Process.Kill() })
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	waitPhase(t, a, "jend", lock.PhaseHeld, 10*time.Second)
	var pid int
	waitFor(t, "the command's pid", func() bool {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid > 0
	})
	proxy.SetFrozen(true)
	defer proxy.SetFrozen(false)
	waitPhase(t, a, "jend", lock.PhaseJeopardy, renewDeadline+2*time.Second)
	jeopardy := time.Now()
	// The command is ended at once; leasehold run itself exits once its release call
	// (which the unreachable API server makes wait) has returned.
	waitFor(t, "the command ended", func() bool { return syscall.Kill(pid, 0) != nil })
	t.Logf("command ended %s after the agent said jeopardy", time.Since(jeopardy).Round(time.Millisecond))
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
			t.Fatalf("leasehold run: %v, want exit status %d (its command ended by SIGTERM); stderr: %s", err, 128+int(syscall.SIGTERM), stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("leasehold run did not exit after its command ended; stderr: %s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "--on-jeopardy=end") {
		t.Errorf("leasehold run said %q, want it to name --on-jeopardy=end", stderr.String())
	}
}
