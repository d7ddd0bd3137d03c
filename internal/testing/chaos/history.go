package chaos

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// Op names what a Record is.
type Op string

// The operations of a history.
const (
	// Calls of a client loop to its agent, with the agent's answer.
	OpAcquire Op = "acquire" // POST /v1/locks/{name}/acquire
	OpGet     Op = "get"     // GET /v1/locks/{name}
	OpRelease Op = "release" // POST /v1/locks/{name}/release?token= with the client's own token
	OpRenew   Op = "renew"   // POST /v1/locks/{name}/renew?token= with the client's own token
	// OpStaleRelease and OpStaleRenew name, on purpose, a token that is not the current
	// hold's: the answer must be an error and nothing may change.
	OpStaleRelease Op = "stale-release"
	OpStaleRenew   Op = "stale-renew"
	// OpWrite is a client's write to the fenced store, as the client saw it.
	OpWrite Op = "write"
	// OpStore is the fenced store's decision on one write, as the store made it.
	OpStore Op = "store"
	// OpFault is one fault: Send when it began, Recv when it was healed or done.
	OpFault Op = "fault"
	// OpExit is a process of the run that ended; Expected says whether the harness
	// ended it (a kill fault, the end of the run).
	OpExit Op = "exit"
	// OpPanic is a log line of a process that says it panicked or hit a fatal error.
	OpPanic Op = "panic"
	// OpSettle marks the end of the faults: from here on, everything was healed and the
	// locks must change hands again (liveness).
	OpSettle Op = "settle"
	// OpEnd marks the end of the run, before the processes are stopped.
	OpEnd Op = "end"
)

// FaultKind names a kind of fault.
type FaultKind string

// The faults the injector knows.
const (
	// FaultKill: SIGKILL of an agent (the holder of the mutex when there is one), which
	// then starts again as a new Pod (new name and UID, new client loops too) or, as a
	// restarted container, with the same identity while its client loops live on.
	FaultKill FaultKind = "kill"
	// FaultStop: SIGSTOP of an agent and its client loops for longer than lease-duration,
	// then SIGCONT.
	FaultStop FaultKind = "stop"
	// FaultPartition: the agent's proxy to the API server black-holes traffic, sockets
	// open, for longer than renew-deadline, then forwards again.
	FaultPartition FaultKind = "partition"
	// FaultBlip: the whole control plane unreachable for every agent at once (every
	// agent's proxy black-holes traffic, sockets open) for longer than renew-deadline
	// but shorter than lease-duration, then every proxy forwards again.
	FaultBlip FaultKind = "blip"
	// FaultBlipLong: the same for longer than lease-duration, but within the agents'
	// grace period.
	FaultBlipLong FaultKind = "blip-long"
	// FaultAPIRestart: kube-apiserver stops and starts again on the same port (etcd
	// stays).
	FaultAPIRestart FaultKind = "apiserver-restart"
	// FaultRewrite: a third party rewrites a Lease: a foreign holderIdentity with
	// leaseTransitions+1, as another client-go elector taking it would.
	FaultRewrite FaultKind = "lease-rewrite"
	// FaultDelete: a third party deletes a Lease (the mutex's or the leader lock's);
	// the injector then waits until an agent has created it again.
	FaultDelete FaultKind = "lease-delete"
	// FaultStaleRelease: the injector calls release on agents with tokens that are not
	// the current hold's.
	FaultStaleRelease FaultKind = "stale-release"
)

// FaultKinds lists every kind of fault, in the order reports show them.
var FaultKinds = []FaultKind{FaultKill, FaultStop, FaultPartition, FaultBlip, FaultBlipLong, FaultAPIRestart, FaultRewrite, FaultDelete, FaultStaleRelease}

// TakesAPIServer says whether a fault takes the API server away from agents holding
// locks (all of them or one): for those the harness records whether the holds named
// at its start were kept (Record.Holds).
func (k FaultKind) TakesAPIServer() bool {
	return k == FaultBlip || k == FaultBlipLong || k == FaultAPIRestart || k == FaultPartition
}

