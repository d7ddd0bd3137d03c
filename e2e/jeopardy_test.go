//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/leasehold/leasehold/sidecar/client"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// The locks and the agent's loopback port of TestHoldsRideOutAKubeAPIServerRestart.
const (
	rideLeader = "ride-leader"
	rideMutex  = "ride-mutex"
	ridePort   = 8787
)

// rideOutScript is the app of TestHoldsRideOutAKubeAPIServerRestart. It follows the
// server-sent events of both locks on the agent's loopback port (busybox nc: its wget
// segfaults in containers), runs a ticking loop under the leader lock with `leasehold run`
// (which waits until this Pod leads) and, when mutex is true, another one under the
// mutex. Every line goes to the container's log:
//
//	sse LOCK EVENT DATA                   one event of the stream (DATA: its JSON)
//	sse LOCK closed                       the stream ended
//	LOCK token=N                          the command under LOCK started with token N
//	LOCK tick I                           the command is running (I counts up by one)
//	LOCK run ended: S                     leasehold run exited with S
//	leasehold: lock LOCK is in jeopardy   leasehold run froze the command (its stderr)
//	leasehold: lock LOCK is safe again    ... and continued it
func rideOutScript(mutex bool) string {
	run := func(lock, wait string) string {
		return fmt.Sprintf(`{ leasehold run %s%s -- sh -c 'echo "%s token=$LEASEHOLD_TOKEN"; i=0; while :; do i=$((i+1)); echo "%s tick $i"; sleep 0.5; done'; echo "%s run ended: $?"; } &`,
			wait, lock, lock, lock, lock)
	}
	s := fmt.Sprintf(`sse() {
  { printf 'GET /v1/locks/%%s/events HTTP/1.1\r\nHost: agent\r\n\r\n' "$1"; exec sleep 86400; } | nc 127.0.0.1 %d |
    { while IFS= read -r l; do
        case "$l" in
          "event: "*) ev=${l#event: } ;;
          "data: "*) echo "sse $1 $ev ${l#data: }" ;;
        esac
      done; echo "sse $1 closed"; }
}
sse %s &
sse %s &
`, ridePort, rideLeader, rideMutex)
	s += run(rideLeader, "") + "\n"
	if mutex {
		s += run(rideMutex, "--wait 600s ") + "\n"
	}
	return s + "wait; exec sleep 86400\n"
}

// ridePod is a Pod of TestHoldsRideOutAKubeAPIServerRestart: a candidate for the leader
// lock, allowed the mutex, with short timings and a grace period longer than the outage.
// Its restartPolicy is Always, so that a container that died would show as restarted.
func ridePod(name string, mutex bool) *corev1.Pod {
	pod := appPod(name, map[string]string{
		"leasehold.io/leader":         rideLeader,
		"leasehold.io/locks":          rideMutex,
		"leasehold.io/lease-duration": "6s",
		"leasehold.io/renew-deadline": "4s",
		"leasehold.io/retry-period":   "1s",
		"leasehold.io/grace":          "60s",
		"leasehold.io/tcp-port":       strconv.Itoa(ridePort),
	}, rideOutScript(mutex))
	pod.Spec.RestartPolicy = corev1.RestartPolicyAlways
	return pod
}

// rideLog is what one Pod's app logged about one lock.
type rideLog struct {
	tokens                []int64      // "LOCK token=N": the command started (a new hold)
	ticks                 []int        // "LOCK tick I", in order
	tickAt                []time.Time  // when the runtime read each tick
	events                []lock.Event // the stream's events after the first state
	eventAt               []time.Time  // ... and when the runtime read each
	state                 *lock.State  // the stream's first event
	frozenAt, continuedAt time.Time
	safeLine              string // the "safe again" line of leasehold run
	ended                 []string
	closed                bool
}

var rideLine = regexp.MustCompile(`(?m)^(\S+) (.*)$`)

