// Package lock is the Lease lock engine of the Leasehold agent: one state machine per
// declared lock, each backed by one coordination.k8s.io/v1 Lease in the Pod's namespace,
// written in the same record shape as client-go's resourcelock.LeaseLock.
//
// What it owns: the Lease records of the declared locks (create, conditional update),
// the watch that feeds its cache of those Leases, the renew loop, the local queue of
// clients of the same Pod that want the same lock, and the fencing token.
//
// What it guarantees:
//   - A lock is reported held (State.Held) only while the last successful write of this
//     agent, timed from the moment it was sent on the agent's monotonic clock, is younger
//     than RenewDeadline, and only until the hold's ttl. State.ValidFor says how much of
//     that window is left. Another participant that follows client-go's rules only takes
//     the Lease LeaseDuration after it observed our last write, and LeaseDuration >
//     RenewDeadline.
//   - Held is set only when the cached record is this agent's own write (a waiter's
//     entry in the queue may have been added to it): an acquire whose answer was
//     overtaken by a watch event (the Lease deleted, or written by someone else) never
//     holds, and a cache that shows no Lease or another record while held ends the hold.
//   - A hold whose renew-deadline passes while the API server is unavailable (no
//     answer, a timeout, a 5xx, a 429) is in jeopardy (PhaseJeopardy, jeopardy.go): not
//     held, validFor 0, but kept: the same conditional renewal goes on every
//     retry-period, and one that lands within Config.Grace resumes the hold with the
//     same token (nobody wrote the Lease since this agent's last write, so nobody else
//     held it). A refusal (403, another 4xx) among the failures, a conflict, another
//     holder, a deletion, the ttl or the grace running out end it as lost. Nothing is
//     promised past renew-deadline without a successful write.
//   - A waiter that lost the API server (a watch or a request got no answer) takes over
//     no hold it judged expired until its watch is back, and restarts the holder's
//     expiry then; before it takes an expired hold over it reads the Lease (a waiting
//     acquisition retry-period ahead of the expiry and again at it).
//   - Every write is conditional on the resourceVersion it was based on. A Lease found
//     deleted ends the hold at once. A conflict (409) makes the agent read the Lease
//     again: a renew or release goes on on the current copy only when the record is
//     still this hold's (a waiter queued on it, or this agent's own renewal that landed
//     unseen), and the hold ends otherwise; a conflict whose Lease cannot be read counts
//     as unavailability. A 403, a timeout or any other failure counts as "not written".
//   - Release and Renew act only on the hold their fencing token names: a late call of a
//     client whose hold already ended changes nothing (StaleTokenError). Every end of a
//     hold (release, ttl, loss, shutdown) is an event, even when the clearing write fails.
//   - A hold that is lost (the Lease deleted or rewritten by someone else) was promised
//     to its client for its validFor: this agent gives no new hold of the lock before
//     that has run out, so clients of one Pod never overlap either.
//   - Shutdown wakes every waiter with ErrShutdown.
//   - Every acquisition writes spec.leaseTransitions = previous + 1 and reports it as the
//     fencing token, so tokens are strictly increasing per Lease across agents and
//     client-go leader electors.
//   - A lock held by someone else is judged expired like client-go judges it:
//     leaseDurationSeconds of the record after this agent observed the record change, on
//     this agent's clock, never from the remote renewTime.
//   - Waiters are woken by the watch (and by a timer for expiry), never by polling.
//     The watch reads the Lease's current state itself (a watch-list: one request
//     instead of a List and a Watch), at start and whenever it must start over, as
//     after kube-apiserver restarts; an API server without watch-list gets a List,
//     then a Watch (loops.go).
//   - Waiters of a mutex from different Pods are served in the order their entries
//     landed in the Lease's queue, and clients of one Pod in arrival order (queue.go).
//     One writer per handover: the head of the queue.
//
// What it does NOT guarantee:
//   - Safety across clocks that run at very different rates: like client-go, it assumes
//     the rate of every participant's monotonic clock is about the same.
//   - Tokens survive every deletion of the Lease: an agent that saw the deleted record
//     waits out the hold it named and creates the Lease with the next token, but an
//     agent that never saw it starts again at 1. Downstream stores that fence on the
//     token must not have the Lease deleted.
//   - Fairness for semaphore slots and leader locks: whoever's conditional update lands
//     first wins. Nor is the queue kept by client-go electors sharing a mutex's Lease:
//     they take a free Lease without looking at it. A waiter that cannot take its turn
//     (stopped, partitioned) costs the waiters behind it one retry-period.
//   - Resource versions are compared as integers to drop stale watch events; this holds
//     for etcd-backed API servers.
//
// # Design: one machine, loops that drive it
//
// A hold's phase and every transition of it live in machine.go: machine.step takes the
// phase (with what the hold needs to know: token, last write, ttl, refusal), one input
// (a call, a watch event, a write's result, a timer) and the time, and returns the
// next machine and what to do (the events to emit, the local hold to end, the write to
// send, the ttl timer to start). decideAcquire (same file) decides an acquisition from
// the cached Lease: wait (and for whom), queue, read once more, or write. Neither does
// I/O, starts a goroutine or reads a clock. lock.go (calls), loops.go (renew and watch
// loops, timers) and jeopardy.go (reads) talk to the API server and only drive the
// machine (Lock.stepLocked); record.go is the only reader and writer of Lease fields.
//
//	           acquireSent              acquired
//	idle, lost -------------> acquiring ------------> held
//	 ^                          |                      |  ^
//	 | acquireFailed, overtaken |  renew-deadline      |  | renewResult ok
//	 +--------------------------+  passed, the API     |  | (event safe)
//	 |                             server unavailable  v  |
//	 |                                               jeopardy
//	 |                                                  |
//	 |  releaseResult          end: release, ttl,       |
//	 +--------------- releasing <-- shutdown, closed ---+  (from held or jeopardy)
//	                                                    |
//	                        lost <----------------------+  (from held or jeopardy)
//	    the Lease deleted or rewritten, a conflict, a refusal at renew-deadline,
//	    the grace over, an acquire answered after renew-deadline
//
// State.Phase is the machine's projection on the clock (machine.reported): held while
// validFor > 0, jeopardy while it may resume, not-held otherwise.
//
// # Kinds: one interface
//
// Every declared lock is a Locker (kind.go): a mutex and a leader lock are one Lock
// each, a semaphore is N slot Locks (semaphore.go) that fan their changes into one
// channel. The Manager keeps name → Locker and never asks which kind it holds; what
// differs by kind is the kind's own answer (NoToken: what a call without a token gets;
// Tie: what a connection-held hold follows). The lock's Mode is reported, never
// branched on outside the kind.
package lock
