package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// The properties the checker verifies; a Violation names one of them.
const (
	PropExclusion  = "mutual exclusion"
	PropTokenOrder = "fencing tokens grow"
	PropStoreFence = "store fence"
	PropHoldWrite  = "write within its hold accepted"
	PropStaleToken = "stale token changes nothing"
	PropCrash      = "no crash"
	PropLiveness   = "liveness"
)

// ThirdParty prefixes the holder identity that a lease-rewrite fault writes.
const ThirdParty = "third-party"

// CheckConfig tells the checker what the run was.
type CheckConfig struct {
	// Mutex and Leader are the names of the two locks.
	Mutex, Leader string
	// Semaphore is the counting lock's name, when the run had one: its records name
	// its slots' Leases (Semaphore.N), each checked like a mutex.
	Semaphore string
	// RenewDeadline is the agents' renew-deadline: a foreign holder written by a
	// lease-rewrite fault is taken to rely on its hold that long after its write was
	// sent, as a client-go elector with the same timings would.
	RenewDeadline time.Duration
	// MinAcquisitions is the least number of acquisitions of the mutex the run must
	// have made (liveness).
	MinAcquisitions int
	// StaleReason, when set, is the reason an answer with status 409 to a call with a
	// stale token must carry.
	StaleReason string
}

// Violation is one broken property, with the records that show it.
type Violation struct {
	Property string
	Message  string
	// From and To bound the moments the violation is about (the history's clock).
	From, To int64
	Records  []Record
}

// Result is what the checker found.
type Result struct {
	Violations []Violation
	// Faults counts the faults injected (completed), by kind.
	Faults map[FaultKind]int
	// Acquisitions counts the mutex's successful acquire answers; SettleAcquisitions
	// those sent after the faults ended.
	Acquisitions, SettleAcquisitions int
	// ConnAcquisitions counts those tied to the client's connection (?hold=connection).
	ConnAcquisitions int
	// SemaphoreAcquisitions counts the semaphore's successful acquire answers, and
	// SemaphoreSlots the slots they were spread over.
	SemaphoreAcquisitions, SemaphoreSlots int
	// LeaderTerms counts the distinct (holder, token) holds of the leader lock seen.
	LeaderTerms int
	// Promises counts, per lock, the answers that promised a hold (the samples checked
	// for overlaps); Overlaps the pairs of different holds found overlapping.
	Promises map[string]int
	Overlaps int
	// Store writes: all decisions, accepted, rejected (stale tokens), and the writes a
	// client made knowing its hold had ended (Late) and how many of those were rejected.
	Writes, WritesAccepted, StaleRejected, LateWrites, LateRejected int
	// StaleCalls counts release/renew calls made with a stale token on purpose.
	StaleCalls int
	// Crashes counts processes that ended unexpectedly or logged a panic.
	Crashes int
	// Holds counts, per kind of fault that took the API server away and per lock
	// ("mutex", "leader"), what became of the holds named when such a fault began
	// (Record.Holds): kept, released by their holder, lost. A lost hold is no violation
	// (a single agent cut off for longer than lease-duration is rightly replaced); the
	// properties above say whether anything was promised twice.
	Holds map[HoldKey]HoldCount
	// Jeopardy counts the answers that said a hold was in jeopardy; Resumed the times a
	// hold (lock, holder, token) was answered held again after such an answer.
	Jeopardy, Resumed int
	// Records is the number of records checked.
	Records int
}

// HoldKey names a count of Result.Holds: a kind of fault and a lock ("mutex" or
// "leader").
type HoldKey struct {
	Fault FaultKind
	Lock  string
}

// HoldCount is what became of the holds of one lock across faults of one kind.
type HoldCount struct {
	// Kept: renewed with the same token after the fault began, before anyone else
	// wrote the Lease (HoldKept). Released: ended by its holder (the Lease cleared by
	// it, or a release of that token sent before the Lease changed hands). Lost: the
	// Lease changed hands (or its holder did not renew within retry-period + 1 s after
	// the fault) without a release.
	Kept, Released, Lost int
}

// Failed says whether any property was violated.
func (r *Result) Failed() bool { return len(r.Violations) > 0 }

