package lock

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The machine's table: every transition of machine.go, walked without a clock, a
// server or a sleep. Times are offsets from t0; renew-deadline 10s, retry-period 2s,
// grace 30s unless a case says otherwise.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

var testMachineConfig = machineConfig{identity: "me", renewDeadline: 10 * time.Second, retryPeriod: 2 * time.Second,
	grace: 30 * time.Second}

// heldM is a hold with token 5 acquired and last written at t0.
func heldM() machine {
	return machine{cfg: testMachineConfig, phase: phaseHeld, token: 5, heldSince: t0, lastWrite: t0}
}

// jeopardyM is heldM past renew-deadline with its renewal failing, in jeopardy.
func jeopardyM() machine {
	m := heldM()
	m.phase, m.failing, m.lastAttempt, m.retry = phaseJeopardy, true, at(10*time.Second), 2*time.Second
	return m
}

func withGrace(m machine, g time.Duration) machine { m.cfg.grace = g; return m }

func withTTL(m machine, ttl time.Duration, expires time.Time) machine {
	m.ttl, m.expires = ttl, expires
	return m
}

func refusedM(m machine) machine { m.refused = errForbidden; return m }

var (
	errForbidden   = apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "db", errors.New("no"))
	errDown        = apierrors.NewServiceUnavailable("down")
	errConflict409 = apierrors.NewConflict(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "db", errors.New("changed"))
	errNoAnswer    = errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
)

// view is what a case compares: the machine and the output, with times as offsets
// from t0 and errors as their text.
type view struct {
	Phase     string
	Reported  Phase
	Token     int64
	LastWrite time.Duration
	Failing   bool
	Refused   bool
	Retry     time.Duration
	Promised  time.Duration
	Expires   time.Duration
	Ended     string

	Events   []string
	EndHold  string
	Outage   bool
	Wake     bool
	Write    string
	Timeout  time.Duration
	Deadline time.Duration
	TTL      time.Duration
	Err      string
}

func offset(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return t.Sub(t0)
}

func viewOf(m machine, out output, now time.Time) view {
	v := view{
		Phase: m.phase.String(), Reported: m.reported(now), Token: m.token, LastWrite: offset(m.lastWrite),
		Failing: m.failing, Refused: m.refused != nil, Retry: m.retry, Promised: max(0, m.promised(now)),
		Expires: offset(m.expires), Ended: m.ended.reason,
		Outage: out.outage, Wake: out.wake, Timeout: out.writeTimeout, Deadline: out.deadlineIn, TTL: out.ttl,
	}
	for _, ev := range out.events {
		s := string(ev.Type)
		if ev.Cause != "" {
			s += "/" + ev.Cause
		}
		if ev.HandoverFrom != "" {
			s += fmt.Sprintf(" after %s %s", ev.HandoverFrom, ev.Handover)
		}
		v.Events = append(v.Events, s+": "+ev.Reason)
	}
	if out.endHold {
		v.EndHold = out.endReason
	}
	v.Write = map[writeKind]string{writeNone: "", writeRenew: "renew", writeRelease: "release"}[out.write]
	if out.err != nil {
		v.Err = out.err.Error()
	}
	return v
}

// want builds the expected view from the machine the case expects and its output.
type machineCase struct {
	from machine
	in   input
	now  time.Duration
	want view
}