// parseRideLog reads the lines of one lock out of a container log (with timestamps).
func parseRideLog(t *testing.T, raw, name string) rideLog {
	t.Helper()
	var r rideLog
	for _, m := range rideLine.FindAllStringSubmatch(raw, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		line := m[2]
		switch {
		case strings.HasPrefix(line, name+" token="):
			n, _ := strconv.ParseInt(strings.TrimPrefix(line, name+" token="), 10, 64)
			r.tokens = append(r.tokens, n)
		case strings.HasPrefix(line, name+" tick "):
			n, _ := strconv.Atoi(strings.TrimPrefix(line, name+" tick "))
			r.ticks = append(r.ticks, n)
			r.tickAt = append(r.tickAt, at)
		case strings.HasPrefix(line, name+" run ended"):
			r.ended = append(r.ended, line)
		case line == "sse "+name+" closed":
			r.closed = true
		case strings.HasPrefix(line, "sse "+name+" "):
			ev, data, _ := strings.Cut(strings.TrimPrefix(line, "sse "+name+" "), " ")
			if ev == "state" && r.state == nil {
				var s lock.State
				if err := json.Unmarshal([]byte(data), &s); err != nil {
					t.Errorf("state event %q: %v", data, err)
				}
				r.state = &s
				continue
			}
			var e lock.Event
			if err := json.Unmarshal([]byte(data), &e); err != nil {
				t.Errorf("%s event %q: %v", ev, data, err)
			}
			e.Type = lock.EventType(ev)
			r.events = append(r.events, e)
			r.eventAt = append(r.eventAt, at)
		case strings.HasPrefix(line, "leasehold: lock "+name+" is in jeopardy"):
			r.frozenAt = at
		case strings.HasPrefix(line, "leasehold: lock "+name+" is safe again"):
			r.continuedAt, r.safeLine = at, line
		}
	}
	return r
}

// agentSocket returns a short path (a symlink: a socket path has at most 107 bytes) to
// the agent socket of the Pod with uid, as the kubelet keeps its emptyDir on this node,
// so the test can ask the agent while the API server is down (no kubectl exec then).
func agentSocket(t *testing.T, uid, name string) string {
	t.Helper()
	state := os.Getenv("LEASEHOLD_CLUSTER_STATE")
	if state == "" {
		state = "/var/lib/leasehold-cluster"
	}
	target := filepath.Join(state, "kubelet", "pods", uid, "volumes", "kubernetes.io~empty-dir", "leasehold-socket", "agent.sock")
	if _, err := os.Stat(target); err != nil {
		t.Fatalf("agent socket of Pod %s: %v", name, err)
	}
	link := filepath.Join(t.TempDir(), name+".sock")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// clusterScript runs hack/cluster.sh with args (the e2e suite runs as root, as
// hack/e2e.sh requires) and fails the test when it fails.
func clusterScript(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot, "hack", "cluster.sh"), args...)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// hostState asks the agent behind socket for the state of name, from the node.
func hostState(socket, name string) (lock.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c := client.New(socket, "")
	defer c.CloseIdleConnections()
	return c.State(ctx, name)
}

// podState asks the agent of pod, through its app container, with the leasehold CLI.
func podState(t *testing.T, ns, pod, name string) lock.State {
	t.Helper()
	out, err := kubectl("-n", ns, "exec", pod, "-c", "app", "--", "leasehold", "status", name)
	if err != nil {
		t.Fatalf("leasehold status %s in Pod %s: %v", name, pod, err)
	}
	var s lock.State
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("leasehold status %s in Pod %s: %v: %q", name, pod, err, out)
	}
	return s
}