// Promise is the part of the time line over which an answer promised a hold: an
// answer that says held with validFor V, sent at s and received at r, promises the hold
// over [r, s+V), ended early by the same client's next release or renew of that token
// (its send time): a release ends the hold, a renew may shorten its ttl and answers
// with a promise of its own. A client that checks its own hold of a mutex and is shown
// another client's (Record.Own) is promised nothing. A third party's lease-rewrite promises its foreign holder renew-deadline from
// the write's send time, as a client-go elector with the agents' timings would rely on.
type Promise struct {
	Lock, Holder string
	Token        int64
	Start, End   int64
	Rec          Record
	// Exempt is the holder (and token) that a third party's rewrite displaced: an
	// overlap with it is the third party's doing, not the agents'.
	ExemptHolder string
	ExemptToken  int64
	// PerPod: the lock is a leader lock, held by the agent for its whole Pod, so its
	// holds are told apart by holder alone; a mutex's are told apart by holder and
	// token, since the clients of one Pod exclude each other too.
	PerPod bool
}

// Key names the hold a promise is about.
func (p Promise) Key() string {
	if p.PerPod {
		return p.Holder
	}
	return fmt.Sprintf("%s#%d", p.Holder, p.Token)
}

// isAnswer says whether r is an agent's answer about a lock's state.
func isAnswer(r Record) bool {
	return r.Op == OpAcquire || r.Op == OpGet || r.Op == OpRenew
}

func heldAnswer(r Record) bool {
	return isAnswer(r) && r.Status == 200 && r.Held
}

func holderOf(r Record) string {
	if r.Holder != "" {
		return r.Holder
	}
	return r.Agent
}

// Promises derives the promises of a history (merged, see Merge).
func Promises(recs []Record, cfg CheckConfig) []Promise {
	// proc/lock/token -> the client's own calls that end or change its hold, in send
	// order: releases, and renews that may have set a new ttl (answered 200, or with no
	// or a 5xx answer; a 4xx changed nothing).
	ends := map[string][]Record{}
	for _, r := range recs {
		if r.Op == OpRelease || (r.Op == OpRenew && (r.Status == 200 || r.Status == 0 || r.Status/100 == 5)) {
			k := fmt.Sprintf("%s/%s/%d", r.Proc, r.Lock, r.ReqToken)
			ends[k] = append(ends[k], r)
		}
	}
	var out []Promise
	for _, r := range recs {
		var p Promise
		switch {
		case heldAnswer(r) && r.ValidFor > 0 && r.Own != 0 && r.Own != r.Token && r.Lock != cfg.Leader:
			// A client checking its own hold was shown another client's (of the same
			// agent): it relies on nothing; that hold's owner has promises of its own.
			continue
		case heldAnswer(r) && r.ValidFor > 0:
			p = Promise{Lock: r.Lock, Holder: holderOf(r), Token: r.Token, Start: r.Recv, End: r.Send + r.ValidFor, Rec: r}
			for _, q := range ends[fmt.Sprintf("%s/%s/%d", r.Proc, r.Lock, r.Token)] {
				if q.Send >= r.Recv {
					p.End = min(p.End, q.Send)
					break
				}
			}
		case r.Op == OpFault && r.Fault == FaultRewrite && r.Status/100 == 2:
			p = Promise{Lock: r.Lock, Holder: r.Holder, Token: r.Token, Start: r.Recv, End: r.Send + int64(cfg.RenewDeadline), Rec: r,
				ExemptHolder: r.Displaced, ExemptToken: r.DisplacedToken}
		default:
			continue
		}
		p.PerPod = p.Lock == cfg.Leader
		if p.End > p.Start {
			out = append(out, p)
		}
	}
	return out
}