func runMachine(t *testing.T, tests map[string]machineCase) {
	t.Helper()
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			now := at(tc.now)
			m, out := tc.from.step(tc.in, now)
			if diff := cmp.Diff(tc.want, viewOf(m, out, now)); diff != "" {
				t.Errorf("step(%T) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

const (
	lostDeleted   = "lost/deleted: the Lease was deleted"
	notRelied     = "; do not rely on the hold: it resumes with the same token if a renewal lands within 30s"
	deadlineNoRen = "renew-deadline passed without a successful renew"
)

func machineAcquisitionCases() map[string]machineCase {
	idle := machine{cfg: testMachineConfig}
	lost := machine{cfg: testMachineConfig, phase: phaseLost, token: 4, lastWrite: t0, promise: at(3 * time.Second)}
	acquiring := machine{cfg: testMachineConfig, phase: phaseAcquiring}
	return map[string]machineCase{
		"idle, acquiring write sent: acquiring": {from: idle, in: acquireSent{},
			want: view{Phase: "acquiring", Reported: PhaseNotHeld}},
		"lost, acquiring write sent: acquiring, the promise kept": {from: lost, in: acquireSent{}, now: time.Second,
			want: view{Phase: "acquiring", Reported: PhaseNotHeld, Token: 4, Promised: 2 * time.Second}},
		"acquiring, write failed: idle": {from: acquiring, in: acquireFailed{},
			want: view{Phase: "idle", Reported: PhaseNotHeld}},
		"acquiring, write landed: held, acquired with the handover": {from: acquiring, now: time.Second,
			in: acquired{sent: t0, token: 7, handoverFrom: "released", handover: 40 * time.Millisecond},
			want: view{Phase: "held", Reported: PhaseHeld, Token: 7, LastWrite: 0, Wake: true,
				Events: []string{"acquired after released 40ms: "}}},
		// Review case: an acquire whose answer was overtaken by a watch event (the Lease
		// deleted, or written by someone else) never holds.
		"acquiring, write landed but overtaken by a watch event: never held": {from: acquiring,
			in:   acquired{sent: t0, token: 7, overtaken: true},
			want: view{Phase: "idle", Reported: PhaseNotHeld, Err: errConflict.Error()}},
		"held, answered with a ttl: the ttl starts": {from: heldM(), in: answered{ttl: time.Minute}, now: time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Expires: 61 * time.Second, TTL: time.Minute}},
		"held, answered without a ttl: nothing": {from: heldM(), in: answered{}, now: time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5}},
		"held, answered after renew-deadline (agent paused): lost": {from: heldM(), in: answered{ttl: time.Minute},
			now: 10 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true,
				Ended:   "renew-deadline passed before the acquire could be answered",
				EndHold: "renew-deadline passed before the acquire could be answered",
				Events:  []string{"lost/renew_deadline: renew-deadline passed before the acquire could be answered"}}},
	}
}

func machineObservedCases() map[string]machineCase {
	ours := Record{Holder: "me", Transitions: 5, Renewed: at(time.Second)}
	return map[string]machineCase{
		"held, our record (a waiter queued on it): nothing": {from: heldM(), in: observed{present: true, rec: ours},
			now: time.Second, want: view{Phase: "held", Reported: PhaseHeld, Token: 5}},
		// Review case: a lost hold's validFor is honoured before a new hold: the promise
		// is what was left of it.
		"held, Lease deleted: lost, promised for the validFor it had": {from: heldM(), in: observed{},
			now: 4 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Promised: 6 * time.Second,
				Ended: "the Lease was deleted", EndHold: "the Lease was deleted", Events: []string{lostDeleted}}},
		"held, another holder: lost, taken over": {from: heldM(),
			in: observed{present: true, rec: Record{Holder: "other", Transitions: 6}}, now: 4 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Promised: 6 * time.Second,
				Ended: `the Lease was taken over: holder is now "other"`, EndHold: `the Lease was taken over: holder is now "other"`,
				Events: []string{`lost/taken_over: the Lease was taken over: holder is now "other"`}}},
		"held, our identity with another token: lost, rewritten": {from: heldM(),
			in: observed{present: true, rec: Record{Holder: "me", Transitions: 6}}, now: 4 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Promised: 6 * time.Second,
				Ended:   "the Lease was rewritten by someone else: its leaseTransitions no longer matches token 5",
				EndHold: "the Lease was rewritten by someone else: its leaseTransitions no longer matches token 5",
				Events:  []string{"lost/rewritten: the Lease was rewritten by someone else: its leaseTransitions no longer matches token 5"}}},
		"jeopardy, Lease deleted: lost, nothing promised": {from: jeopardyM(), in: observed{}, now: 12 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Retry: 2 * time.Second,
				Ended: "the Lease was deleted", EndHold: "the Lease was deleted", Events: []string{lostDeleted}}},
		"idle, Lease deleted: nothing": {from: machine{cfg: testMachineConfig}, in: observed{},
			want: view{Phase: "idle", Reported: PhaseNotHeld}},
	}
}

