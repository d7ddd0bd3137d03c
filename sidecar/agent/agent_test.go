package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// Two agents (separate processes, as two Pods) contend on one lock: try, wait
// timeout, release, handover, and the Lease record the agent writes.
func TestTwoAgentsContend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-a", "--locks=contend")
	b := startAgent(t, "pod-b", "--locks=contend")

	sa, err := a.c.Acquire(ctx, "contend", 0, 0)
	if err != nil || !sa.Held || sa.Token < 1 {
		t.Fatalf("A try: want held with a token, got %+v, %v", sa, err)
	}
	if _, err := b.c.Acquire(ctx, "contend", 0, 0); status(err) != http.StatusConflict {
		t.Fatalf("B try while A holds: want 409, got %v", err)
	}
	start := time.Now()
	if _, err := b.c.Acquire(ctx, "contend", 300*time.Millisecond, 0); status(err) != http.StatusRequestTimeout {
		t.Fatalf("B wait 300ms while A holds: want 408, got %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("B's wait ended after %s, before its 300ms", d)
	}
	// A keeps the lock across several renewals (renew-deadline 1.5s).
	time.Sleep(2 * leaseDuration)
	if s := a.state("contend"); !s.Held || s.Token != sa.Token {
		t.Fatalf("A after 2 lease durations: want still held with token %d, got %+v", sa.Token, s)
	}
	if s := b.state("contend"); s.Held || s.Holder != a.identity() {
		t.Fatalf("B's view: want not held, holder %s, got %+v", a.identity(), s)
	}
	// The Lease is in client-go's LeaseLock shape, labelled and annotated.
	lease, err := kube.CoordinationV1().Leases("default").Get(ctx, "contend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *lease.Spec.HolderIdentity != a.identity() || *lease.Spec.LeaseDurationSeconds != int32(leaseDuration/time.Second) ||
		int64(*lease.Spec.LeaseTransitions) != sa.Token || lease.Spec.RenewTime == nil || lease.Spec.AcquireTime == nil ||
		lease.Labels[lock.LabelManagedBy] != lock.ManagedBy || lease.Annotations[lock.AnnotationMode] != "mutex" {
		t.Fatalf("Lease record not as contracted: %+v %+v", lease.ObjectMeta, lease.Spec)
	}

	// B waits; A releases; B gets it with a greater token.
	got := make(chan lock.State, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := b.c.Acquire(ctx, "contend", 10*time.Second, 0)
		got <- s
		errc <- err
	}()
	waitQueue(t, "contend", b.identity()) // B is waiting
	if _, err := a.c.Release(ctx, "contend", sa.Token); err != nil {
		t.Fatalf("A release: %v", err)
	}
	sb := <-got
	if err := <-errc; err != nil || !sb.Held || sb.Token <= sa.Token {
		t.Fatalf("B after A's release: want held with token > %d, got %+v, %v", sa.Token, sb, err)
	}
	if _, err := a.c.Release(ctx, "contend", sa.Token); status(err) != http.StatusConflict {
		t.Fatalf("A release again: want 409 stale token, got %v", err)
	}
	// A learns the new holder from its watch (eventually, not at once).
	waitFor(t, "A's watch to show B as holder", func() bool {
		s := a.state("contend")
		return !s.Held && s.Holder == b.identity() && s.Token == sb.Token
	})
	// ?require=held lets curl -sf branch on held.
	if code, _, _ := b.c.Get(ctx, "/v1/locks/contend?require=held"); code != 200 {
		t.Fatalf("B require=held: want 200, got %d", code)
	}
	if code, _, _ := a.c.Get(ctx, "/v1/locks/contend?require=held"); code != 409 {
		t.Fatalf("A require=held: want 409, got %d", code)
	}
}

// Bad input gets a distinct status and a JSON error naming the problem, and leaves
// the held lock alone.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-bad", "--locks=bad-held,bad-other")
	held, err := a.c.Acquire(ctx, "bad-held", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, "http://leasehold"+path, strings.NewReader(body))
		resp, err := clientFor(a).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("%s %s: answer is not JSON: %v", method, path, err)
		}
		return resp.StatusCode, m
	}
	tests := map[string]struct {
		method, path, body string
		want               int
		mention            string
	}{
		"undeclared lock":         {"GET", "/v1/locks/nope", "", 404, "not declared"},
		"undeclared acquire":      {"POST", "/v1/locks/nope/acquire", "", 404, "leasehold.io/locks"},
		"malformed JSON":          {"POST", "/v1/locks/bad-other/acquire", "{wait:", 400, "not valid JSON"},
		"unknown field":           {"POST", "/v1/locks/bad-other/acquire", `{"wiat":"1s"}`, 400, "wiat"},
		"bad duration":            {"POST", "/v1/locks/bad-other/acquire", `{"wait":"soon"}`, 400, "wait"},
		"negative ttl":            {"POST", "/v1/locks/bad-other/acquire?ttl=-1s", "", 400, "ttl"},
		"unknown query":           {"POST", "/v1/locks/bad-other/acquire?hold=forever", "", 400, "hold=connection"},
		"huge body":               {"POST", "/v1/locks/bad-other/acquire", `{"wait":"` + strings.Repeat("1", 1<<20) + `"}`, 413, "larger than"},
		"wrong method":            {"GET", "/v1/locks/bad-other/acquire", "", 405, "POST"},
		"unknown endpoint":        {"GET", "/v2/things", "", 404, "no such endpoint"},
		"bad require":             {"GET", "/v1/locks/bad-held?require=free", "", 400, "require=held"},
		"release without token":   {"POST", "/v1/locks/bad-other/release", "", 400, "release?token=N"},
		"release stale token":     {"POST", "/v1/locks/bad-other/release?token=3", "", 409, "token 3"},
		"renew bad token":         {"POST", "/v1/locks/bad-other/renew?token=x", "", 400, "fencing token"},
		"try on held by this Pod": {"POST", "/v1/locks/bad-held/acquire", "", 409, "another client of this Pod"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, m := do(tc.method, tc.path, tc.body)
			if code != tc.want {
				t.Fatalf("want %d, got %d: %v", tc.want, code, m)
			}
			msg, _ := m["error"].(string)
			if !strings.Contains(msg, tc.mention) {
				t.Fatalf("error %q does not mention %q", msg, tc.mention)
			}
		})
	}
	if s := a.state("bad-held"); !s.Held || s.Token != held.Token {
		t.Fatalf("held lock disturbed by bad input: %+v", s)
	}
	fi, err := os.Stat(a.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		t.Fatalf("socket mode %v is world-accessible", fi.Mode())
	}
}