// exempt says whether an overlap of p and q is a third party's doing: a rewrite
// overlaps the hold it displaced; and a third party that writes over a hold which had
// begun before its write (the agent's first promise of that hold, holdStart) broke it
// by not following the protocol, whether or not it displaced that hold directly (a
// second rewrite lands while the first displaced holder's promise still runs). Two
// third parties are never counted against each other. An agent whose hold begins after
// a third party's write is not excused: it must wait out the foreign holder.
func exempt(p, q Promise, holdStart map[string]int64) bool {
	displaced := func(p, q Promise) bool {
		return p.ExemptHolder != "" && p.ExemptHolder == q.Holder && (p.ExemptToken == q.Token || q.PerPod)
	}
	foreign := func(p Promise) bool { return strings.HasPrefix(p.Holder, ThirdParty) }
	overWrote := func(tp, agent Promise) bool {
		return foreign(tp) && !foreign(agent) && tp.Start >= holdStart[holdKey(agent)]
	}
	return displaced(p, q) || displaced(q, p) || (foreign(p) && foreign(q)) || overWrote(p, q) || overWrote(q, p)
}

// holdKey names one hold by holder and token (a leader lock's term, a mutex's hold).
func holdKey(p Promise) string { return fmt.Sprintf("%s#%d", p.Holder, p.Token) }

// Check checks a history: recs from every process of a run, in any order.
func Check(recs []Record, cfg CheckConfig) *Result {
	recs = Merge(recs)
	res := &Result{Faults: map[FaultKind]int{}, Promises: map[string]int{}, Holds: map[HoldKey]HoldCount{}, Records: len(recs)}
	promises := Promises(recs, cfg)
	checkExclusion(res, promises)
	checkTokens(res, recs, cfg)
	checkStore(res, recs, promises)
	checkCalls(res, recs, cfg)
	checkLiveness(res, recs, cfg)
	countHolds(res, recs, cfg)
	return res
}

// countHolds counts what became of the holds across the faults that took the API
// server away (Result.Holds), and the jeopardy answers and resumed holds.
func countHolds(res *Result, recs []Record, cfg CheckConfig) {
	releases := map[string][]int64{} // lock#token -> send times of the holder's releases
	jeopardy := map[string]int64{}   // lock/holder#token -> receive time of the first jeopardy answer since it was last held
	for _, r := range recs {
		if r.Op == OpRelease {
			k := fmt.Sprintf("%s#%d", r.Lock, r.ReqToken)
			releases[k] = append(releases[k], r.Send)
		}
		k := fmt.Sprintf("%s/%s#%d", r.Lock, holderOf(r), r.Token)
		switch {
		case isAnswer(r) && r.Status == 200 && !r.Held && r.State == string(lock.PhaseJeopardy):
			res.Jeopardy++
			if _, ok := jeopardy[k]; !ok {
				jeopardy[k] = r.Recv
			}
		case heldAnswer(r):
			if at, ok := jeopardy[k]; ok && at < r.Send {
				res.Resumed++
				delete(jeopardy, k)
			}
		}
	}
	for _, r := range recs {
		if r.Op != OpFault || r.Status != 200 {
			continue
		}
		for _, f := range r.Holds {
			key := HoldKey{Fault: r.Fault, Lock: "mutex"}
			switch f.Lock {
			case cfg.Mutex:
			case cfg.Leader:
				key.Lock = "leader"
			default:
				key.Lock = f.Lock
			}
			c := res.Holds[key]
			switch f.Outcome {
			case HoldFree, HoldGone:
				continue
			case HoldKept:
				c.Kept++
			case HoldCleared:
				c.Released++
			default: // changed, undecided: released if its holder had asked for that
				ownRelease := false
				for _, at := range releases[fmt.Sprintf("%s#%d", f.Lock, f.Token)] {
					if f.Decided == 0 || at <= f.Decided {
						ownRelease = true
					}
				}
				if ownRelease {
					c.Released++
				} else {
					c.Lost++
				}
			}
			res.Holds[key] = c
		}
	}
}