func machineRenewDueCases() map[string]machineCase {
	ours := Record{Holder: "me", Transitions: 5}
	return map[string]machineCase{
		"held at renew-deadline/2: renew, timeout the write timeout": {from: heldM(),
			in: renewDue{present: true, rec: ours}, now: 5 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Write: "renew", Timeout: 5 * time.Second,
				Deadline: 5 * time.Second}},
		"held after a refusal near renew-deadline: the answer counts until renew-deadline only": {
			from: refusedM(heldM()), in: renewDue{present: true, rec: ours}, now: 8 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Refused: true, Write: "renew",
				Timeout: 2 * time.Second, Deadline: 2 * time.Second}},
		"jeopardy: renew every retry-period": {from: jeopardyM(), in: renewDue{present: true, rec: ours},
			now: 12 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseJeopardy, Token: 5, Failing: true, Retry: 2 * time.Second,
				Write: "renew", Timeout: 2 * time.Second, Deadline: -2 * time.Second}},
		"held, renew-deadline passed unseen: jeopardy first, then renew": {from: heldM(),
			in: renewDue{present: true, rec: ours, apiErr: errDown}, now: 10 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseJeopardy, Token: 5, Write: "renew", Timeout: 2 * time.Second,
				Wake:   true,
				Events: []string{"jeopardy: renew-deadline passed without a successful renewal (the API server is unavailable: down)" + notRelied}}},
		"held, the cache shows no Lease: lost, deleted": {from: heldM(), in: renewDue{}, now: 5 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Promised: 5 * time.Second,
				Ended: "the Lease was deleted", EndHold: "the Lease was deleted", Events: []string{lostDeleted}}},
		"held, the cache shows another record: lost, rewritten": {from: heldM(),
			in: renewDue{present: true, rec: Record{Holder: "me", Transitions: 4}}, now: 5 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Promised: 5 * time.Second,
				Ended:   "the Lease no longer holds this agent's record",
				EndHold: "the Lease no longer holds this agent's record",
				Events:  []string{"lost/rewritten: the Lease no longer holds this agent's record"}}},
		"idle: nothing": {from: machine{cfg: testMachineConfig}, in: renewDue{present: true, rec: ours},
			want: view{Phase: "idle", Reported: PhaseNotHeld}},
	}
}