// HoldOutcome is what became of a hold named by a Lease when a fault began, as the
// Lease showed it afterwards.
type HoldOutcome string

// The outcomes the harness records (HoldFate); the checker turns them into kept,
// released and lost (HoldCount).
const (
	// HoldKept: the holder renewed the Lease with the same token after the fault had
	// begun (a renewal sent after its start landed) before anyone else wrote a new
	// holder or token into it: the hold rode out the fault.
	HoldKept HoldOutcome = "kept"
	// HoldCleared: the Lease was first cleared by its holder (a release, the end of a
	// ttl or of a connection hold): the hold ended by its holder's own choice.
	HoldCleared HoldOutcome = "cleared"
	// HoldChanged: the Lease first named another holder or token (or was deleted).
	HoldChanged HoldOutcome = "changed"
	// HoldUndecided: neither within retry-period + 1 s after the fault was healed.
	HoldUndecided HoldOutcome = "undecided"
	// HoldFree: the Lease named no holder when the fault began.
	HoldFree HoldOutcome = "free"
	// HoldGone: the Lease named a holder that was not running when the fault began (a
	// Pod killed by an earlier fault, a third party's rewrite, or a restarted
	// container's previous incarnation, which renewed it last): no hold to keep.
	HoldGone HoldOutcome = "gone"
)

// HoldFate is what became of the hold of one lock across a fault that took the API
// server away: the Lease's holder and token (leaseTransitions) read with the admin
// client just before the fault, then followed (read every 20 ms) until a version of the
// Lease decided the outcome or retry-period + 1 s passed after the fault was healed.
// Two writes within one read interval show as the second: a renewal then a release
// then another holder within 20 ms would read as changed (the checker looks for the
// holder's own release then, see Check).
type HoldFate struct {
	Lock    string      `json:"lock"`
	Holder  string      `json:"holder,omitempty"`
	Token   int64       `json:"token,omitempty"`
	Outcome HoldOutcome `json:"outcome"`
	// AfterHolder and AfterToken are the Lease's holder and token in the version that
	// decided the outcome (or the last one read).
	AfterHolder string `json:"afterHolder,omitempty"`
	AfterToken  int64  `json:"afterToken,omitempty"`
	// Decided is when the deciding version was read (the history's clock); 0 when
	// undecided.
	Decided int64 `json:"decided,omitempty"`
}