// checkExclusion: no two promises of different holds of one lock overlap.
func checkExclusion(res *Result, promises []Promise) {
	byLock := map[string][]Promise{}
	for _, p := range promises {
		byLock[p.Lock] = append(byLock[p.Lock], p)
	}
	for lock, ps := range byLock {
		res.Promises[lock] = len(ps)
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].Start < ps[j].Start })
		holdStart := map[string]int64{}
		for _, p := range ps { // sorted: the first promise of a hold is its start
			if _, ok := holdStart[holdKey(p)]; !ok {
				holdStart[holdKey(p)] = p.Start
			}
		}
		seen := map[string]bool{}
		for i, p := range ps {
			for j := i + 1; j < len(ps) && ps[j].Start < p.End; j++ {
				q := ps[j]
				if q.Key() == p.Key() || exempt(p, q, holdStart) {
					continue
				}
				pair := p.Key() + " / " + q.Key()
				if seen[pair] {
					continue
				}
				seen[pair] = true
				res.Overlaps++
				res.Violations = append(res.Violations, Violation{
					Property: PropExclusion,
					Message: fmt.Sprintf("lock %s: %s (token %d) was promised the hold until %s, and %s (token %d) from %s: overlap %s",
						lock, p.Holder, p.Token, fmtT(p.End), q.Holder, q.Token, fmtT(q.Start), fmtDur(min(p.End, q.End)-q.Start)),
					From: q.Start, To: min(p.End, q.End), Records: []Record{p.Rec, q.Rec},
				})
			}
		}
	}
}

// observation is an answer (or a third party's write) that shows a hold of a lock with
// its token at some moment within [Send, Recv].
type observation struct {
	rec     Record
	holder  string
	token   int64
	acquire bool
	// foreign: a third party's write. Its token belongs to it alone, but the holder it
	// displaced may go on showing its older token until it learns of the write, so it
	// takes no part in the order of tokens over time.
	foreign bool
}

// checkTokens: a token names one holder; an observation finished before another
// began never shows a greater token; an acquisition's token is greater than every
// token shown before it was asked for. A deleted Lease is no exception: the harness
// starts no agent while a Lease is deleted, so every agent saw the deleted record and
// must go on from its token.
func checkTokens(res *Result, recs []Record, cfg CheckConfig) {
	byLock := map[string][]observation{}
	slots := map[string]bool{}
	for _, r := range recs {
		switch {
		case heldAnswer(r):
			byLock[r.Lock] = append(byLock[r.Lock], observation{rec: r, holder: holderOf(r), token: r.Token, acquire: r.Op == OpAcquire})
		case r.Op == OpFault && r.Fault == FaultRewrite && r.Status/100 == 2:
			byLock[r.Lock] = append(byLock[r.Lock], observation{rec: r, holder: r.Holder, token: r.Token, foreign: true})
		}
		if r.Op == OpAcquire && r.Status == 200 && r.Held && cfg.Semaphore != "" && strings.HasPrefix(r.Lock, cfg.Semaphore+".") {
			res.SemaphoreAcquisitions++
			if !slots[r.Lock] {
				slots[r.Lock] = true
				res.SemaphoreSlots++
			}
		}
		if r.Op == OpAcquire && r.Status == 200 && r.Held && r.Lock == cfg.Mutex {
			res.Acquisitions++
			if r.Conn {
				res.ConnAcquisitions++
			}
		}
	}
	terms := map[string]bool{}
	for lock, os := range byLock {
		owner := map[int64]observation{}
		var own []observation
		for _, o := range os {
			if lock == cfg.Leader {
				terms[fmt.Sprintf("%s#%d", o.holder, o.token)] = true
			}
			if !o.foreign {
				own = append(own, o)
			}
			if first, ok := owner[o.token]; !ok {
				owner[o.token] = o
			} else if first.holder != o.holder {
				res.Violations = append(res.Violations, Violation{
					Property: PropTokenOrder,
					Message:  fmt.Sprintf("lock %s: token %d was given to %s and to %s", lock, o.token, first.holder, o.holder),
					From:     first.rec.Send, To: o.rec.Recv, Records: []Record{first.rec, o.rec},
				})
			}
		}
		byRecv := append([]observation(nil), own...)
		sort.SliceStable(byRecv, func(i, j int) bool { return byRecv[i].rec.Recv < byRecv[j].rec.Recv })
		bySend := append([]observation(nil), own...)
		sort.SliceStable(bySend, func(i, j int) bool { return bySend[i].rec.Send < bySend[j].rec.Send })
		var best *observation
		i := 0
		for _, y := range bySend {
			for ; i < len(byRecv) && byRecv[i].rec.Recv < y.rec.Send; i++ {
				if best == nil || byRecv[i].token > best.token {
					best = &byRecv[i]
				}
			}
			if best == nil {
				continue
			}
			switch {
			case y.token < best.token:
				res.Violations = append(res.Violations, Violation{
					Property: PropTokenOrder,
					Message: fmt.Sprintf("lock %s: %s showed token %d at %s, after %s had shown token %d at %s",
						lock, y.holder, y.token, fmtT(y.rec.Recv), best.holder, best.token, fmtT(best.rec.Recv)),
					From: best.rec.Send, To: y.rec.Recv, Records: []Record{best.rec, y.rec},
				})
			case y.acquire && y.token == best.token:
				res.Violations = append(res.Violations, Violation{
					Property: PropTokenOrder,
					Message: fmt.Sprintf("lock %s: an acquisition by %s got token %d, already shown by %s before it was asked for",
						lock, y.holder, y.token, best.holder),
					From: best.rec.Send, To: y.rec.Recv, Records: []Record{best.rec, y.rec},
				})
			}
		}
	}
	res.LeaderTerms = len(terms)
}