func machineRenewResultCases() map[string]machineCase {
	sent := at(5 * time.Second)
	wrapped := func(raw error) error { return fmt.Errorf("renew lease ns/db: %w", raw) }
	return map[string]machineCase{
		"held, renewal landed: valid again from its send": {from: heldM(), in: renewResult{sent: sent},
			now:  5100 * time.Millisecond,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, LastWrite: 5 * time.Second, Wake: true}},
		"jeopardy, renewal landed: held again, same token, safe": {from: jeopardyM(),
			in: renewResult{sent: at(20 * time.Second)}, now: 20500 * time.Millisecond,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, LastWrite: 20 * time.Second, Retry: 2 * time.Second,
				Wake: true, Events: []string{"safe: a renewal landed after 10.5s in jeopardy: nobody held the lock in " +
					"between, the hold goes on with token 5"}}},
		"held, conflict with the record not ours: lost": {from: heldM(),
			in:  renewResult{sent: sent, raw: errConflict409, err: wrapped(errConflict409)},
			now: 5 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Promised: 5 * time.Second,
				Retry: 2 * time.Second, Ended: "renew failed: " + wrapped(errConflict409).Error(),
				EndHold: "renew failed: " + wrapped(errConflict409).Error(),
				Events:  []string{"lost/conflict: renew failed: " + wrapped(errConflict409).Error()}}},
		// Review case: a conflict whose Lease cannot be read again may be our own
		// renewal that landed unseen: it counts as unavailability, not as a loss.
		"held, conflict whose Lease could not be read: unavailability": {from: heldM(),
			in:  renewResult{sent: sent, raw: errConflict409, unread: true, err: wrapped(errConflict409)},
			now: 5 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Failing: true, Retry: 2 * time.Second,
				Outage: true, Wake: true}},
		"held, 503: failing, outage, retry after retry-period": {from: heldM(),
			in: renewResult{sent: sent, raw: errDown, err: wrapped(errDown)}, now: 6 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Failing: true, Retry: 2 * time.Second,
				Outage: true, Wake: true}},
		"held, connection refused at once: retry after a quarter of retry-period": {from: heldM(),
			in: renewResult{sent: sent, raw: errNoAnswer, err: wrapped(errNoAnswer)}, now: 5 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Failing: true, Retry: 500 * time.Millisecond,
				Outage: true, Wake: true}},
		"held, 403: failing, refused (renew-deadline will end it)": {from: heldM(),
			in: renewResult{sent: sent, raw: errForbidden, err: wrapped(errForbidden)}, now: 5 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Failing: true, Refused: true,
				Retry: 2 * time.Second, Wake: true}},
		// Review case: a 403 in jeopardy loses the hold at once (a refusal is no outage).
		"jeopardy, 403: lost at once": {from: jeopardyM(),
			in:  renewResult{sent: at(12 * time.Second), raw: errForbidden, err: wrapped(errForbidden)},
			now: 12 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Retry: 2 * time.Second, Wake: true,
				Ended:   "renew-deadline passed and the API server refused the renewal: " + errForbidden.Error(),
				EndHold: "renew-deadline passed and the API server refused the renewal: " + errForbidden.Error(),
				Events:  []string{"lost/renew_deadline: renew-deadline passed and the API server refused the renewal: " + errForbidden.Error()}}},
		"held, 503 at renew-deadline: jeopardy": {from: heldM(),
			in: renewResult{sent: sent, raw: errDown, err: wrapped(errDown)}, now: 10 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseJeopardy, Token: 5, Failing: true, Retry: 2 * time.Second,
				Outage: true, Wake: true,
				Events: []string{"jeopardy: renew-deadline passed without a successful renewal (the API server is unavailable: down)" + notRelied}}},
		"lost meanwhile: the answer changes nothing": {from: machine{cfg: testMachineConfig, phase: phaseLost, token: 5},
			in: renewResult{sent: sent, raw: errDown, err: wrapped(errDown)}, now: 6 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5}},
	}
}

func machineDeadlineCases() map[string]machineCase {
	return map[string]machineCase{
		"held before renew-deadline: nothing": {from: heldM(), in: deadline{}, now: 9 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5}},
		"held at renew-deadline, unavailable: jeopardy": {from: heldM(), in: deadline{apiErr: errDown},
			now: 10 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseJeopardy, Token: 5, Wake: true,
				Events: []string{"jeopardy: renew-deadline passed without a successful renewal (the API server is unavailable: down)" + notRelied}}},
		"held at renew-deadline with grace 0: lost": {from: withGrace(heldM(), 0), in: deadline{apiErr: errDown},
			now: 10 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Ended: deadlineNoRen,
				EndHold: deadlineNoRen, Events: []string{"lost/renew_deadline: " + deadlineNoRen}}},
		"held at renew-deadline after a refusal: lost": {from: refusedM(heldM()), in: deadline{}, now: 10 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true,
				Ended:   "renew-deadline passed and the API server refused the renewal: " + errForbidden.Error(),
				EndHold: "renew-deadline passed and the API server refused the renewal: " + errForbidden.Error(),
				Events:  []string{"lost/renew_deadline: renew-deadline passed and the API server refused the renewal: " + errForbidden.Error()}}},
		"jeopardy within grace: nothing more": {from: jeopardyM(), in: deadline{}, now: 30 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseJeopardy, Token: 5, Failing: true, Retry: 2 * time.Second}},
		"jeopardy at the end of the grace: lost": {from: jeopardyM(), in: deadline{}, now: 40 * time.Second,
			want: view{Phase: "lost", Reported: PhaseNotHeld, Token: 5, Wake: true, Retry: 2 * time.Second,
				Ended:   "in jeopardy for the whole grace period (30s) without a successful renewal",
				EndHold: "in jeopardy for the whole grace period (30s) without a successful renewal",
				Events:  []string{"lost/grace_expired: in jeopardy for the whole grace period (30s) without a successful renewal"}}},
		"jeopardy after its ttl: not reported in jeopardy": {from: withTTL(jeopardyM(), time.Minute, at(11*time.Second)),
			in: deadline{}, now: 12 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseNotHeld, Token: 5, Failing: true, Retry: 2 * time.Second,
				Expires: 11 * time.Second}},
	}
}

