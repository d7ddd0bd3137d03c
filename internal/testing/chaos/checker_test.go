package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Hand-made histories: times in milliseconds on the history's clock.

func ms(x int64) int64 { return x * int64(time.Millisecond) }

const (
	mu  = "m"
	ldr = "l"
	a   = "pod-a_1"
	b   = "pod-b_2"
	c   = "pod-c_3"
)

// held is an answer of op (acquire, get, renew) that says held.
func held(proc string, op Op, lock, holder string, tok, send, recv, validFor int64) Record {
	return Record{Proc: proc, Op: op, Lock: lock, Send: ms(send), Recv: ms(recv), Status: 200, Held: true,
		Holder: holder, Token: tok, ValidFor: ms(validFor), Agent: holder}
}

// jeopardyAnswer is an answer of GET that says the hold of holder (token tok) is in
// jeopardy: not held, validFor 0.
func jeopardyAnswer(proc, lock, holder string, tok, send, recv int64) Record {
	return Record{Proc: proc, Op: OpGet, Lock: lock, Send: ms(send), Recv: ms(recv), Status: 200, State: "jeopardy",
		Holder: holder, Token: tok, Agent: holder}
}

func release(proc, lock string, tok, send, recv int64, status int) Record {
	return Record{Proc: proc, Op: OpRelease, Lock: lock, ReqToken: tok, Send: ms(send), Recv: ms(recv), Status: status}
}

func store(seq int64, lock, holder string, tok, at, highest int64, accepted bool) Record {
	return Record{Proc: "store", Seq: seq, Op: OpStore, Lock: lock, Holder: holder, ReqToken: tok,
		Send: ms(at), Recv: ms(at), Accepted: accepted, Highest: highest}
}

func fault(kind FaultKind, lock string, send, recv int64) Record {
	return Record{Proc: "faults", Op: OpFault, Fault: kind, Lock: lock, Send: ms(send), Recv: ms(recv), Status: 200}
}

// seq numbers the records of each proc in the order given.
func seq(recs ...Record) []Record {
	n := map[string]int64{}
	for i := range recs {
		if recs[i].Seq == 0 {
			n[recs[i].Proc]++
			recs[i].Seq = n[recs[i].Proc]
		}
	}
	return recs
}

var testCfg = CheckConfig{Mutex: mu, Leader: ldr, RenewDeadline: 2 * time.Second}

func properties(res *Result) []string {
	var out []string
	for _, v := range res.Violations {
		out = append(out, v.Property)
	}
	return out
}