// checkStore: the store decided every write by its rule (accept iff the token is at
// least the highest accepted), so it never accepted a lower token after a higher one
// and rejected every stale one; and no write the store received while the writer's
// hold was promised to it was rejected (that would mean a later hold had already
// written: two holds at once).
func checkStore(res *Result, recs []Record, promises []Promise) {
	byKey := map[string][]Promise{}
	for _, p := range promises {
		k := fmt.Sprintf("%s/%s#%d", p.Lock, p.Holder, p.Token)
		byKey[k] = append(byKey[k], p)
	}
	var store []Record
	for _, r := range recs {
		if r.Op == OpStore {
			store = append(store, r)
		}
		if r.Op == OpWrite && r.Late {
			res.LateWrites++
			if r.Status != 0 && !r.Accepted {
				res.LateRejected++
			}
		}
	}
	sort.SliceStable(store, func(i, j int) bool { return store[i].Seq < store[j].Seq })
	high := map[string]int64{}
	last := map[string]Record{}
	for _, r := range store {
		res.Writes++
		h := high[r.Lock]
		want := r.ReqToken >= h
		if r.Accepted {
			res.WritesAccepted++
		} else {
			res.StaleRejected++
		}
		if r.Accepted != want || r.Highest != h {
			res.Violations = append(res.Violations, Violation{
				Property: PropStoreFence,
				Message: fmt.Sprintf("lock %s: the store %s token %d from %s with %d the highest accepted before (it says %d)",
					r.Lock, map[bool]string{true: "accepted", false: "rejected"}[r.Accepted], r.ReqToken, r.Target, h, r.Highest),
				From: last[r.Lock].Send, To: r.Recv, Records: []Record{last[r.Lock], r},
			})
		}
		if r.Accepted {
			high[r.Lock] = r.ReqToken
			last[r.Lock] = r
			continue
		}
		for _, p := range byKey[fmt.Sprintf("%s/%s#%d", r.Lock, r.Holder, r.ReqToken)] {
			if p.Start <= r.Recv && r.Recv < p.End {
				res.Violations = append(res.Violations, Violation{
					Property: PropHoldWrite,
					Message: fmt.Sprintf("lock %s: the store rejected token %d of %s at %s, within its promised hold (until %s): token %d of another hold was written before",
						r.Lock, r.ReqToken, r.Holder, fmtT(r.Recv), fmtT(p.End), h),
					From: p.Start, To: r.Recv, Records: []Record{p.Rec, last[r.Lock], r},
				})
				break
			}
		}
	}
}