func machineEndCases() map[string]machineCase {
	releasing := heldM()
	releasing.phase = phaseReleasing
	releasing.releasing = endedHold{token: 5, reason: "released", heldFor: 3 * time.Second, hadHold: true}
	shutdown := machine{cfg: testMachineConfig, phase: phaseReleasing, token: 5,
		releasing: endedHold{token: 5, reason: "agent shutting down"}}
	const notCleared = "; the Lease could not be cleared, so other Pods can take it only after lease-duration"
	return map[string]machineCase{
		"held, released, the Lease names us: releasing, clear it": {from: heldM(),
			in: end{reason: "released", namesUs: true}, now: 3 * time.Second,
			want: view{Phase: "releasing", Reported: PhaseNotHeld, Token: 5, Ended: "released", EndHold: "released",
				Wake: true, Write: "release"}},
		"held, released, the Lease names someone else: idle, released": {from: heldM(),
			in: end{reason: "released"}, now: 3 * time.Second,
			want: view{Phase: "idle", Reported: PhaseNotHeld, Token: 5, Ended: "released", EndHold: "released",
				Wake: true, Events: []string{"released: released"}}},
		"jeopardy, ttl expired: releasing": {from: jeopardyM(), in: end{reason: "ttl expired", namesUs: true},
			now: 12 * time.Second,
			want: view{Phase: "releasing", Reported: PhaseNotHeld, Token: 5, Retry: 2 * time.Second,
				Ended: "ttl expired", EndHold: "ttl expired", Wake: true, Write: "release"}},
		"no hold but our write on the Lease (shutdown): clear it, no event": {
			from: machine{cfg: testMachineConfig, phase: phaseLost, token: 5}, in: end{reason: "agent shutting down", namesUs: true},
			want: view{Phase: "releasing", Reported: PhaseNotHeld, Token: 5, Wake: true, Write: "release"}},
		"releasing, cleared: idle, released": {from: releasing, in: releaseResult{}, now: 3 * time.Second,
			want: view{Phase: "idle", Reported: PhaseNotHeld, Token: 5, Wake: true, Events: []string{"released: released"}}},
		"releasing, conflict: idle, released, no error (someone else changed it)": {from: releasing,
			in: releaseResult{raw: errConflict409, err: errConflict409}, now: 3 * time.Second,
			want: view{Phase: "idle", Reported: PhaseNotHeld, Token: 5, Wake: true, Events: []string{"released: released"}}},
		"releasing, 503: idle, released, the error told": {from: releasing,
			in: releaseResult{raw: errDown, err: errDown}, now: 3 * time.Second,
			want: view{Phase: "idle", Reported: PhaseNotHeld, Token: 5, Wake: true, Err: "down",
				Events: []string{"released: released" + notCleared}}},
		"releasing without a hold (shutdown), cleared: idle, no event": {from: shutdown, in: releaseResult{},
			want: view{Phase: "idle", Reported: PhaseNotHeld, Token: 5, Wake: true}},
	}
}