func TestCheck(t *testing.T) {
	tests := map[string]struct {
		recs []Record
		want []string // violated properties, in order
	}{
		"clean handover": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 1, 0, 10, 2000),
				held("ca", OpGet, mu, a, 1, 20, 21, 1990),
				release("ca", mu, 1, 100, 110, 200),
				held("cb", OpAcquire, mu, b, 2, 50, 115, 2000),
			),
		},
		"overlap of two holders of the mutex": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 1, 0, 10, 2000),
				held("cb", OpAcquire, mu, b, 2, 500, 1500, 2000), // a was promised until 2000
			),
			want: []string{PropExclusion},
		},
		"an answer received after its validity promises nothing": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 1, 0, 2500, 2000), // validFor spent in flight
				held("cb", OpAcquire, mu, b, 2, 2400, 2600, 2000),
			),
		},
		"same hold, overlapping answers of two clients": {
			recs: seq(
				held("ca", OpGet, ldr, a, 3, 0, 1, 2000),
				held("ca2", OpGet, ldr, a, 3, 100, 101, 1900),
			),
		},
		"the mutex and the leader lock are checked apart": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 1, 0, 10, 2000),
				held("cb", OpGet, ldr, b, 1, 0, 10, 2000),
			),
		},
		"a leader's next term may overlap its last (one Pod leads)": {
			recs: seq(
				held("ca", OpGet, ldr, a, 5, 0, 10, 2000),
				held("ca", OpGet, ldr, a, 6, 100, 110, 2000),
			),
		},
		"overlap of two leaders": {
			recs: seq(
				held("ca", OpGet, ldr, a, 1, 0, 10, 2000),
				held("cb", OpGet, ldr, b, 2, 1000, 1001, 2000),
			),
			want: []string{PropExclusion},
		},
		"a renew to a shorter ttl ends the earlier promise": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				func() Record { r := held("ca", OpRenew, mu, a, 5, 100, 101, 400); r.ReqToken = 5; return r }(),
				held("cb", OpAcquire, mu, b, 6, 200, 600, 2000),
			),
		},
		"a renew refused changes nothing": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				Record{Proc: "ca", Op: OpRenew, Lock: mu, ReqToken: 5, Status: 409, Reason: "StaleToken", Send: ms(100), Recv: ms(101)},
				held("cb", OpAcquire, mu, b, 6, 200, 600, 2000),
			),
			want: []string{PropExclusion},
		},
		"a release by another client does not end a promise": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				release("cx", mu, 5, 100, 110, 200), // a late release of someone else's token
				held("cb", OpAcquire, mu, b, 6, 50, 200, 2000),
			),
			want: []string{PropExclusion},
		},
		"a client shown another client's hold relies on nothing": {
			// Found by a 10-minute run: ca2's own hold (token 4) had ended by its ttl
			// and its check was answered with ca's hold (token 5) of the same agent,
			// which ca released before b acquired.
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				func() Record { r := held("ca2", OpGet, mu, a, 5, 100, 101, 1900); r.Own = 4; return r }(),
				release("ca", mu, 5, 500, 510, 200),
				held("cb", OpAcquire, mu, b, 6, 400, 600, 2000),
			),
		},
		"a client shown its own hold relies on it": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				func() Record { r := held("ca", OpGet, mu, a, 5, 100, 101, 1900); r.Own = 5; return r }(),
				held("cb", OpAcquire, mu, b, 6, 400, 600, 2000),
			),
			want: []string{PropExclusion},
		},
		"a release whose answer was never recorded ends the promise": {
			// Found by a 10-minute run: the holder's client sent its release and was
			// killed (a kill fault) before it recorded the answer; the release landed and
			// another Pod took the lock 9 ms later.
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				Record{Proc: "ca", Op: OpRelease, Lock: mu, ReqToken: 5, Send: ms(500), Recv: ms(500), Sent: true},
				held("cb", OpAcquire, mu, b, 6, 400, 510, 2000),
			),
		},
		"two clients of one agent: the earlier one's promise outlives its ttl": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000), // validFor ignored a 500ms ttl
				held("ca2", OpAcquire, mu, a, 6, 100, 600, 2000),
			),
			want: []string{PropExclusion},
		},
		"a lower token after a higher one": {
			recs: seq(
				held("ca", OpGet, ldr, a, 7, 0, 10, 100),
				held("cb", OpGet, ldr, b, 6, 500, 510, 100),
			),
			want: []string{PropTokenOrder},
		},
		"an acquisition reuses a token seen before it was asked for": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 7, 0, 10, 100),
				release("ca", mu, 7, 50, 60, 200),
				held("ca", OpAcquire, mu, a, 7, 500, 510, 100),
			),
			want: []string{PropTokenOrder},
		},
		"one token, two holders": {
			recs: seq(
				held("ca", OpGet, ldr, a, 7, 0, 10, 100),
				held("cb", OpGet, ldr, b, 7, 5, 8, 100),
			),
			want: []string{PropExclusion, PropTokenOrder},
		},
		"tokens of concurrent observations are not ordered": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 8, 0, 300, 50), // in flight while b's was
				release("ca", mu, 8, 310, 320, 200),
				held("cb", OpAcquire, mu, b, 7, 100, 200, 10),
			),
		},
		"the store accepted a lower token after a higher one": {
			recs: seq(
				store(1, mu, a, 5, 10, 0, true),
				store(2, mu, b, 4, 20, 5, true),
			),
			want: []string{PropStoreFence},
		},
		"the store rejected a token that was not lower": {
			recs: seq(
				store(1, mu, a, 5, 10, 0, true),
				store(2, mu, a, 5, 20, 5, false),
			),
			want: []string{PropStoreFence},
		},
		"stale writes rejected, a late write accepted while nobody newer wrote": {
			recs: seq(
				store(1, mu, a, 5, 10, 0, true),
				store(2, mu, b, 6, 20, 5, true),
				store(3, mu, a, 5, 30, 6, false),
				store(4, mu, b, 6, 40, 6, true),
			),
		},
		"a write rejected within its promised hold": {
			recs: seq(
				held("cb", OpAcquire, mu, b, 6, 0, 10, 2000),
				store(1, mu, c, 7, 20, 0, true), // c's token 7 reached the store during b's hold
				store(2, mu, b, 6, 30, 7, false),
			),
			want: []string{PropHoldWrite},
		},
		"a write rejected after its promise ended": {
			recs: seq(
				held("cb", OpAcquire, mu, b, 6, 0, 10, 2000),
				store(1, mu, c, 7, 2100, 0, true),
				store(2, mu, b, 6, 2200, 7, false),
			),
		},
		"a stale release that succeeded": {
			recs: seq(
				Record{Proc: "ca", Op: OpStaleRelease, Lock: mu, ReqToken: 4, Status: 200, Send: ms(1), Recv: ms(2)},
				Record{Proc: "ca", Op: OpStaleRenew, Lock: mu, ReqToken: 4, Status: 409, Reason: "StaleToken", Send: ms(3), Recv: ms(4)},
			),
			want: []string{PropStaleToken},
		},
		"a crash and a panic": {
			recs: seq(
				Record{Proc: "harness", Op: OpExit, Target: "agent-a0-r0", Expected: true, Detail: "signal: killed"},
				Record{Proc: "harness", Op: OpExit, Target: "agent-a1-r0", Detail: "exit status 2"},
				Record{Proc: "harness", Op: OpPanic, Target: "agent-a2-r0", Detail: "panic: boom"},
			),
			want: []string{PropCrash, PropCrash},
		},
		"a deletion excuses neither an overlap nor a token from 1 again": {
			recs: seq(
				held("ca", OpGet, ldr, a, 5, 0, 10, 2000),
				fault(FaultDelete, ldr, 100, 110),
				held("cb", OpGet, ldr, b, 1, 200, 210, 2000),
			),
			want: []string{PropExclusion, PropTokenOrder},
		},
		"a deletion waited out, the token goes on": {
			recs: seq(
				held("ca", OpGet, ldr, a, 5, 0, 10, 2000),
				fault(FaultDelete, ldr, 100, 110),
				held("cb", OpGet, ldr, b, 6, 3200, 3210, 2000),
			),
		},
		"a third party's rewrite displaces the holder, whose promise stands": {
			recs: seq(
				held("ca", OpGet, mu, a, 5, 0, 10, 2000),
				func() Record {
					r := fault(FaultRewrite, mu, 100, 110)
					r.Holder, r.Token, r.Displaced, r.DisplacedToken = ThirdParty+"-1", 6, a, 5
					return r
				}(),
				held("ca", OpGet, mu, a, 5, 120, 121, 1880), // a has not seen it yet
				held("cb", OpAcquire, mu, b, 7, 3200, 3210, 2000),
			),
		},
		"a second rewrite lands while the displaced agent's promise still runs": {
			// Found by a 30-minute run: the overlap of a (token 25) with third-party-18 is
			// the third parties' doing, not the agents'.
			recs: seq(
				held("ca", OpGet, ldr, a, 25, 0, 10, 2000),
				func() Record {
					r := fault(FaultRewrite, ldr, 100, 110)
					r.Holder, r.Token, r.Displaced, r.DisplacedToken = ThirdParty+"-17", 26, a, 25
					return r
				}(),
				func() Record {
					r := fault(FaultRewrite, ldr, 900, 910)
					r.Holder, r.Token, r.Displaced, r.DisplacedToken = ThirdParty+"-18", 27, ThirdParty+"-17", 26
					return r
				}(),
			),
		},
		"a hold resumed with the same token after jeopardy": {
			// The API server was away from 1500 to 4000: a's answers said held until
			// renew-deadline, then jeopardy (held false, its token), then, once a
			// renewal landed, held again with the same token; its writes go on.
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				store(1, mu, a, 5, 20, 0, true),
				jeopardyAnswer("ca", mu, a, 5, 2100, 2101),
				jeopardyAnswer("ca", mu, a, 5, 3000, 3001),
				held("ca", OpGet, mu, a, 5, 4100, 4101, 1990),
				store(2, mu, a, 5, 4200, 5, true),
				release("ca", mu, 5, 4300, 4310, 200),
				held("cb", OpAcquire, mu, b, 6, 1000, 4320, 2000), // waited out the outage
				store(3, mu, b, 6, 4330, 5, true),
			),
		},
		"a leader resumed with the same token after jeopardy": {
			recs: seq(
				held("ca", OpGet, ldr, a, 3, 0, 10, 2000),
				jeopardyAnswer("ca", ldr, a, 3, 2100, 2101),
				held("ca", OpGet, ldr, a, 3, 4100, 4101, 1990),
				held("cb", OpGet, ldr, a, 3, 4200, 4201, 1890), // b's client asks about a
			),
		},
		"another holder's promise overlaps a resumed hold": {
			// b took the lock while a was in jeopardy, and a resumed anyway: the
			// resumed promise overlaps b's, and a's token 5 shows after b's 6.
			recs: seq(
				held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
				jeopardyAnswer("ca", mu, a, 5, 2100, 2101),
				held("cb", OpAcquire, mu, b, 6, 3000, 3010, 2000),
				held("ca", OpGet, mu, a, 5, 4000, 4001, 1990),
			),
			want: []string{PropExclusion, PropTokenOrder},
		},
		"an agent takes the lock within renew-deadline of a third party's write": {
			recs: seq(
				func() Record {
					r := fault(FaultRewrite, mu, 100, 110)
					r.Holder, r.Token = ThirdParty+"-1", 6
					return r
				}(),
				held("cb", OpAcquire, mu, b, 7, 500, 510, 2000),
			),
			want: []string{PropExclusion},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res := Check(tc.recs, testCfg)
			if diff := cmp.Diff(tc.want, properties(res)); diff != "" {
				for _, v := range res.Violations {
					t.Log(v.Message)
				}
				t.Errorf("violated properties (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckLiveness(t *testing.T) {
	cfg := testCfg
	cfg.MinAcquisitions = 2
	settle := Record{Proc: "harness", Op: OpSettle, Send: ms(1000), Recv: ms(1000)}
	tests := map[string]struct {
		recs []Record
		want []string
	}{
		"enough, and both locks held after the faults": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 1, 0, 10, 100),
				settle,
				held("ca", OpAcquire, mu, a, 2, 1100, 1110, 100),
				held("ca", OpGet, ldr, a, 1, 1100, 1110, 100),
			),
		},
		"too few acquisitions, none after the faults, no leader": {
			recs: seq(
				held("ca", OpAcquire, mu, a, 1, 0, 10, 100),
				settle,
				held("ca", OpGet, mu, a, 1, 1100, 1110, 100),
			),
			want: []string{PropLiveness, PropLiveness, PropLiveness},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, properties(Check(tc.recs, cfg))); diff != "" {
				t.Errorf("violated properties (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckCounts(t *testing.T) {
	late := Record{Proc: "ca", Op: OpWrite, Lock: mu, ReqToken: 5, Late: true, Status: 409, Send: ms(31), Recv: ms(32)}
	res := Check(seq(
		held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
		release("ca", mu, 5, 20, 21, 200),
		held("cb", OpAcquire, mu, b, 6, 15, 25, 2000),
		store(1, mu, a, 5, 12, 0, true),
		store(2, mu, b, 6, 26, 5, true),
		store(3, mu, a, 5, 31, 6, false),
		late,
		fault(FaultKill, "", 40, 50),
		fault(FaultKill, "", 60, 70),
		fault(FaultStop, "", 80, 90),
	), testCfg)
	if res.Failed() {
		t.Fatalf("unexpected violations: %+v", res.Violations)
	}
	got := map[string]int{
		"acquisitions": res.Acquisitions, "promises": res.Promises[mu], "writes": res.Writes, "accepted": res.WritesAccepted,
		"stale rejected": res.StaleRejected, "late": res.LateWrites, "late rejected": res.LateRejected,
		"kills": res.Faults[FaultKill], "stops": res.Faults[FaultStop],
	}
	want := map[string]int{
		"acquisitions": 2, "promises": 2, "writes": 3, "accepted": 2,
		"stale rejected": 1, "late": 1, "late rejected": 1, "kills": 2, "stops": 1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestCheckCountsHolds(t *testing.T) {
	fate := func(lock, holder string, tok int64, out HoldOutcome, decided int64) HoldFate {
		return HoldFate{Lock: lock, Holder: holder, Token: tok, Outcome: out, Decided: ms(decided)}
	}
	withHolds := func(r Record, fs ...HoldFate) Record { r.Holds = fs; return r }
	res := Check(seq(
		held("ca", OpAcquire, mu, a, 5, 0, 10, 2000),
		jeopardyAnswer("ca", mu, a, 5, 2100, 2101),
		held("ca", OpGet, mu, a, 5, 4100, 4101, 1990),
		jeopardyAnswer("ca", ldr, a, 2, 2200, 2201), // never held again: not resumed
		withHolds(fault(FaultBlip, "", 1500, 4000), fate(mu, a, 5, HoldKept, 4050), fate(ldr, a, 2, HoldKept, 4060)),
		withHolds(fault(FaultBlipLong, "", 5000, 9000), fate(mu, b, 7, HoldCleared, 9100), fate(ldr, a, 2, HoldKept, 9050)),
		release("cb", mu, 8, 10000, 10010, 200),
		withHolds(fault(FaultPartition, "", 9500, 12000), fate(mu, b, 8, HoldChanged, 12100), fate(ldr, a, 2, HoldChanged, 11000)),
		release("cc", mu, 9, 15100, 15110, 200), // after the change: not the hold's end
		withHolds(fault(FaultAPIRestart, "", 13000, 15000), fate(mu, c, 9, HoldChanged, 15050), fate(ldr, "", 3, HoldFree, 0)),
		withHolds(fault(FaultBlip, "", 15500, 15900), fate(mu, "killed-pod", 9, HoldGone, 0), fate(ldr, ThirdParty+"-1", 3, HoldGone, 0)),
		withHolds(fault(FaultAPIRestart, "", 16000, 18000), fate(mu, c, 10, HoldUndecided, 0), fate(ldr, c, 4, HoldUndecided, 0)),
	), testCfg)
	if res.Failed() {
		t.Fatalf("unexpected violations: %+v", res.Violations)
	}
	want := map[HoldKey]HoldCount{
		{FaultBlip, "mutex"}: {Kept: 1}, {FaultBlip, "leader"}: {Kept: 1},
		{FaultBlipLong, "mutex"}: {Released: 1}, {FaultBlipLong, "leader"}: {Kept: 1},
		{FaultPartition, "mutex"}: {Released: 1}, {FaultPartition, "leader"}: {Lost: 1},
		{FaultAPIRestart, "mutex"}: {Lost: 2}, {FaultAPIRestart, "leader"}: {Lost: 1},
	}
	if diff := cmp.Diff(want, res.Holds); diff != "" {
		t.Errorf("holds (-want +got):\n%s", diff)
	}
	if res.Jeopardy != 2 || res.Resumed != 1 {
		t.Errorf("jeopardy answers %d, resumed %d: want 2 and 1", res.Jeopardy, res.Resumed)
	}
	sum := Summary(RunInfo{}, res)
	for _, line := range []string{
		"| holds across blip faults, kept / released by their holder / lost: mutex; leader lock | 1 / 0 / 0; 1 / 0 / 0 |",
		"| holds across apiserver-restart faults, kept / released by their holder / lost: mutex; leader lock | 0 / 0 / 2; 0 / 0 / 1 |",
	} {
		if !strings.Contains(sum, line) {
			t.Errorf("summary lacks %q:\n%s", line, sum)
		}
	}
}

func TestExcerptMarksTheViolation(t *testing.T) {
	recs := Merge(seq(
		held("ca", OpAcquire, mu, a, 1, 0, 10, 2000),
		held("ca", OpGet, ldr, a, 1, 5, 6, 2000),
		held("cb", OpAcquire, mu, b, 2, 500, 1500, 2000),
		held("cb", OpGet, mu, b, 2, 9000, 9001, 2000), // far away: not shown
	))
	res := Check(recs, testCfg)
	if len(res.Violations) != 1 {
		t.Fatalf("want one violation, got %+v", res.Violations)
	}
	ex := Excerpt(recs, res.Violations[0], 10)
	marked := 0
	for _, l := range strings.Split(ex, "\n") {
		if strings.HasPrefix(l, ">> ") {
			marked++
		}
		if strings.Contains(l, "9.000s") {
			t.Errorf("excerpt shows a record far from the violation: %s", l)
		}
		if strings.Contains(l, "lock="+ldr) {
			t.Errorf("excerpt shows a record of the other lock: %s", l)
		}
	}
	if marked != 2 {
		t.Errorf("want the 2 records of the violation marked, got %d:\n%s", marked, ex)
	}
}

func TestReadLogSkipsATornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.jsonl")
	l, err := OpenLog(path, "c")
	if err != nil {
		t.Fatal(err)
	}
	l.Add(Record{Op: OpGet, Send: 1, Recv: 2})
	l.Add(Record{Op: OpGet, Send: 3, Recv: 4})
	l.Close()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	_, _ = f.WriteString(`{"proc":"c","seq":3,"op":"ge`)
	f.Close()
	recs, err := ReadLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[1].Seq != 2 || recs[1].Proc != "c" {
		t.Fatalf("want the 2 whole records, got %+v", recs)
	}
	if err := os.WriteFile(path, []byte("{}\nnot json\n{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadLog(path); err == nil {
		t.Fatal("a bad line in the middle must be an error")
	}
}

func TestScheduleReplays(t *testing.T) {
	s1, s2, s3 := Schedule(42), Schedule(42), Schedule(43)
	kinds := map[FaultKind]bool{}
	differs := false
	for i := 0; i < 50; i++ {
		x, y, z := s1(), s2(), s3()
		if x != y {
			t.Fatalf("step %d of seed 42 differs between two schedules: %+v vs %+v", i, x, y)
		}
		if x != z {
			differs = true
		}
		if i < len(FaultKinds) {
			kinds[x.Kind] = true
		}
		if x.Gap < 500*time.Millisecond || x.Gap > 3*time.Second || x.Extra < 500*time.Millisecond {
			t.Errorf("step %d: gap %s, extra %s out of range", i, x.Gap, x.Extra)
		}
	}
	if len(kinds) != len(FaultKinds) {
		t.Errorf("the first %d steps must be every kind once, got %v", len(FaultKinds), kinds)
	}
	if !differs {
		t.Error("seeds 42 and 43 gave the same schedule")
	}
}

func TestStoreFence(t *testing.T) {
	l, err := NewMemLog("", "store")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(l)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []bool
	for _, w := range []WriteRequest{{Lock: mu, Token: 3}, {Lock: mu, Token: 3}, {Lock: mu, Token: 2}, {Lock: ldr, Token: 1}, {Lock: mu, Token: 4}, {Lock: mu, Token: 3}} {
		got = append(got, s.Write(w).Accepted)
	}
	if diff := cmp.Diff([]bool{true, true, false, true, true, false}, got); diff != "" {
		t.Errorf("accepted (-want +got):\n%s", diff)
	}
	if res := Check(l.Records(), testCfg); res.Failed() || res.StaleRejected != 2 {
		t.Errorf("the store's own record must check clean with 2 rejections: %+v", res)
	}
}

func TestWriteReportReplacesItsSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "RELIABILITY.md")
	if err := WriteReport(path, "first\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	doc := string(b) + "\n## Other\n\nkept\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteReport(path, "second\n"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	got := string(b)
	if strings.Contains(got, "first") || !strings.Contains(got, ReportBegin+"\nsecond\n"+ReportEnd) || !strings.Contains(got, "kept") {
		t.Errorf("report not replaced in place:\n%s", got)
	}
}
