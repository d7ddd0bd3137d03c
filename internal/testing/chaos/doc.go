// Package chaos is Leasehold's seeded, randomized fault-injection suite: it runs lock
// agents and their clients as separate processes against a real kube-apiserver and
// etcd (envtest), injects faults at random times drawn from a seed, records every
// request and answer with its send and receive times, and checks the history.
//
// What it owns:
//   - The harness (Harness): three or more leasehold-agent processes contending for one
//     mutex and one leader lock, each reaching the API server through its own loopback
//     proxy (testenv.Proxy), each with one or more client loops in processes of their
//     own (the test binary re-executed, see RunClientFromEnv), so that SIGSTOP freezes
//     "the holder and its client" together. The agents run with a grace period
//     (Config.Grace, --grace): a hold whose renew-deadline passes while the API server
//     is unavailable goes into jeopardy and may resume with the same token.
//   - The client loop (RunClient): acquire the mutex with a wait and often a ttl (now
//     and then with ?hold=connection, ended by closing the connection), check
//     with GET that it holds, write to the fenced store with its token only while its
//     own clock says the hold is valid (the answer's send time + validFor; most holds
//     are 1-3 writes, one in four 4-12), asking again when that runs out; when the
//     answer says its hold is in jeopardy, it stops writing and, four times in five,
//     waits for it to be held again with the same token and writes on (as `leasehold
//     run` freezes its command until "safe"), else gives it up at once; sometimes
//     renew, call release and renew with a stale token on purpose, or sleep past its
//     ttl; once its hold is over by its own clock, one more write with the old token
//     (the fence must stop it once a newer holder wrote); release with its token. Beside
//     that it asks about the leader lock every 100-400 ms, and a second loop does the
//     same on a semaphore of two slots (Config.Semaphore), whose records name the
//     slot's Lease (from the token), so that each slot is checked like the mutex.
//   - The fenced store (Store): accepts a write only if its token is at least the
//     highest it has accepted for the lock, and records each decision.
//   - The faults (Schedule, Harness.Run), one at a time, at seeded random times: SIGKILL
//     of the mutex's holder agent, which comes back as a new Pod (new name, UID and
//     client loops) or as a restarted container (same identity, its clients live on);
//     SIGSTOP of the holder agent and its clients for longer than lease-duration; a
//     partition of one agent from the API server (its proxy black-holes traffic with the
//     sockets open) for longer than renew-deadline; a blip, every agent's proxy frozen
//     at once (the whole control plane unreachable) for longer than renew-deadline but
//     shorter than lease-duration; a blip-long, the same for longer than lease-duration
//     (but within the grace period); a restart of kube-apiserver on the same port (etcd stays; kube-apiserver, with watches open, does not exit on SIGTERM
//     within 5 s and is then killed); a third party rewriting a Lease to a foreign
//     holder with leaseTransitions+1; a third party deleting a Lease (the harness then
//     waits for an agent to create it again, so that no agent starts without having
//     seen the deleted record); release calls with stale tokens. The first nine faults
//     of every schedule are one of each kind, and a run lasts until they are done.
//   - The fate of holds across the faults that take the API server away (partition,
//     blip, blip-long, apiserver-restart; HoldFate): the mutex's and the leader lock's
//     Leases are read with the admin client just before the fault and then every 20 ms
//     until each hold named (by a running agent) is decided (renewed with the same token after the fault
//     began: kept; cleared by its holder or changed hands) or retry-period + 1 s after
//     the fault was healed. The checker counts them per fault as kept, released (by its
//     own holder) or lost; a lost hold is no violation (a Pod cut off alone for longer
//     than lease-duration is rightly replaced), an overlap is.
//   - The history (Record, Log): JSON lines, one file per process, with times on
//     CLOCK_MONOTONIC (Now), the one clock every process of the machine shares
//     (time.Now's monotonic reading counts from a point that differs per process).
//   - The checker (Check), pure, and the report (Summary, WriteReport: RELIABILITY.md).
//
// What it checks (Check; each failure names the property, see the Prop constants):
//   - Mutual exclusion, for the mutex and the leader lock separately. An answer that
//     says held with validFor V, sent at s and received at r, promises the hold over
//     [r, s+V), ended early by the same client's next release or renew of that token (its
//     send time: a renew may shorten the ttl, and its answer promises anew). A client
//     that checks its own hold and is shown another client's hold of the same agent
//     (Record.Own) is promised nothing by that answer.
//     No two promises of different holds may overlap. A mutex's hold is (agent identity,
//     token), since two clients of one agent exclude each other too; a leader lock's is
//     the agent identity (the whole Pod leads, across its terms). A third party's
//     rewrite promises its foreign holder renew-deadline from the write, as a client-go
//     elector with the agents' timings would rely on, and is not counted against the
//     holder it displaced (that overlap is the third party's doing). The rule: an
//     overlap between two agents' holds is never excused, whatever a third party did
//     to the Lease (a rewrite, a deletion); only the third party's own hold may overlap
//     the one it displaced.
//   - Fencing tokens grow: a token names one holder; an answer received before another
//     was sent never shows a greater token; an acquisition's token is greater than every
//     token shown before it was asked for. A deletion is no exception.
//   - The store's fence: it never accepted a lower token after a higher one and rejected
//     every write whose token was below the highest accepted; and it never rejected a
//     write that reached it within the writer's promised hold (a later hold would have
//     written during it).
//   - Calls with a stale token answer 409 StaleToken; that they change nothing shows as
//     the absence of overlaps, since the client keeps relying on its hold.
//   - No crash: a process that exits without the harness ending it, or that does not
//     exit 0 on SIGTERM at the end, or any log line with "panic" or "fatal error:".
//   - Liveness: at least a minimum number of acquisitions, and after the faults are
//     healed, the mutex is acquired and the leader lock held again.
//   - A hold that resumes after jeopardy (answers held, then not held in state
//     jeopardy, then held with the same token) is one hold: its promises are those of
//     its held answers, so it overlaps nobody if nobody held the lock in between, and
//     its token is checked like any other (no greater token may have been shown in
//     between). No rule of the checker is relaxed for it.
//
// Why not porcupine (github.com/anishathalye/porcupine): it checks that a history is
// linearizable against a sequential model of an object. The guarantees here are not
// about one linearizable object but about time: a promise reaches into the future by
// validFor, and holds must not overlap in real time. Checking that is a sort and a sweep
// over intervals, written plainly here, with its own tests on hand-made histories.
//
// What it does NOT check or cover:
//   - Clocks that run at different rates: every process shares one machine's clock.
//   - An agent started while a Lease is deleted (it starts tokens at 1 again, which the
//     lock package documents as not guaranteed): the harness avoids it.
//   - Overlapping faults: faults run one after the other.
//   - Writes by a client that was killed before it recorded the answer it acted on: a
//     lost record can only hide a violation, never invent one. A lost release or renew
//     could invent one (the hold's promise would run on after a release that landed,
//     and another holder took over at once), so the client records those before it
//     sends them too (Record.Sent).
package chaos