func machineRenewTTLCases() map[string]machineCase {
	ended := machine{cfg: testMachineConfig, token: 5, ended: endedHold{token: 5, reason: "released"}}
	return map[string]machineCase{
		"held, renew with 0: the ttl given at acquire restarts": {from: withTTL(heldM(), time.Minute, at(time.Minute)),
			in: renewTTL{token: 5}, now: 2 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Expires: 62 * time.Second, TTL: time.Minute}},
		"held, renew with a new ttl": {from: heldM(), in: renewTTL{token: 5, ttl: 3 * time.Second}, now: 2 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5, Expires: 5 * time.Second, TTL: 3 * time.Second}},
		"held without a ttl, renew with 0: stays without": {from: heldM(), in: renewTTL{token: 5}, now: 2 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5}},
		// Review case: a late call with a stale token changes nothing.
		"held, stale token: nothing changes": {from: heldM(), in: renewTTL{token: 4, ttl: time.Minute},
			now: 2 * time.Second,
			want: view{Phase: "held", Reported: PhaseHeld, Token: 5,
				Err: "token 4 does not name the current hold; the current hold has token 5"}},
		"ended, its token: stale, says how it ended": {from: ended, in: renewTTL{token: 5},
			want: view{Phase: "idle", Reported: PhaseNotHeld, Token: 5, Ended: "released",
				Err: "the hold with token 5 has already ended (released); this Pod holds no hold now"}},
		"jeopardy: the ttl restarts, ErrJeopardy": {from: withTTL(jeopardyM(), time.Minute, at(time.Minute)),
			in: renewTTL{token: 5}, now: 12 * time.Second,
			want: view{Phase: "jeopardy", Reported: PhaseJeopardy, Token: 5, Failing: true, Retry: 2 * time.Second,
				Expires: 72 * time.Second, TTL: time.Minute,
				Err: ErrJeopardy.Error() + ": the ttl was restarted, but the API server has been unavailable since " +
					"renew-deadline passed; do not rely on the hold until it is safe again (validFor > 0)"}},
		"held past renew-deadline without grace: stale": {from: withGrace(heldM(), 0), in: renewTTL{token: 5},
			now: 10 * time.Second,
			want: view{Phase: "held", Reported: PhaseNotHeld, Token: 5,
				Err: "the hold with token 5 has already ended (" + deadlineNoRen + "); this Pod holds no hold now"}},
		"held past its ttl: stale, ttl expired": {from: withTTL(heldM(), time.Second, at(time.Second)),
			in: renewTTL{token: 5}, now: 2 * time.Second,
			want: view{Phase: "held", Reported: PhaseNotHeld, Token: 5, Expires: time.Second,
				Err: "the hold with token 5 has already ended (ttl expired); this Pod holds no hold now"}},
	}
}

