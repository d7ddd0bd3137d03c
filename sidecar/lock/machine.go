package lock

import (
	"fmt"
	"math"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// The machine: every transition of this agent's hold of a lock, in one place.
//
// machine.step takes the machine (its phase and what the hold needs to know), one
// input and the time, and returns the next machine and an output: the events to emit,
// the lines to log, the local hold to end, the write to send, the timer to start, the
// caller's error. It does no I/O, starts no goroutine and reads no clock; lock.go,
// loops.go and jeopardy.go drive it: they talk to the API server, run the timers,
// answer callers, and feed each outcome back in as an input. The transitions (the
// phase diagram is in doc.go):
//
//	idle, lost  --acquireSent------------------------------> acquiring
//	acquiring   --acquireFailed----------------------------> idle
//	acquiring   --acquired, overtaken by a watch event-----> idle (never held)
//	acquiring   --acquired---------------------------------> held (event acquired)
//	held        --answered, renew-deadline already passed--> lost
//	held        --answered with a ttl-----------------------> held (ttl timer started)
//	held, jeopardy --observed: deleted, other holder, other token--> lost
//	held, jeopardy --renewDue: cache shows no Lease / not our record--> lost
//	held        --deadline/renewDue past renew-deadline:
//	                refused since the last write, or grace 0-----> lost
//	                unavailable, within grace -------------------> jeopardy (event jeopardy)
//	jeopardy    --deadline/renewDue past grace-------------> lost
//	held, jeopardy --renewResult ok-------------------------> held (from jeopardy: event safe)
//	held, jeopardy --renewResult conflict (the record not ours)--> lost
//	held, jeopardy --renewResult unread, unavailable--------> same (failing; outage)
//	held, jeopardy --renewResult refused--------------------> same (failing; refused),
//	                 then, past renew-deadline (in jeopardy: at once) ---> lost
//	held, jeopardy --end (release, ttl, shutdown, closed)---> releasing (Lease names us) or idle
//	releasing   --releaseResult-----------------------------> idle (event released)
//	lost        --(its promise runs out: no transition, acquisition waits it out)
//
// Calls that change no phase: checkToken (release), renewTTL (renew), and the queries
// validFor, reported, mayResume, nextRenew, promised, ours, ttlPassed. Before
// acquireSent, decideAcquire (the end of this file) decides whether to write at all.

// phase is where the machine is. The reported Phase (State.Phase) is its projection
// (reported): held and jeopardy as such, everything else not-held.
type phase int

const (
	// phaseIdle: no hold, none being taken.
	phaseIdle phase = iota
	// phaseAcquiring: an acquiring write is in flight.
	phaseAcquiring
	// phaseHeld: held; reported held while the last successful write is younger than
	// renew-deadline (and the ttl has not passed).
	phaseHeld
	// phaseJeopardy: renew-deadline passed while the API server was unavailable; the
	// renewal goes on until the grace period ends.
	phaseJeopardy
	// phaseReleasing: the hold ended (release, ttl, shutdown) and the write that
	// clears the Lease is in flight.
	phaseReleasing
	// phaseLost: the hold was lost; its client may rely on it until promise.
	phaseLost
)

func (p phase) String() string {
	return [...]string{"idle", "acquiring", "held", "jeopardy", "releasing", "lost"}[p]
}

// writeResult is how the API server answered a write, as the machine needs to know it.
type writeResult int

const (
	// writeOK: the write landed.
	writeOK writeResult = iota
	// writeConflict: the Lease changed or was deleted since it was read (409 with the
	// current record read and not ours, 404, already exists).
	writeConflict
	// writeUnread: a conflict whose current record could not be read: maybe our own
	// renewal that landed unseen, so it counts as unavailability.
	writeUnread
	// writeUnavailable: no answer, a timeout, a 5xx, a 429.
	writeUnavailable
	// writeRefused: an answer that refuses the write (403, another 4xx).
	writeRefused
)

// classify says which writeResult the API's error raw is; unread says that raw is a
// conflict whose Lease could not be read again.
func classify(raw error, unread bool) writeResult {
	switch {
	case raw == nil:
		return writeOK
	case unread:
		return writeUnread
	case apierrors.IsConflict(raw) || apierrors.IsAlreadyExists(raw) || apierrors.IsNotFound(raw):
		return writeConflict
	case unavailable(raw):
		return writeUnavailable
	}
	return writeRefused
}

// machineConfig is what the machine needs of the lock's Config.
type machineConfig struct {
	identity                          string
	renewDeadline, retryPeriod, grace time.Duration
}

// machine is the state of this agent's hold of one lock.
type machine struct {
	cfg   machineConfig
	phase phase
	// token is the fencing token of the current (or last) hold.
	token int64
	// heldSince is when the current hold was acquired; lastWrite the send time of the
	// last successful write while held (kept after the hold: it says this process
	// wrote the Lease).
	heldSince, lastWrite time.Time
	// failing: the last renewal failed; the next goes at lastAttempt + retry.
	failing     bool
	lastAttempt time.Time
	retry       time.Duration
	// refused is the last renewal failure since the last successful write that was an
	// answer other than unavailability: renew-deadline then ends the hold.
	refused error
	// ttl and expires: the hold's ttl and when it ends it (zero: no ttl).
	ttl     time.Duration
	expires time.Time
	// promise: a lost hold's client may rely on it until then; no new hold before.
	promise time.Time
	// ended is the last hold that ended, so that a late call naming it learns why.
	ended endedHold
	// releasing is the hold being cleared.
	releasing endedHold
}

type endedHold struct {
	token   int64
	reason  string
	heldFor time.Duration
	hadHold bool
}

// output is what a step asks its driver to do, in this order: end the local hold, emit
// the events (and log the lines), start the ttl timer, send the write, wake the
// waiters; err is the answer of a call.
type output struct {
	// endHold: end the local client's hold (close Done, free the local slot) with
	// endReason.
	endHold   bool
	endReason string
	events    []Event
	logs      []logLine
	// outage: this agent lost the API server (markOutageLocked).
	outage bool
	// ttl > 0: (re)start the hold's ttl timer for ttl.
	ttl time.Duration
	// write is the write to send.
	write writeKind
	// writeTimeout bounds a renewal; deadlineIn is when, from the send, renew-deadline
	// passes (a deadline input then, even while the renewal is in flight).
	writeTimeout, deadlineIn time.Duration
	wake                     bool
	err                      error
}

type writeKind int

const (
	writeNone writeKind = iota
	writeRenew
	writeRelease
)

// logLine is one log line a step asks for: Info at level v (Error when err is set).
type logLine struct {
	v   int
	msg string
	err error
	kv  []any
}

// The inputs. Each is one thing that happened: a call, a watch event, a write's
// result, a timer.
type (
	// acquireSent: an acquiring write is sent.
	acquireSent struct{}
	// acquireFailed: it failed (or was not sent).
	acquireFailed struct{}
	// acquired: it landed, sent at sent, with token. overtaken: the cache already
	// shows a newer record (the Lease deleted, or written by someone else).
	acquired struct {
		sent         time.Time
		token        int64
		overtaken    bool
		handoverFrom string
		handover     time.Duration
	}
	// answered: the acquire is about to be answered; ttl > 0 starts the hold's ttl.
	answered struct{ ttl time.Duration }
	// observed: the cache took a newer record (present false: the Lease is gone).
	observed struct {
		present bool
		rec     Record
	}
	// renewDue: the renew timer fired; the cache holds rec.
	renewDue struct {
		present bool
		rec     Record
		apiErr  error
	}
	// renewResult: a renewal sent at sent was answered with raw (the API's error;
	// nil: it landed), err being raw as the engine reports it. unread: raw is a
	// conflict whose current record could not be read.
	renewResult struct {
		sent   time.Time
		raw    error
		unread bool
		err    error
	}
	// deadline: a timer at renew-deadline or at the end of the grace period.
	deadline struct{ apiErr error }
	// end: the hold ends by release, ttl, shutdown or a closed connection. namesUs:
	// the cached Lease names this agent, so it is cleared.
	end struct {
		reason  string
		namesUs bool
	}
	// releaseResult: the clearing write was answered with raw (err as reported).
	releaseResult struct {
		raw error
		err error
	}
	// renewTTL: a client's renew call restarts the ttl of the hold named by token
	// (0: the ttl given at acquire).
	renewTTL struct {
		token int64
		ttl   time.Duration
	}
)

// input is one of the inputs above.
type input interface{ isInput() }

func (acquireSent) isInput()   {}
func (acquireFailed) isInput() {}
func (acquired) isInput()      {}
func (answered) isInput()      {}
func (observed) isInput()      {}
func (renewDue) isInput()      {}
func (renewResult) isInput()   {}
func (deadline) isInput()      {}
func (end) isInput()           {}
func (releaseResult) isInput() {}
func (renewTTL) isInput()      {}

// step is the transition function.
func (m machine) step(in input, now time.Time) (machine, output) {
	switch in := in.(type) {
	case acquireSent:
		if !m.holding() {
			m.phase = phaseAcquiring
		}
	case acquireFailed:
		if m.phase == phaseAcquiring {
			m.phase = phaseIdle
		}
	case acquired:
		return m.acquired(in)
	case answered:
		return m.answered(in, now)
	case observed:
		return m.observed(in, now)
	case renewDue:
		return m.renewDue(in, now)
	case renewResult:
		return m.renewResult(in, now)
	case deadline:
		return m.deadline(in.apiErr, now)
	case end:
		return m.end(in, now)
	case releaseResult:
		return m.releaseResult(in)
	case renewTTL:
		return m.renewTTL(in, now)
	default:
		panic(fmt.Sprintf("lock machine: unknown input %T", in))
	}
	return m, output{}
}

// holding is true while this agent has a hold (reported or in jeopardy).
func (m machine) holding() bool { return m.phase == phaseHeld || m.phase == phaseJeopardy }

// validFor is how long the hold may still be relied on: until renew-deadline after the
// send time of the last successful write, and never past the hold's ttl.
func (m machine) validFor(now time.Time) time.Duration {
	if !m.holding() {
		return 0
	}
	end := m.lastWrite.Add(m.cfg.renewDeadline)
	if !m.expires.IsZero() && m.expires.Before(end) {
		end = m.expires
	}
	return end.Sub(now)
}

// reported is the Phase a State reports now, from the clock: held turns to jeopardy
// (or not-held) at renew-deadline even before the deadline input arrives.
func (m machine) reported(now time.Time) Phase {
	switch {
	case !m.holding():
		return PhaseNotHeld
	case m.validFor(now) > 0:
		return PhaseHeld
	case m.mayResume(now):
		return PhaseJeopardy
	}
	return PhaseNotHeld
}

// mayResume is true when a hold past its renew-deadline may still resume: the
// failures were unavailability, its ttl has not run out, the grace period has not
// passed.
func (m machine) mayResume(now time.Time) bool {
	if !m.holding() || m.cfg.grace <= 0 || m.refused != nil {
		return false
	}
	if !m.expires.IsZero() && !now.Before(m.expires) {
		return false
	}
	return now.Before(m.graceEnd())
}

// graceEnd is when a hold in jeopardy is lost.
func (m machine) graceEnd() time.Time { return m.lastWrite.Add(m.cfg.renewDeadline + m.cfg.grace) }

// writeEnd is the latest moment a renewal may still be answered and count: the end of
// the grace period when the hold may go into jeopardy, renew-deadline otherwise.
func (m machine) writeEnd() time.Time {
	if m.cfg.grace > 0 && m.refused == nil {
		return m.graceEnd()
	}
	return m.lastWrite.Add(m.cfg.renewDeadline)
}

// nextRenew is when the renew loop acts next while holding: healthy at
// renew-deadline/2 after the last write, failing at the retry, and never later than
// the next deadline (renew-deadline, or in jeopardy the end of the grace).
func (m machine) nextRenew() (time.Time, bool) {
	if !m.holding() {
		return time.Time{}, false
	}
	at := m.lastWrite.Add(m.cfg.renewDeadline / 2)
	if m.failing {
		at = m.lastAttempt.Add(m.retry)
	}
	next := m.lastWrite.Add(m.cfg.renewDeadline)
	if m.phase == phaseJeopardy {
		next = m.graceEnd()
	}
	if next.Before(at) {
		at = next
	}
	return at, true
}

// promised is how long a lost hold's client may still rely on it (no new hold before).
func (m machine) promised(now time.Time) time.Duration { return m.promise.Sub(now) }

// ours is true when rec is the record of the current hold (a renewal or a release
// that met a conflict goes on on that copy).
func (m machine) ours(present bool, rec Record) bool {
	return present && rec.Holder == m.cfg.identity && int64(rec.Transitions) == m.token
}

// checkToken returns nil when token names the current hold.
func (m machine) checkToken(token int64) error {
	if m.holding() && m.token == token {
		return nil
	}
	e := &StaleTokenError{Token: token}
	if m.holding() {
		e.Current = m.token
	}
	if m.ended.token == token {
		e.Ended = m.ended.reason
	}
	return e
}

func (m machine) acquired(in acquired) (machine, output) {
	if in.overtaken {
		m.phase = phaseIdle
		return m, output{err: errConflict}
	}
	m.phase, m.token = phaseHeld, in.token
	m.lastWrite, m.heldSince = in.sent, in.sent
	m.failing, m.refused = false, nil
	m.ttl, m.expires = 0, time.Time{}
	ev := Event{Type: EventAcquired, HandoverFrom: in.handoverFrom, Handover: in.handover}
	return m, output{wake: true, events: []Event{ev},
		logs: []logLine{{v: 1, msg: "Acquired lock", kv: []any{"token", m.token}}}}
}

func (m machine) answered(in answered, now time.Time) (machine, output) {
	if m.holding() && m.validFor(now) <= 0 {
		// The agent was paused between the write and the answer for longer than
		// renew-deadline: the hold can no longer be relied on.
		return m.lose(now, LossRenewDeadline, "renew-deadline passed before the acquire could be answered")
	}
	var out output
	if m.holding() && in.ttl > 0 {
		m.ttl, m.expires = in.ttl, now.Add(in.ttl)
		out.ttl = in.ttl
	}
	return m, out
}

func (m machine) observed(in observed, now time.Time) (machine, output) {
	switch {
	case !m.holding():
		return m, output{}
	case !in.present:
		return m.lose(now, LossDeleted, "the Lease was deleted")
	case in.rec.Holder != m.cfg.identity:
		return m.lose(now, LossTakenOver, "the Lease was taken over: holder is now "+fmt.Sprintf("%q", in.rec.Holder))
	case int64(in.rec.Transitions) != m.token:
		return m.lose(now, LossRewritten, "the Lease was rewritten by someone else: its leaseTransitions no longer "+
			fmt.Sprintf("matches token %d", m.token))
	}
	return m, output{}
}

func (m machine) renewDue(in renewDue, now time.Time) (machine, output) {
	switch {
	case !m.holding():
		return m, output{}
	case !in.present:
		// The cache must show our own record (observed ends the hold on anything else;
		// this guards the loop).
		return m.lose(now, LossDeleted, "the Lease was deleted")
	case !m.ours(true, in.rec):
		return m.lose(now, LossRewritten, "the Lease no longer holds this agent's record")
	}
	m, out := m.deadline(in.apiErr, now)
	if !m.holding() {
		return m, out
	}
	// The answer counts until renew-deadline, or in jeopardy until the grace ends; in
	// jeopardy the renewal is sent every retry-period, not every write timeout plus
	// retry-period, so that one is there within retry-period when the API server is
	// back.
	out.write = writeRenew
	out.writeTimeout = min(m.writeEnd().Sub(now), max(m.cfg.retryPeriod, m.cfg.renewDeadline/2))
	if m.reported(now) == PhaseJeopardy {
		out.writeTimeout = min(out.writeTimeout, m.cfg.retryPeriod)
	}
	out.deadlineIn = m.lastWrite.Add(m.cfg.renewDeadline).Sub(now)
	return m, out
}

func (m machine) renewResult(in renewResult, now time.Time) (machine, output) {
	m.lastAttempt = in.sent
	if !m.holding() {
		return m, output{}
	}
	result := classify(in.raw, in.unread)
	if result == writeOK {
		return m.renewed(in.sent, now)
	}
	// A renewal that reached no API server (connection refused: kube-apiserver
	// restarting) is tried again after a quarter of retry-period: a refused connection
	// costs the API server nothing, and the holder's renewal is then among the first
	// requests a restarted kube-apiserver gets. Any other after retry-period.
	m.retry = m.cfg.retryPeriod
	if noAnswer(in.raw) && now.Sub(in.sent) < m.cfg.retryPeriod/4 {
		m.retry = m.cfg.retryPeriod / 4
	}
	var out output
	switch result {
	case writeConflict:
		// Changed or deleted: another Pod may take (or create) the Lease at once.
		return m.lose(now, LossConflict, "renew failed: "+in.err.Error())
	case writeUnread, writeUnavailable:
		out.outage = true
	default:
		m.refused = in.raw
	}
	m.failing = true
	out.logs = []logLine{{msg: "Failed to renew lease", kv: []any{"err", in.err.Error()}}}
	m, dl := m.deadline(in.raw, now)
	return m, merge(out, dl, output{wake: true})
}

// renewed takes a renewal that landed, sent at send: the hold is valid again from send,
// and a hold in jeopardy resumes with the same token.
func (m machine) renewed(send, now time.Time) (machine, output) {
	was := m.lastWrite
	m.lastWrite, m.failing, m.refused = send, false, nil
	out := output{wake: true, logs: []logLine{{v: 5, msg: "Renewed lease"}}}
	if m.phase != phaseJeopardy {
		return m, out
	}
	m.phase = phaseHeld
	in := max(0, now.Sub(was.Add(m.cfg.renewDeadline))).Round(time.Millisecond)
	out.events = []Event{{Type: EventSafe, Reason: fmt.Sprintf(
		"a renewal landed after %s in jeopardy: nobody held the lock in between, the hold goes on with token %d", in, m.token)}}
	out.logs = []logLine{{msg: "Lock safe again", kv: []any{"token", m.token, "inJeopardy", in.String()}}}
	return m, out
}

// deadline moves a hold on when a deadline passed: at renew-deadline into jeopardy (or
// lost, after a refusal or with grace 0); at the end of the grace period, lost.
func (m machine) deadline(apiErr error, now time.Time) (machine, output) {
	if !m.holding() {
		return m, output{}
	}
	switch {
	case now.Before(m.lastWrite.Add(m.cfg.renewDeadline)):
	case m.refused != nil:
		return m.lose(now, LossRenewDeadline, "renew-deadline passed and the API server refused the renewal: "+m.refused.Error())
	case m.cfg.grace <= 0:
		return m.lose(now, LossRenewDeadline, "renew-deadline passed without a successful renew")
	case !now.Before(m.graceEnd()):
		return m.lose(now, LossGrace, fmt.Sprintf("in jeopardy for the whole grace period (%s) without a successful renewal", m.cfg.grace))
	case m.phase != phaseJeopardy:
		m.phase = phaseJeopardy
		reason := "renew-deadline passed without a successful renewal"
		if apiErr != nil {
			reason += " (the API server is unavailable: " + apiErr.Error() + ")"
		}
		reason += fmt.Sprintf("; do not rely on the hold: it resumes with the same token if a renewal lands within %s", m.cfg.grace)
		return m, output{wake: true, events: []Event{{Type: EventJeopardy, Reason: reason}},
			logs: []logLine{{msg: "Lock in jeopardy", kv: []any{"token", m.token, "grace", m.cfg.grace.String()}}}}
	}
	return m, output{}
}

// lose ends the hold that is no longer safe; cause is one of LossCauses. The client
// may rely on the validFor it was given until it hears of the loss: this Pod gives no
// new hold before that has run out.
func (m machine) lose(now time.Time, cause, reason string) (machine, output) {
	if left := m.validFor(now); left > 0 {
		m.promise = now.Add(left)
	}
	m.phase, m.failing, m.refused = phaseLost, false, nil
	m.ended = endedHold{token: m.token, reason: reason}
	return m, output{endHold: true, endReason: reason, wake: true,
		events: []Event{{Type: EventLost, Reason: reason, Cause: cause, HeldFor: now.Sub(m.heldSince)}},
		logs:   []logLine{{msg: "Lost lock", kv: []any{"token", m.token, "reason", reason}}}}
}

// end ends the hold (release, ttl, shutdown): at once, whatever the clearing write
// does. The write is sent when the cached Lease names this agent.
func (m machine) end(in end, now time.Time) (machine, output) {
	r := endedHold{token: m.token, reason: in.reason, hadHold: m.holding()}
	if r.hadHold {
		r.heldFor = now.Sub(m.heldSince)
		m.ended = r
	}
	m.phase, m.failing, m.refused = phaseIdle, false, nil
	out := output{endHold: r.hadHold, endReason: in.reason, wake: true}
	if in.namesUs {
		m.phase, m.releasing = phaseReleasing, r
		out.write = writeRelease
		return m, out
	}
	if r.hadHold {
		out.events = []Event{{Type: EventReleased, Reason: in.reason, HeldFor: r.heldFor}}
	}
	return m, out
}

// releaseResult takes the clearing write's answer. Subscribers hear "released"
// whether or not it landed: the hold has ended either way. A conflict is no failure:
// someone else changed or deleted the Lease since, so it needs no clearing by us.
func (m machine) releaseResult(in releaseResult) (machine, output) {
	r := m.releasing
	m.phase, m.releasing = phaseIdle, endedHold{}
	out := output{wake: true}
	switch classify(in.raw, false) {
	case writeOK, writeConflict:
	default:
		r.reason += "; the Lease could not be cleared, so other Pods can take it only after lease-duration"
		out.err = in.err
		out.logs = []logLine{{msg: "Failed to clear lease; others can take it after lease-duration", err: in.err}}
	}
	if r.hadHold {
		out.events = []Event{{Type: EventReleased, Reason: r.reason, HeldFor: r.heldFor}}
		out.logs = append(out.logs, logLine{v: 1, msg: "Released lock", kv: []any{"token", r.token, "reason", r.reason}})
	}
	return m, out
}

// renewTTL restarts the ttl of the hold named by token: with ttl > 0 as the new ttl,
// with 0 the ttl given at acquire (a hold without ttl stays without). A hold in
// jeopardy gets its ttl restarted and ErrJeopardy; one whose validFor ran out cannot
// be renewed.
func (m machine) renewTTL(in renewTTL, now time.Time) (machine, output) {
	if err := m.checkToken(in.token); err != nil {
		return m, output{err: err}
	}
	valid := m.validFor(now) > 0
	if !valid && !m.mayResume(now) {
		reason := "renew-deadline passed without a successful renew"
		if !m.expires.IsZero() && !now.Before(m.expires) {
			reason = "ttl expired"
		}
		return m, output{err: &StaleTokenError{Token: in.token, Ended: reason}}
	}
	var out output
	ttl := in.ttl
	if ttl == 0 {
		ttl = m.ttl
	}
	if ttl > 0 {
		m.ttl, m.expires = ttl, now.Add(ttl)
		out.ttl = ttl
	}
	if !valid {
		// In jeopardy: the hold is still this client's and may resume, so its ttl
		// restarts; but nothing may rely on it until a renewal of the Lease lands.
		out.err = fmt.Errorf("%w: the ttl was restarted, but the API server has been unavailable since "+
			"renew-deadline passed; do not rely on the hold until it is safe again (validFor > 0)", ErrJeopardy)
	}
	return m, out
}

// ttlPassed is true when the hold's ttl has run out at now.
func (m machine) ttlPassed(now time.Time) bool {
	return m.holding() && !m.expires.IsZero() && !now.Before(m.expires)
}

// merge is the outputs one after the other.
func merge(outs ...output) output {
	var o output
	for _, x := range outs {
		o.endHold = o.endHold || x.endHold
		if x.endReason != "" {
			o.endReason = x.endReason
		}
		o.events = append(o.events, x.events...)
		o.logs = append(o.logs, x.logs...)
		o.outage = o.outage || x.outage
		o.wake = o.wake || x.wake
		if x.err != nil {
			o.err = x.err
		}
	}
	return o
}

// Acquisition: the decisions of idle (or lost) before acquireSent. decideAcquire takes
// what this agent knows of the Lease and says whether to wait (and for whom), to queue,
// to read the Lease once more (an expired hold), or to write, and with which queue.

// acquireView is what an acquisition decides on.
type acquireView struct {
	identity, namespace, name string
	// closed: the agent is shutting down; synced: the Lease was read.
	closed, synced bool
	// promised: how long a lost hold of this Pod may still be relied on.
	promised time.Duration
	// present, rec, queue: the cached Lease.
	present bool
	rec     Record
	queue   []string
	// ours: the record is this process's write (a hold, or an acquisition whose answer
	// never came): it is not waited out.
	ours bool
	// observedAt: when this agent saw the record change; leaseDuration: its holder's
	// (capped) lease-duration.
	observedAt    time.Time
	leaseDuration time.Duration
	// outage: this agent lost the API server and has not read the Lease since.
	outage bool
	// goneHolder held the Lease that was deleted until goneUntil, by this agent's count.
	goneHolder string
	goneUntil  time.Time
	// fair: a mutex's local client (it queues); try: it does not wait.
	fair, try, queueRefused bool
	// lead: how long before the holder's expiry a waiting acquisition reads the Lease
	// (and reads it again at the expiry); 0 for a try, which reads once at the expiry.
	lead time.Duration
	// turn: how long the head of the queue has a free lock to itself.
	turn time.Duration
}

// acquireDecision is what to do: err, or wait (after queueing when enqueue), or write
// (after reading the Lease once more when reread), leaving rest as the queue; passed
// are the queued waiters this write passes over.
type acquireDecision struct {
	err     error
	wait    *HeldError
	enqueue bool
	reread  bool
	rest    []string
	passed  []string
	// retryIn > 0: try again after retryIn, not wait.ValidFor (to read ahead of the
	// holder's expiry). confirmAt, when reread: read the Lease again at this moment
	// (the holder's expiry) before writing.
	retryIn   time.Duration
	confirmAt time.Time
}

// waitFor is how long to wait before the next attempt after d.wait.
func (d acquireDecision) waitFor() time.Duration {
	if d.retryIn > 0 {
		return d.retryIn
	}
	return d.wait.ValidFor
}

// decideAcquire is the decision of one attempt to acquire.
func decideAcquire(v acquireView, now time.Time) acquireDecision {
	switch {
	case v.closed:
		return acquireDecision{err: ErrShutdown}
	case !v.synced:
		return acquireDecision{err: fmt.Errorf("%w: not yet synced with the API server", ErrUnavailable)}
	case v.promised > 0:
		// A hold of this Pod was lost while its client may still rely on it.
		return acquireDecision{wait: &HeldError{Holder: v.identity, ValidFor: v.promised, Lost: true}}
	case !v.present && v.goneUntil.After(now):
		// Deleted while another Pod held it: that Pod may still say held until its
		// hold runs out, so wait it out as if the Lease were there.
		return acquireDecision{wait: &HeldError{Holder: v.goneHolder, ValidFor: v.goneUntil.Sub(now)}}
	case !v.present:
		return acquireDecision{}
	}
	return v.decideOnRecord(now)
}

// decideOnRecord decides an acquisition of a Lease that is there: wait for its holder
// (or for the queue's turn), or write (after reading it once more when its holder's
// hold expired).
func (v acquireView) decideOnRecord(now time.Time) acquireDecision {
	wait, expired := v.holderWait(now)
	d := acquireDecision{enqueue: v.fair && !v.try && wait != nil && !v.queueRefused}
	if v.lead > 0 && wait != nil && wait.ValidFor > v.lead {
		d.retryIn = wait.ValidFor - v.lead
	}
	if v.fair && wait == nil {
		d.rest, wait, d.passed = v.queueTurn(now)
	}
	if wait != nil {
		d.wait, d.rest, d.passed = wait, nil, nil
		d.enqueue = d.enqueue && !slices.Contains(v.queue, v.identity)
		return d
	}
	if v.rec.Transitions == math.MaxInt32 {
		return acquireDecision{err: fmt.Errorf("%w: Lease %s/%s has spec.leaseTransitions %d, the largest a Lease can "+
			"hold, so no acquisition can get a greater fencing token: delete the Lease (kubectl -n %s delete lease %s) "+
			"and reset the highest token your fenced stores remember for it, since tokens restart at 1",
			ErrTokensExhausted, v.namespace, v.name, math.MaxInt32, v.namespace, v.name)}
	}
	d.reread = expired
	if exp := v.observedAt.Add(v.leaseDuration); expired && exp.After(now) {
		d.confirmAt = exp
	}
	return d
}

// holderWait: a record that names another holder is waited out for its lease-duration
// after this agent saw it change, on this agent's clock. expired: that has passed, or a
// waiting acquisition is within lead of it (the record is read before it is taken over,
// jeopardy.go: a waiting acquisition reads lead ahead of the expiry and again at it).
func (v acquireView) holderWait(now time.Time) (wait *HeldError, expired bool) {
	if v.rec.Holder == "" || v.ours {
		return nil, false
	}
	switch left := v.observedAt.Add(v.leaseDuration).Sub(now); {
	case left > v.lead, left > 0 && v.outage:
		return &HeldError{Holder: v.rec.Holder, ValidFor: left}, false
	case left > 0:
		// Read ahead: a blip the silent watch did not show, ending within lead of the
		// expiry, makes this read slow (an outage) rather than the one at the expiry
		// fast while the holder's renewal after the blip is still on its way.
		return nil, true
	case v.outage:
		// This agent lost the API server too: the holder may be alive and unable to
		// renew for the same reason. Wait for the watch to be back.
		return &HeldError{Holder: v.rec.Holder, ValidFor: v.leaseDuration}, false
	}
	return nil, true
}

// queueTurn decides, for a free (or expired) Lease, whether this agent may take it
// now. When not, it returns the error to wait on: a waiter that is not queued waits
// without writing until the head has taken the lock (then it queues behind) or its
// turn has passed, so that its entry does not race the head's acquisition. When it
// may, rest is the queue the acquiring write leaves: the entries up to and including
// this agent's removed, passed those of them that were ahead.
func (v acquireView) queueTurn(now time.Time) (rest []string, wait *HeldError, passed []string) {
	q := v.queue
	ahead := slices.Index(q, v.identity)
	if ahead < 0 {
		ahead = len(q)
	}
	if ahead > 0 && !v.ours {
		free := v.observedAt // released: when this agent saw it free
		if v.rec.Holder != "" {
			free = free.Add(v.leaseDuration) // expired: when it ran out
		}
		if left := free.Add(v.turn).Sub(now); left > 0 || v.outage {
			// While this agent has lost the API server, the head may be taking its
			// turn unseen: it is passed only once the watch is back (jeopardy.go).
			return nil, &HeldError{Holder: q[0], ValidFor: max(left, v.turn), Queued: ahead}, nil
		}
		// The waiters ahead had their turn and did not take it: pass them.
		passed = q[:ahead]
	}
	return q[min(ahead+1, len(q)):], nil, passed
}

// takeoverRead says whether the read before the takeover of an expired hold lets it
// go on: the record read (readRV; present false: none) is still the one judged
// expired, and the read was not slow. A slow read waited for an API server that was
// away, as the holder's renewals may have: restart says that the holder's expiry
// restarts from its answer instead.
func takeoverRead(judgedRV string, present bool, readRV string, took, slow time.Duration) (same, restart bool) {
	same = present && readRV == judgedRV
	if same && took >= slow {
		return false, true
	}
	return same, false
}

// The cache: how what this agent reads of the Lease changes what it knows.

// newerRV says whether a record (or a deletion) at resourceVersion rv is newer than the
// last one seen (last), and the last one after it. One without a resourceVersion is
// taken as it is. Resource versions are compared as integers (etcd's revisions).
func newerRV(last uint64, rv string) (uint64, bool) {
	n := parseRV(rv)
	switch {
	case n == 0:
		return last, true
	case n <= last:
		return last, false
	}
	return n, true
}

// goneLease is what this agent last saw of a Lease that was deleted: whose hold to
// wait out before creating it again, and the token to go on from.
type goneLease struct {
	rv          string
	holder      string
	heldUntil   time.Time
	transitions int32
}

// deleted is what to remember of the deleted record old, which this agent saw change
// at observedAt: a hold it names (not written by this process: wrote) may still be
// relied on until its lease-duration (leaseDuration) after that, and its token must
// not come back.
func (g goneLease) deleted(old *coordinationv1.Lease, wrote bool, observedAt time.Time, leaseDuration time.Duration) goneLease {
	rec := RecordOf(old)
	g.rv, g.holder, g.heldUntil = old.ResourceVersion, "", time.Time{}
	if rec.Holder != "" && !wrote {
		g.holder, g.heldUntil = rec.Holder, observedAt.Add(leaseDuration)
	}
	if rec.Transitions < math.MaxInt32 {
		g.transitions = max(g.transitions, rec.Transitions)
	}
	return g
}

// afterOutage: when this agent reads the Lease again after it lost the API server, the
// deleted record's holder shared the outage: its hold is waited out for
// leaseDuration from now.
func (g goneLease) afterOutage(now time.Time, leaseDuration time.Duration) goneLease {
	if !g.heldUntil.IsZero() {
		g.heldUntil = now.Add(leaseDuration)
	}
	return g
}

// queueOnRelease is the queue a release leaves: q as it is, or, when clients of this
// Pod wait for the lock too (wanting, for a mutex not shutting down), with this agent
// (self) queued behind the others in the same write. ok says it changed.
func queueOnRelease(q []string, self string, wanting bool) ([]string, bool) {
	if !wanting || len(q) == 0 || len(q) >= MaxQueue || slices.Contains(q, self) {
		return q, false
	}
	return append(slices.Clone(q), self), true
}

// leaderRefusal is the answer to a caller asking once for a leader lock that this
// agent (state s) does not hold: not synced or failing to renew, the API server is
// unavailable; otherwise held by s.Holder for up to left.
func leaderRefusal(s State, synced, failing bool, apiErr error, left time.Duration) error {
	switch {
	case !synced:
		return fmt.Errorf("%w: not yet synced with the API server", ErrUnavailable)
	case failing:
		return fmt.Errorf("%w: %v", ErrUnavailable, apiErr)
	}
	return &HeldError{Holder: s.Holder, ValidFor: left}
}