// checkCalls: calls with a stale token got an error; no process crashed.
func checkCalls(res *Result, recs []Record, cfg CheckConfig) {
	for _, r := range recs {
		switch r.Op {
		case OpStaleRelease, OpStaleRenew:
			res.StaleCalls++
			switch {
			case r.Status/100 == 2:
				res.Violations = append(res.Violations, Violation{
					Property: PropStaleToken,
					Message: fmt.Sprintf("%s of lock %s with stale token %d (the hold's is %d) answered %d: it must fail and change nothing",
						r.Op, r.Lock, r.ReqToken, r.Token, r.Status),
					From: r.Send, To: r.Recv, Records: []Record{r},
				})
			case r.Status == 409 && cfg.StaleReason != "" && r.Reason != cfg.StaleReason:
				res.Violations = append(res.Violations, Violation{
					Property: PropStaleToken,
					Message:  fmt.Sprintf("%s of lock %s with stale token %d answered 409 with reason %q, want %q", r.Op, r.Lock, r.ReqToken, r.Reason, cfg.StaleReason),
					From:     r.Send, To: r.Recv, Records: []Record{r},
				})
			}
		case OpExit:
			if !r.Expected {
				res.Crashes++
				res.Violations = append(res.Violations, Violation{
					Property: PropCrash, Message: fmt.Sprintf("%s exited unexpectedly: %s", r.Target, r.Detail),
					From: r.Send, To: r.Recv, Records: []Record{r},
				})
			}
		case OpPanic:
			res.Crashes++
			res.Violations = append(res.Violations, Violation{
				Property: PropCrash, Message: fmt.Sprintf("%s logged: %s", r.Target, r.Detail),
				From: r.Send, To: r.Recv, Records: []Record{r},
			})
		case OpFault:
			if r.Status == 200 { // a fault that could not be made is in the history, not in the count
				res.Faults[r.Fault]++
			}
		}
	}
}

// checkLiveness: enough acquisitions; after the faults ended, the mutex was acquired
// and the leader lock was held again.
func checkLiveness(res *Result, recs []Record, cfg CheckConfig) {
	if res.Acquisitions < cfg.MinAcquisitions {
		res.Violations = append(res.Violations, Violation{
			Property: PropLiveness,
			Message:  fmt.Sprintf("only %d acquisitions of %s, want at least %d", res.Acquisitions, cfg.Mutex, cfg.MinAcquisitions),
		})
	}
	var settle *Record
	for i, r := range recs {
		if r.Op == OpSettle {
			settle = &recs[i]
		}
	}
	if settle == nil {
		return
	}
	leader := false
	for _, r := range recs {
		if r.Send < settle.Send || !heldAnswer(r) {
			continue
		}
		if r.Lock == cfg.Mutex && r.Op == OpAcquire {
			res.SettleAcquisitions++
		}
		if r.Lock == cfg.Leader {
			leader = true
		}
	}
	if res.SettleAcquisitions == 0 {
		res.Violations = append(res.Violations, Violation{
			Property: PropLiveness, Message: fmt.Sprintf("no acquisition of %s after the faults ended (%s)", cfg.Mutex, fmtT(settle.Send)),
			From: settle.Send, To: settle.Send, Records: []Record{*settle},
		})
	}
	if !leader {
		res.Violations = append(res.Violations, Violation{
			Property: PropLiveness, Message: fmt.Sprintf("no agent said it held the leader lock %s after the faults ended (%s)", cfg.Leader, fmtT(settle.Send)),
			From: settle.Send, To: settle.Send, Records: []Record{*settle},
		})
	}
}

// fmtT formats a time of the history's clock; Excerpt prints times relative to the
// run's start, messages print them as seconds of CLOCK_MONOTONIC.
func fmtT(t int64) string { return fmt.Sprintf("%.3fs", float64(t)/1e9) }

func fmtDur(d int64) string { return time.Duration(d).Round(time.Microsecond).String() }