// Record is one line of a history: a request and its answer, a fault, a store decision.
// Times are nanoseconds on CLOCK_MONOTONIC (Now), shared by every process of the run.
type Record struct {
	// Proc is who recorded it: a client loop ("a0c1-r0"), "store", "faults", "harness".
	Proc string `json:"proc"`
	// Seq orders the records of one Proc (the store: the order of its decisions).
	Seq  int64  `json:"seq"`
	Op   Op     `json:"op"`
	Lock string `json:"lock,omitempty"`
	// Send is when the request was sent (the fault began); Recv when the answer was
	// read completely (the fault ended).
	Send int64 `json:"send"`
	Recv int64 `json:"recv"`

	// Status is the HTTP status of the answer; 0 when there was none (Err says why).
	Status int    `json:"status,omitempty"`
	Err    string `json:"err,omitempty"`
	// Reason is the machine-readable reason of an error answer (TokenRequired,
	// StaleToken, ...).
	Reason string `json:"reason,omitempty"`

	// The lock state in the answer (acquire, get, renew, release).
	Held     bool   `json:"held,omitempty"`
	Holder   string `json:"holder,omitempty"`
	Token    int64  `json:"token,omitempty"`
	ValidFor int64  `json:"validFor,omitempty"` // nanoseconds
	// State is the answer's state field: held, not-held, or jeopardy (this agent's
	// hold is past renew-deadline because the API server was unavailable, and may
	// resume with the same token).
	State string `json:"state,omitempty"`

	// ReqToken is the token the request named (release, renew, writes).
	ReqToken int64 `json:"reqToken,omitempty"`
	// Sent marks a release or renew recorded as the client was about to send it (Send
	// only, no answer): the answer's record follows unless the client was killed first.
	Sent bool `json:"sent,omitempty"`
	// Own is, for a client's GET of the mutex or semaphore it holds, the token of its
	// own hold: an answer that shows another token (another client of the same agent
	// holds the lock by now) promises this client nothing.
	Own int64 `json:"own,omitempty"`
	// Conn: an acquire with ?hold=connection, or the release that closed its connection.
	Conn bool `json:"conn,omitempty"`
	// Wait and TTL of an acquire or renew, nanoseconds.
	Wait int64 `json:"wait,omitempty"`
	TTL  int64 `json:"ttl,omitempty"`

	// Agent is the identity (pod_uid) of the agent a client talked to, as far as the
	// client knows it: the holder it was told, else the agent it was started with.
	Agent string `json:"agent,omitempty"`

	// Writes: Late is set when the client wrote knowing that its hold had ended by its
	// own clock (to test the fence); Accepted is the store's answer.
	Late     bool `json:"late,omitempty"`
	Accepted bool `json:"accepted,omitempty"`
	// Highest is the highest token the store had accepted for the lock before it
	// decided on this write.
	Highest int64 `json:"highest,omitempty"`

	// Faults: the kind and whom it hit. For OpStore, Target is the client loop that
	// wrote; for OpExit and OpPanic, the process.
	Fault  FaultKind `json:"fault,omitempty"`
	Target string    `json:"target,omitempty"`
	// Displaced is the holder a lease-rewrite replaced, DisplacedToken its token.
	Displaced      string `json:"displaced,omitempty"`
	DisplacedToken int64  `json:"displacedToken,omitempty"`

	// Holds: for a fault that took the API server away (TakesAPIServer), what became
	// of the holds of the mutex and the leader lock named when it began.
	Holds []HoldFate `json:"holds,omitempty"`

	// Expected: an exit the harness caused.
	Expected bool   `json:"expected,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

// Log appends records to a JSON-lines file, one write per line, so a process killed
// at any moment leaves only whole lines behind (a torn last line is skipped on read).
// It is safe for concurrent use. With a nil file it only keeps the records in memory.
type Log struct {
	proc string
	mu   sync.Mutex
	f    *os.File
	seq  int64
	mem  []Record
	keep bool
}

// OpenLog creates (truncates) path for the records of proc.
func OpenLog(path, proc string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &Log{proc: proc, f: f}, nil
}

// NewMemLog returns a log that keeps the records of proc in memory (and in path too,
// when path is not empty, for reading after a failed run).
func NewMemLog(path, proc string) (*Log, error) {
	l := &Log{proc: proc, keep: true}
	if path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		l.f = f
	}
	return l, nil
}

// Add stamps r with the log's proc and the next sequence number and appends it.
func (l *Log) Add(r Record) Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	r.Proc, r.Seq = l.proc, l.seq
	if l.keep {
		l.mem = append(l.mem, r)
	}
	if l.f != nil {
		b, _ := json.Marshal(r)
		_, _ = l.f.Write(append(b, '\n'))
	}
	return r
}

// Records returns a copy of the records kept in memory.
func (l *Log) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.mem...)
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// ReadLog reads a JSON-lines history file. A line that does not parse (the torn last
// line of a killed process) is skipped; any other bad line is an error.
func ReadLog(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Record
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	lines := bytes.Count(b, []byte{'\n'})
	n := 0
	for sc.Scan() {
		n++
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			if n > lines { // the last line, without its newline: torn by a kill
				continue
			}
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// ReadDir reads every *.jsonl file of dir.
func ReadDir(dir string) ([]Record, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, f := range files {
		rs, err := ReadLog(f)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// Merge sorts records onto one time line: by send time, then by receive time, then
// by proc and sequence, so the order is the same on every read.
func Merge(recs []Record) []Record {
	out := append([]Record(nil), recs...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Send != b.Send {
			return a.Send < b.Send
		}
		if a.Recv != b.Recv {
			return a.Recv < b.Recv
		}
		if a.Proc != b.Proc {
			return a.Proc < b.Proc
		}
		return a.Seq < b.Seq
	})
	return out
}