// TestHoldsRideOutAKubeAPIServerRestart restarts the node's kube-apiserver in place (same
// flags, etcd and certificates: hack/cluster.sh stop-apiserver, start-apiserver) while
// Pod a leads ride-leader and Pod b holds ride-mutex (with `leasehold run`), and Pod c
// waits for both. The API server stays down for longer than lease-duration. Both holds
// go into jeopardy (the agents say not held, validFor 0s, state jeopardy; the CLI's
// --held fails; the streams send jeopardy; leasehold run freezes its command), and when
// the API server is back they resume with the same fencing tokens (safe; the command
// continues where it stopped), the waiter takes nothing over, no container restarted,
// and afterwards the locks still hand over, with the next tokens.
func TestHoldsRideOutAKubeAPIServerRestart(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, true)
	const leaseDuration = 6 * time.Second

	// a leads (it is the only candidate at first); b then takes the mutex; c waits.
	createPod(t, ns, ridePod("a", false))
	waitForLog(t, ns, "a", "app", regexp.MustCompile(`(?m) `+rideLeader+` token=\d+$`), 120*time.Second)
	createPod(t, ns, ridePod("b", true))
	waitForLog(t, ns, "b", "app", regexp.MustCompile(`(?m) `+rideMutex+` token=\d+$`), 120*time.Second)
	createPod(t, ns, ridePod("c", true))
	for _, p := range []string{"a", "b", "c"} {
		for _, l := range []string{rideLeader, rideMutex} {
			waitForLog(t, ns, p, "app", regexp.MustCompile(`(?m) sse `+l+` state `), 120*time.Second)
		}
	}
	time.Sleep(2 * time.Second) // c's acquire calls are in flight; the holders renewed

	// The holds before, as the Leases and the agents say.
	pods := map[string]*corev1.Pod{}
	sockets := map[string]string{}
	for _, p := range []string{"a", "b", "c"} {
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, p, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods[p] = pod
		sockets[p] = agentSocket(t, string(pod.UID), p)
	}
	holderOf := map[string]string{rideLeader: "a", rideMutex: "b"}
	tokens := map[string]int64{}
	for l, p := range holderOf {
		lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, l, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ptr.Deref(lease.Spec.HolderIdentity, ""), p+"_"+string(pods[p].UID); got != want {
			t.Fatalf("Lease %s names holder %q before the restart, want Pod %s (%q)", l, got, p, want)
		}
		s := podState(t, ns, p, l)
		if !s.Held || s.Phase != lock.PhaseHeld || s.Token != int64(ptr.Deref(lease.Spec.LeaseTransitions, -1)) {
			t.Fatalf("Pod %s before the restart: %s is %+v, want held with the Lease's token %d", p, l, s, ptr.Deref(lease.Spec.LeaseTransitions, -1))
		}
		tokens[l] = s.Token
	}
	for _, l := range []string{rideLeader, rideMutex} {
		if s := podState(t, ns, "c", l); s.Held {
			t.Fatalf("Pod c holds %s before the restart: %+v", l, s)
		}
	}
	t.Logf("before: a leads %s with token %d, b holds %s with token %d, c waits for both",
		rideLeader, tokens[rideLeader], rideMutex, tokens[rideMutex])

	cli := filepath.Join(t.TempDir(), "leasehold")
	build := exec.Command("go", "build", "-o", cli, "./cmd/leasehold")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the leasehold CLI: %v\n%s", err, out)
	}

	// The outage: stop kube-apiserver, see both holds go into jeopardy (asked from the
	// node, through the agents' sockets), keep it down for longer than lease-duration,
	// start it again with the same flags.
	// The stop runs while the test watches: kube-apiserver empties the kubernetes Service's
	// endpoints and stops listening within moments of SIGTERM, but its process lingers
	// (on this node until stop-apiserver's SIGKILL, 10 s later).
	stopAt := time.Now()
	stop := exec.Command(filepath.Join(repoRoot, "hack", "cluster.sh"), "stop-apiserver")
	stop.Dir = repoRoot
	var stopOut bytes.Buffer
	stop.Stdout, stop.Stderr = &stopOut, &stopOut
	if err := stop.Start(); err != nil {
		t.Fatalf("hack/cluster.sh stop-apiserver: %v", err)
	}
	var stopErr error
	var downAt time.Time
	stopped := make(chan struct{})
	go func() {
		stopErr = stop.Wait()
		downAt = time.Now()
		close(stopped)
	}()
	restarted := false
	t.Cleanup(func() {
		if !restarted { // the test failed while the API server was down: later tests need it
			<-stopped
			clusterScript(t, "start-apiserver")
		}
	})
	inJeopardy := map[string]lock.State{}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		for l, p := range holderOf {
			if s, err := hostState(sockets[p], l); err == nil && s.Phase == lock.PhaseJeopardy {
				if _, seen := inJeopardy[l]; !seen {
					t.Logf("Pod %s: %s in jeopardy %s after the stop began", p, l, time.Since(stopAt).Round(time.Millisecond))
				}
				inJeopardy[l] = s
			}
		}
		return len(inJeopardy) == len(holderOf), nil
	})
	if err != nil {
		for l, p := range holderOf {
			s, err := hostState(sockets[p], l)
			t.Errorf("Pod %s: %s is %+v (%v)", p, l, s, err)
		}
		t.Fatalf("the holds did not go into jeopardy within 20s of the API server stopping (renew-deadline 4s)")
	}
	for l, p := range holderOf {
		s := inJeopardy[l]
		if s.Held || s.ValidFor != "0s" || s.Token != tokens[l] {
			t.Errorf("Pod %s in jeopardy: %s is held=%v validFor=%q token=%d, want held=false validFor=0s token=%d",
				p, l, s.Held, s.ValidFor, s.Token, tokens[l])
		}
		// `leasehold status --held` fails as for a lock that is not held (exit 1).
		err := exec.Command(cli, "status", "--held", "--socket", sockets[p], l).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("Pod %s in jeopardy: leasehold status --held %s: %v, want exit status 1 (not held)", p, l, err)
		}
	}
	for _, l := range []string{rideLeader, rideMutex} {
		if s, err := hostState(sockets["c"], l); err != nil || s.Held {
			t.Errorf("Pod c during the outage: %s is %+v (%v), want not held", l, s, err)
		}
	}
	<-stopped
	if stopErr != nil {
		t.Fatalf("hack/cluster.sh stop-apiserver: %v\n%s", stopErr, stopOut.String())
	}
	// The outage counts from the stop (see above); it lasts longer than lease-duration.
	if rest := time.Until(stopAt.Add(leaseDuration + 2*time.Second)); rest > 0 {
		time.Sleep(rest)
	}
	startAt := time.Now()
	clusterScript(t, "start-apiserver")
	restarted = true
	readyAt := time.Now()
	t.Logf("kube-apiserver: stop began %s; process gone after %s, started again after %s, ready after %s (the outage; lease-duration 6s, renew-deadline 4s, grace 60s)",
		stopAt.Format(time.StampMilli), downAt.Sub(stopAt).Round(time.Millisecond), startAt.Sub(stopAt).Round(time.Millisecond),
		readyAt.Sub(stopAt).Round(time.Millisecond))

	// The holds resume with the same tokens.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		for l, p := range holderOf {
			if s, err := hostState(sockets[p], l); err != nil || s.Phase != lock.PhaseHeld {
				return false, nil
			}
		}
		return true, nil
	})
	safeAt := time.Now()
	for l, p := range holderOf {
		s, err := hostState(sockets[p], l)
		if err != nil || !s.Held || s.Phase != lock.PhaseHeld || s.Token != tokens[l] {
			t.Errorf("Pod %s after the restart: %s is %+v (%v), want held with token %d", p, l, s, err, tokens[l])
		}
	}
	if err != nil {
		t.Fatalf("the holds were not safe again within 60s of the API server being ready")
	}
	t.Logf("both holds safe again %s after the API server was ready", safeAt.Sub(readyAt).Round(time.Millisecond))
	for l, p := range holderOf {
		agentLogDuring(t, ns, p, l, stopAt, safeAt)
	}

	// Nobody else held in between: the Leases name the same Pods with the same tokens,
	// and the agents (asked through the app, as an app would) say so too.
	for l, p := range holderOf {
		lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, l, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ptr.Deref(lease.Spec.HolderIdentity, ""), p+"_"+string(pods[p].UID); got != want {
			t.Errorf("Lease %s names holder %q after the restart, want Pod %s (%q)", l, got, p, want)
		}
		if got := int64(ptr.Deref(lease.Spec.LeaseTransitions, -1)); got != tokens[l] {
			t.Errorf("Lease %s has token %d after the restart, want %d (before)", l, got, tokens[l])
		}
		if s := podState(t, ns, p, l); !s.Held || s.Phase != lock.PhaseHeld || s.Token != tokens[l] {
			t.Errorf("Pod %s after the restart: leasehold status %s = %+v, want held with token %d", p, l, s, tokens[l])
		}
	}
	for _, l := range []string{rideLeader, rideMutex} {
		if s := podState(t, ns, "c", l); s.Held {
			t.Errorf("Pod c holds %s after the restart: %+v", l, s)
		}
	}
	t.Logf("after: a leads %s with token %d, b holds %s with token %d (the same)", rideLeader, tokens[rideLeader], rideMutex, tokens[rideMutex])

	// What the apps saw.
	logOf := map[string]string{}
	for _, p := range []string{"a", "b", "c"} {
		logOf[p] = logs(t, ns, p, "app")
	}
	for l, p := range holderOf {
		r := parseRideLog(t, logOf[p], l)
		checkRodeOut(t, p, l, tokens[l], r)
	}
	// The waiters took nothing over: b never led, c never started a command.
	if r := parseRideLog(t, logOf["b"], rideLeader); len(r.tokens) != 0 {
		t.Errorf("Pod b led %s (tokens %v) while Pod a held it", rideLeader, r.tokens)
	}
	for _, l := range []string{rideLeader, rideMutex} {
		r := parseRideLog(t, logOf["c"], l)
		if len(r.tokens) != 0 {
			t.Errorf("Pod c started its command under %s (tokens %v) while another Pod held it", l, r.tokens)
		}
		for _, e := range r.events {
			if e.Type == lock.EventAcquired || e.Type == lock.EventJeopardy {
				t.Errorf("Pod c's stream of %s sent %s (token %d): it held nothing", l, e.Type, e.Token)
			}
		}
	}

	// The agents wrote Pod Events once the API server took writes again.
	for l, p := range holderOf {
		for _, reason := range []string{"LockJeopardy", "LockSafe"} {
			waitForPodEvent(t, ns, p, reason, l)
		}
	}

	// No container restarted, the Pods are the same ones.
	for _, p := range []string{"a", "b", "c"} {
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, p, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.UID != pods[p].UID {
			t.Errorf("Pod %s was replaced (UID %s, was %s)", p, pod.UID, pods[p].UID)
		}
		for _, st := range append(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses...) {
			if st.RestartCount != 0 || st.State.Running == nil {
				t.Errorf("Pod %s container %s: restartCount %d, running %v, want 0 restarts and running", p, st.Name, st.RestartCount, st.State.Running != nil)
			}
		}
	}

	// The rest of the cluster came back: every component runs, the node is Ready, the
	// webhook injects (later tests need all three), and a new Pod is scheduled and started.
	clusterScript(t, "status")
	if _, err := kubectl("wait", "--for=condition=Ready", "node/leasehold-node", "--timeout=60s"); err != nil {
		t.Fatalf("the node is not Ready after the API server restart: %v", err)
	}
	if err := webhookInjects(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	createPod(t, ns, ridePod("d", true))
	waitForLog(t, ns, "d", "app", regexp.MustCompile(`(?m) sse `+rideMutex+` state `), 120*time.Second)

	// The locks still hand over: b goes, c (or d) gets the mutex with the next token;
	// then a goes, c or d leads with the next token.
	if t.Failed() {
		return
	}
	handover := func(gone, l string, want int64) {
		t.Helper()
		if err := cs.CoreV1().Pods(ns).Delete(ctx, gone, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`(?m)^` + l + ` token=(\d+)$`)
		var got, who string
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
			for _, p := range []string{"c", "d"} {
				raw, err := cs.CoreV1().Pods(ns).GetLogs(p, &corev1.PodLogOptions{Container: "app"}).DoRaw(ctx)
				if m := re.FindStringSubmatch(string(raw)); err == nil && m != nil {
					got, who = m[1], p
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("nobody took %s within 90s of Pod %s being deleted", l, gone)
		}
		if got != strconv.FormatInt(want, 10) {
			t.Errorf("Pod %s took %s with token %s after Pod %s went, want %d", who, l, got, gone, want)
		}
		t.Logf("Pod %s deleted: Pod %s took %s with token %s", gone, who, l, got)
	}
	handover("b", rideMutex, tokens[rideMutex]+1)
	handover("a", rideLeader, tokens[rideLeader]+1)
}

// checkRodeOut checks what the app of the Pod holding name logged: one hold with token
// from start to end, the stream's jeopardy then safe with that token (and no other event
// of that hold), leasehold run freezing the command and continuing it, and the command
// counting on without a gap in its numbers (the same process went on) and without a tick
// while frozen.
func checkRodeOut(t *testing.T, pod, name string, token int64, r rideLog) {
	t.Helper()
	if len(r.tokens) != 1 || r.tokens[0] != token {
		t.Errorf("Pod %s: the command under %s started with tokens %v, want once with %d", pod, name, r.tokens, token)
	}
	if len(r.ended) != 0 || r.closed {
		t.Errorf("Pod %s: leasehold run or the stream of %s ended: %v, closed=%v", pod, name, r.ended, r.closed)
	}
	var types []string
	for i, e := range r.events {
		types = append(types, fmt.Sprintf("%s(token %d, %s)", e.Type, e.Token, r.eventAt[i].Format(time.StampMilli)))
	}
	// The stream began while the Pod held (state: held) or before it did (then its first
	// event is the acquisition); after that, only jeopardy and safe.
	events := r.events
	switch {
	case r.state == nil:
		t.Errorf("Pod %s: the stream of %s sent no state", pod, name)
	case r.state.Held && r.state.Token == token:
	case len(events) > 0 && events[0].Type == lock.EventAcquired && events[0].Token == token:
		events = events[1:]
	default:
		t.Errorf("Pod %s: the stream of %s began with %+v and then %v, want held with token %d or its acquisition",
			pod, name, r.state, types, token)
	}
	if len(events) != 2 || events[0].Type != lock.EventJeopardy || events[1].Type != lock.EventSafe ||
		events[0].Token != token || events[1].Token != token {
		t.Errorf("Pod %s: the stream of %s sent %v, want jeopardy then safe, both with token %d", pod, name, types, token)
	} else {
		t.Logf("Pod %s: the stream of %s sent %v; jeopardy: %s; safe: %s", pod, name, types, events[0].Reason, events[1].Reason)
	}
	if r.frozenAt.IsZero() || r.continuedAt.IsZero() || !r.frozenAt.Before(r.continuedAt) {
		t.Errorf("Pod %s: leasehold run under %s did not log freezing then continuing its command (frozen %v, continued %v)",
			pod, name, r.frozenAt, r.continuedAt)
		return
	}
	if !strings.Contains(r.safeLine, fmt.Sprintf("(same token %d)", token)) {
		t.Errorf("Pod %s: leasehold run under %s: %q, want the same token %d", pod, name, r.safeLine, token)
	}
	before, after := 0, 0
	for i, n := range r.ticks {
		if i > 0 && n != r.ticks[i-1]+1 {
			t.Errorf("Pod %s: the command under %s counted %d after %d: it did not go on where it stopped", pod, name, n, r.ticks[i-1])
		}
		at := r.tickAt[i]
		switch {
		case at.Before(r.frozenAt.Add(stampSkew)):
			before++
		case at.After(r.continuedAt.Add(-stampSkew)):
			after++
		default:
			t.Errorf("Pod %s: the command under %s ticked (%d at %s) while frozen (%s to %s)", pod, name, n,
				at.Format(time.StampMilli), r.frozenAt.Format(time.StampMilli), r.continuedAt.Format(time.StampMilli))
		}
	}
	if before == 0 || after == 0 {
		t.Errorf("Pod %s: the command under %s ticked %d times before the freeze and %d after, want both", pod, name, before, after)
	}
	t.Logf("Pod %s: the command under %s frozen %s to %s (%s), %d ticks before, %d after",
		pod, name, r.frozenAt.Format(time.StampMilli), r.continuedAt.Format(time.StampMilli),
		r.continuedAt.Sub(r.frozenAt).Round(time.Millisecond), before, after)
}

// waitForPodEvent waits until the Pod has an Event with reason about lock.
func waitForPodEvent(t *testing.T, ns, pod, reason, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		events, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		if err != nil {
			return false, nil
		}
		for _, e := range events.Items {
			if e.Reason == reason && strings.Contains(e.Message, "Lock "+name+" ") {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		out, _ := kubectl("-n", ns, "get", "events", "--field-selector", "involvedObject.name="+pod)
		t.Errorf("Pod %s: no %s Event for %s within 90s:\n%s", pod, reason, name, out)
	}
}

// agentLogDuring logs what the agent of pod wrote about name from..to (the runtime's
// stamps), for the record and a post-mortem: the outage as the agent saw it.
func agentLogDuring(t *testing.T, ns, pod, name string, from, to time.Time) {
	t.Helper()
	raw, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: agentContainer, Timestamps: true}).DoRaw(context.Background())
	if err != nil {
		t.Logf("Pod %s: agent log: %v", pod, err)
		return
	}
	var lines []string
	for _, m := range rideLine.FindAllStringSubmatch(string(raw), -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || at.Before(from.Add(-time.Second)) || at.After(to.Add(time.Second)) || !strings.Contains(m[2], `"`+name+`"`) {
			continue
		}
		lines = append(lines, at.Format(time.StampMilli)+" "+m[2])
	}
	if len(lines) > 40 {
		lines = append(lines[:20], append([]string{"..."}, lines[len(lines)-20:]...)...)
	}
	t.Logf("Pod %s: the agent's log about %s during the outage:\n%s", pod, name, strings.Join(lines, "\n"))
}