// Format prints one record on one line.
func Format(r Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s..%s %-10s %-13s", fmtT(r.Send), fmtT(r.Recv), r.Proc, r.Op)
	if r.Fault != "" {
		fmt.Fprintf(&b, " %s", r.Fault)
	}
	if r.Lock != "" {
		fmt.Fprintf(&b, " lock=%s", r.Lock)
	}
	if r.Target != "" {
		fmt.Fprintf(&b, " target=%s", r.Target)
	}
	if r.Status != 0 {
		fmt.Fprintf(&b, " status=%d", r.Status)
	}
	if r.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", r.Reason)
	}
	if r.Err != "" {
		fmt.Fprintf(&b, " err=%q", r.Err)
	}
	if isAnswer(r) && r.Status == 200 {
		fmt.Fprintf(&b, " held=%t", r.Held)
		if r.State == string(lock.PhaseJeopardy) {
			b.WriteString(" state=jeopardy")
		}
	}
	if r.Holder != "" {
		fmt.Fprintf(&b, " holder=%s", r.Holder)
	}
	if r.Token != 0 {
		fmt.Fprintf(&b, " token=%d", r.Token)
	}
	if r.ValidFor != 0 {
		fmt.Fprintf(&b, " validFor=%s (until %s)", fmtDur(r.ValidFor), fmtT(r.Send+r.ValidFor))
	}
	if r.ReqToken != 0 {
		fmt.Fprintf(&b, " reqToken=%d", r.ReqToken)
	}
	if r.Own != 0 && r.Own != r.Token {
		fmt.Fprintf(&b, " own=%d", r.Own)
	}
	if r.Conn {
		b.WriteString(" hold=connection")
	}
	if r.Wait != 0 {
		fmt.Fprintf(&b, " wait=%s", fmtDur(r.Wait))
	}
	if r.TTL != 0 {
		fmt.Fprintf(&b, " ttl=%s", fmtDur(r.TTL))
	}
	if r.Op == OpWrite || r.Op == OpStore {
		fmt.Fprintf(&b, " accepted=%t", r.Accepted)
		if r.Late {
			b.WriteString(" late")
		}
		if r.Op == OpStore {
			fmt.Fprintf(&b, " highestBefore=%d", r.Highest)
		}
	}
	for _, f := range r.Holds {
		fmt.Fprintf(&b, " hold[%s %s#%d: %s", f.Lock, f.Holder, f.Token, f.Outcome)
		if f.Outcome == HoldChanged || f.Outcome == HoldCleared {
			fmt.Fprintf(&b, ", then %s#%d", f.AfterHolder, f.AfterToken)
		}
		b.WriteString("]")
	}
	if r.Sent {
		b.WriteString(" (sent, answer not yet recorded)")
	}
	if r.Displaced != "" {
		fmt.Fprintf(&b, " displaced=%s#%d", r.Displaced, r.DisplacedToken)
	}
	if r.Agent != "" && r.Agent != r.Holder {
		fmt.Fprintf(&b, " agent=%s", r.Agent)
	}
	if r.Detail != "" {
		fmt.Fprintf(&b, " (%s)", r.Detail)
	}
	return b.String()
}

// Excerpt prints the records of the history (merged) around a violation: those of
// the violation itself, marked, and the others of the same locks and faults that were
// in flight from a second before to a second after (but for answers "not held"), at
// most max lines.
func Excerpt(recs []Record, v Violation, max int) string {
	const margin = int64(time.Second)
	involved := map[string]bool{}
	locks := map[string]bool{}
	for _, r := range v.Records {
		involved[fmt.Sprintf("%s/%d", r.Proc, r.Seq)] = true
		if r.Lock != "" {
			locks[r.Lock] = true
		}
	}
	var lines []string
	var marked []int
	for _, r := range recs {
		in := involved[fmt.Sprintf("%s/%d", r.Proc, r.Seq)]
		near := v.From != 0 && r.Recv >= v.From-margin && r.Send <= v.To+margin &&
			(len(locks) == 0 || locks[r.Lock] || r.Lock == "" || r.Op == OpFault) &&
			!(r.Op == OpGet && r.Status == 200 && !r.Held) // "not held" promises nothing: noise
		if !in && !near {
			continue
		}
		mark := "   "
		if in {
			mark = ">> "
			marked = append(marked, len(lines))
		}
		lines = append(lines, mark+Format(r))
	}
	if len(lines) > max && max > 0 {
		// Keep the marked lines and as many neighbours as fit, centred on them.
		keep := map[int]bool{}
		for _, m := range marked {
			keep[m] = true
		}
		for d := 1; len(keep) < max && d < len(lines); d++ {
			for _, m := range marked {
				for _, i := range []int{m - d, m + d} {
					if i >= 0 && i < len(lines) && len(keep) < max {
						keep[i] = true
					}
				}
			}
		}
		var out []string
		gap := false
		for i, l := range lines {
			if keep[i] {
				out = append(out, l)
				gap = false
			} else if !gap {
				out = append(out, "   ...")
				gap = true
			}
		}
		lines = out
	}
	return strings.Join(lines, "\n")
}