// TestMachineQueries pins the decisions the driver asks the machine without a step.
func TestMachineQueries(t *testing.T) {
	t.Parallel()
	failing := heldM()
	failing.failing, failing.lastAttempt, failing.retry = true, at(6*time.Second), 500*time.Millisecond
	type q struct {
		Next   time.Duration
		Timer  bool
		Ours   bool
		TTL    bool
		Resume bool
	}
	tests := map[string]struct {
		m    machine
		rec  Record
		now  time.Duration
		want q
	}{
		"healthy: renew at renew-deadline/2": {m: heldM(), rec: Record{Holder: "me", Transitions: 5},
			want: q{Next: 5 * time.Second, Timer: true, Ours: true, Resume: true}},
		// Review case: our own renewal that landed unseen (a newer renewTime, same
		// token) is still ours: the renewal goes on on that copy.
		"our renewal landed unseen: ours": {m: heldM(), rec: Record{Holder: "me", Transitions: 5, Renewed: at(7 * time.Second)},
			want: q{Next: 5 * time.Second, Timer: true, Ours: true, Resume: true}},
		"failing: renew at the retry": {m: failing, rec: Record{Holder: "me", Transitions: 6},
			want: q{Next: 6500 * time.Millisecond, Timer: true, Resume: true}},
		"jeopardy: wake at the end of the grace at the latest": {m: jeopardyM(), now: 12 * time.Second,
			want: q{Next: 12 * time.Second, Timer: true, Resume: true}},
		"past the ttl": {m: withTTL(heldM(), time.Second, at(time.Second)), now: time.Second,
			want: q{Next: 5 * time.Second, Timer: true, TTL: true}},
		"idle: no renewal": {m: machine{cfg: testMachineConfig}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			next, timer := tc.m.nextRenew()
			got := q{Next: offset(next), Timer: timer, Ours: tc.m.ours(true, tc.rec), TTL: tc.m.ttlPassed(at(tc.now)),
				Resume: tc.m.mayResume(at(tc.now))}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestMachineCheckToken: a release names its hold by token; a stale one changes nothing
// and says what is current (review case: a stale token's release changes nothing).
func TestMachineCheckToken(t *testing.T) {
	t.Parallel()
	ended := heldM()
	ended.phase, ended.ended = phaseIdle, endedHold{token: 5, reason: "ttl expired"}
	tests := map[string]struct {
		m     machine
		token int64
		want  string
	}{
		"the current hold":           {m: heldM(), token: 5},
		"the current hold, jeopardy": {m: jeopardyM(), token: 5},
		"an older token":             {m: heldM(), token: 4, want: "token 4 does not name the current hold; the current hold has token 5"},
		"an ended hold":              {m: ended, token: 5, want: "the hold with token 5 has already ended (ttl expired); this Pod holds no hold now"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			before := tc.m
			got := ""
			if err := tc.m.checkToken(tc.token); err != nil {
				got = err.Error()
				if !errors.Is(err, ErrStaleToken) {
					t.Errorf("error %v is not ErrStaleToken", err)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("checkToken (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(viewOf(before, output{}, t0), viewOf(tc.m, output{}, t0)); diff != "" {
				t.Errorf("checkToken changed the machine (-before +after):\n%s", diff)
			}
		})
	}
}

// TestClassify: how the machine reads a write's answer.
func TestClassify(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		raw    error
		unread bool
		want   writeResult
	}{
		"landed":              {want: writeOK},
		"409, read again":     {raw: errConflict409, want: writeConflict},
		"409, could not read": {raw: errConflict409, unread: true, want: writeUnread},
		"404":                 {raw: apierrors.NewNotFound(schema.GroupResource{Resource: "leases"}, "db"), want: writeConflict},
		"503":                 {raw: errDown, want: writeUnavailable},
		"429":                 {raw: apierrors.NewTooManyRequests("slow down", 1), want: writeUnavailable},
		"timeout":             {raw: apierrors.NewTimeoutError("slow", 1), want: writeUnavailable},
		"no answer":           {raw: errNoAnswer, want: writeUnavailable},
		"403":                 {raw: errForbidden, want: writeRefused},
		"400":                 {raw: apierrors.NewBadRequest("no"), want: writeRefused},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := classify(tc.raw, tc.unread); got != tc.want {
				t.Errorf("classify(%v, %v) = %d, want %d", tc.raw, tc.unread, got, tc.want)
			}
		})
	}
}

func TestMachineAcquisition(t *testing.T) { t.Parallel(); runMachine(t, machineAcquisitionCases()) }

func TestMachineObserved(t *testing.T) { t.Parallel(); runMachine(t, machineObservedCases()) }

func TestMachineRenewDue(t *testing.T) { t.Parallel(); runMachine(t, machineRenewDueCases()) }

func TestMachineRenewResult(t *testing.T) { t.Parallel(); runMachine(t, machineRenewResultCases()) }

func TestMachineDeadline(t *testing.T) { t.Parallel(); runMachine(t, machineDeadlineCases()) }

func TestMachineEnd(t *testing.T) { t.Parallel(); runMachine(t, machineEndCases()) }

func TestMachineRenewTTL(t *testing.T) { t.Parallel(); runMachine(t, machineRenewTTLCases()) }

// allMachineCases are the cases of every table above.
func allMachineCases() []map[string]machineCase {
	return []map[string]machineCase{machineAcquisitionCases(), machineObservedCases(), machineRenewDueCases(),
		machineRenewResultCases(), machineDeadlineCases(), machineEndCases(), machineRenewTTLCases()}
}

// TestMachineTablesCoverEveryInput: every input type of machine.go (every type with an
// isInput method) is walked by a case above, so that a new input comes with its table.
func TestMachineTablesCoverEveryInput(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "machine.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "isInput" && fn.Recv != nil {
			want["lock."+recvName(fn.Recv.List[0].Type)] = true
		}
	}
	got := map[string]bool{}
	for _, cases := range allMachineCases() {
		for _, c := range cases {
			got[fmt.Sprintf("%T", c.in)] = true
		}
	}
	if len(want) == 0 {
		t.Fatal("found no input types in machine.go")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("input types (-in machine.go +walked by the tables):\n%s", diff)
	}
}