func clientFor(a *agentProc) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (netConn, error) {
		return dialUnix(ctx, a.socket)
	}}}
}

// A client that sends its body too slowly gets a JSON 408 naming the problem, and
// the lock it named stays untouched.
func TestSlowBody(t *testing.T) {
	t.Parallel()
	a := startAgent(t, "pod-slow", "--locks=slow")
	c, err := dialUnix(context.Background(), a.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, _ = c.Write([]byte("POST /v1/locks/slow/acquire HTTP/1.1\r\nHost: leasehold\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"wa"))
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a slow body: %v", err)
	}
	defer resp.Body.Close()
	var m map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(m["error"], "body not received") {
		t.Fatalf("want 408 naming the slow body, got %d %v", resp.StatusCode, m)
	}
	t.Logf("answered after %s", time.Since(start))
	if s := a.state("slow"); s.Held {
		t.Fatalf("slow request took the lock: %+v", s)
	}
}

// A flood of connections beyond --max-connections gets a JSON 503 at once; the lock
// held meanwhile stays held, and the agent serves again once the flood ends.
func TestConnectionFloodIsRefusedAndHoldsSurvive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "pod-flood", "--locks=flood", "--max-connections=8")
	held, err := a.c.Acquire(ctx, "flood", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	a.c.CloseIdleConnections()
	var conns []netConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	codes := map[int]int{}
	var refusal map[string]string
	for range 40 {
		c, err := dialUnix(ctx, a.socket)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, c) // kept open: keep-alive connections the agent must track
		_, _ = c.Write([]byte("GET /v1/locks/flood HTTP/1.1\r\nHost: leasehold\r\n\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d got no answer: %v", len(conns), err)
		}
		codes[resp.StatusCode]++
		if resp.StatusCode == http.StatusServiceUnavailable && refusal == nil {
			_ = json.NewDecoder(resp.Body).Decode(&refusal)
		}
		resp.Body.Close()
	}
	if codes[200] != 8 || codes[503] != 32 {
		t.Fatalf("40 connections with --max-connections=8: want 8 answered and 32 refused, got %v", codes)
	}
	if !strings.Contains(refusal["error"], "limit of 8 connections") {
		t.Fatalf("refusal does not name the limit: %v", refusal)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	var s lock.State
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		s, err = a.c.State(ctx, "flood")
		return err == nil, nil
	}); err != nil {
		t.Fatalf("the agent does not serve again after the flood: %v", err)
	}
	if !s.Held || s.Token != held.Token {
		t.Fatalf("the hold did not survive the flood: %+v", s)
	}
}
