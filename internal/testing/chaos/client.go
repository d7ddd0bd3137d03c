package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// ClientEnv is the environment variable that turns a re-executed test binary into a
// client loop; ClientConfigEnv carries its ClientConfig as JSON.
const (
	ClientEnv       = "LEASEHOLD_CHAOS_CLIENT"
	ClientConfigEnv = "LEASEHOLD_CHAOS_CLIENT_CONFIG"
)

// ClientConfig configures one client loop process.
type ClientConfig struct {
	// Proc names the loop in the history ("a0c1-r0").
	Proc string `json:"proc"`
	// Socket is the agent's Unix socket; Agent the agent's identity when the loop starts.
	Socket string `json:"socket"`
	Agent  string `json:"agent"`
	// Mutex is the lock the loop takes, writes under and releases; Leader the lock it
	// asks "am I the holder?" about.
	Mutex  string `json:"mutex"`
	Leader string `json:"leader"`
	// Semaphore, when set, is a counting lock that a second loop of the process takes
	// the way the first takes Mutex. Its records name the slot's Lease as their lock
	// (from the token: token % lock.SlotTokenBase is the slot), so the checker checks
	// each slot like a mutex.
	Semaphore string `json:"semaphore,omitempty"`
	// Store is the fenced store's URL; History the file the loop appends its records to.
	Store   string `json:"store"`
	History string `json:"history"`
	// Seed seeds the loop's choices (with Proc).
	Seed uint64 `json:"seed"`
	// RenewDeadline of the agents: ttls are chosen around it.
	RenewDeadline time.Duration `json:"renewDeadline"`
	// Grace is the agents' grace period: a loop that rides out a jeopardy (see hold)
	// waits for the hold to resume at most this long plus renew-deadline.
	Grace time.Duration `json:"grace"`
}

// RunClientFromEnv runs the client loop configured by $LEASEHOLD_CHAOS_CLIENT_CONFIG
// until SIGTERM; it is what a re-executed test binary does (see TestMain).
func RunClientFromEnv(ctx context.Context) error {
	var cfg ClientConfig
	if err := json.Unmarshal([]byte(os.Getenv(ClientConfigEnv)), &cfg); err != nil {
		return fmt.Errorf("%s: %w", ClientConfigEnv, err)
	}
	return RunClient(ctx, cfg)
}

// RunClient runs one client loop until ctx ends. It holds the mutex again and again:
// acquire (with a wait and often a ttl; now and then tied to the connection, which it
// then closes instead of calling release), check it holds, write to the fenced store
// with its token while its own clock says the hold is still valid (the answer's send
// time + validFor), now and then renew, call release and renew with a stale token,
// or sleep past its ttl; after its hold ended by its clock it makes one more write
// with the old token on purpose (the store must reject it once a newer holder wrote);
// then it releases with its token. Beside that it asks about the leader lock
// every 100-400 ms. Every call is recorded with its send and receive times.
func RunClient(ctx context.Context, cfg ClientConfig) error {
	log, err := OpenLog(cfg.History, cfg.Proc)
	if err != nil {
		return err
	}
	defer log.Close()
	h := fnv.New64a()
	_, _ = h.Write([]byte(cfg.Proc))
	c := &clientLoop{
		cfg: cfg,
		log: log,
		rng: rand.New(rand.NewPCG(cfg.Seed, h.Sum64())),
		agentHTTP: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", cfg.Socket)
			},
		}},
		storeHTTP: &http.Client{Timeout: 5 * time.Second},
	}
	c.agent = &atomic.Pointer[string]{}
	c.agent.Store(&cfg.Agent)
	c.lock = cfg.Mutex
	var wg sync.WaitGroup
	wg.Go(func() { c.leaderLoop(ctx, rand.New(rand.NewPCG(cfg.Seed, h.Sum64()+1))) })
	if cfg.Semaphore != "" {
		sc := *c
		sc.lock, sc.sem, sc.rng = cfg.Semaphore, true, rand.New(rand.NewPCG(cfg.Seed, h.Sum64()+2))
		wg.Go(func() { sc.mutexLoop(ctx) })
	}
	c.mutexLoop(ctx)
	wg.Wait()
	return nil
}

type clientLoop struct {
	cfg       ClientConfig
	log       *Log
	rng       *rand.Rand // the mutex loop's; the leader loop has its own
	agentHTTP *http.Client
	storeHTTP *http.Client
	agent     *atomic.Pointer[string]
	// lock is the lock this loop takes (Mutex, or Semaphore when sem); slot is, on a
	// semaphore, the slot of the hold the loop works under.
	lock string
	sem  bool
	slot string
}

// recordLock is the lock a record of this loop is about: on a semaphore, the slot's
// Lease that token names (so that each slot is checked like a mutex).
func (c *clientLoop) recordLock(token int64) string {
	if !c.sem || token <= 0 {
		return c.lock
	}
	return lock.SlotName(c.lock, int(token%lock.SlotTokenBase))
}

// answer is an agent's answer: a lock state or an error.
type answer struct {
	Name           string   `json:"name"`
	Held           bool     `json:"held"`
	Holder         string   `json:"holder"`
	Token          int64    `json:"token"`
	ValidForMillis int64    `json:"validForMillis"`
	State          string   `json:"state"`
	Error          string   `json:"error"`
	Reason         string   `json:"reason"`
	Slots          []answer `json:"slots"`
}

// about is the part of a semaphore's answer about slot: the slot's own state.
func (a answer) about(slot string) answer {
	for _, s := range a.Slots {
		if s.Name == slot {
			return s
		}
	}
	return a
}

// call makes one request to the agent and records it.
func (c *clientLoop) call(ctx context.Context, op Op, method, lock, suffix string, q url.Values, timeout time.Duration) Record {
	u := "http://leasehold/v1/locks/" + url.PathEscape(lock) + suffix
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := Record{Op: op, Lock: lock}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		panic(err)
	}
	r.Send = Now()
	resp, err := c.agentHTTP.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	r.Recv = Now()
	if err != nil {
		r.Err = err.Error()
	} else {
		r.Status = resp.StatusCode
		var a answer
		if json.Unmarshal(body, &a) != nil {
			r.Err = "answer is not JSON: " + string(body)
		}
		if c.sem && op == OpGet && c.slot != "" {
			a = a.about(c.slot)
		}
		r.Held, r.Holder, r.Token, r.ValidFor, r.Reason = a.Held, a.Holder, a.Token, a.ValidForMillis*int64(time.Millisecond), a.Reason
		r.State = a.State
		if a.Error != "" {
			r.Detail = a.Error
		}
	}
	if r.Status == 200 && r.Held && r.Holder != "" {
		c.agent.Store(&r.Holder)
	}
	r.Agent = *c.agent.Load()
	return r
}

func (c *clientLoop) add(r Record) Record {
	if r.Err != "" && r.Status == 0 && r.Send != 0 {
		// The agent was not there (killed, restarting) or the call timed out.
		r.Detail = ""
	}
	return c.log.Add(r)
}

func (c *clientLoop) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (c *clientLoop) dur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)+1))
}

// pickTTL: no ttl, a ttl shorter than renew-deadline (validFor must follow it), or
// a longer one.
func (c *clientLoop) pickTTL() time.Duration {
	rd := c.cfg.RenewDeadline
	switch p := c.rng.Float64(); {
	case p < 0.2:
		return 0
	case p < 0.6:
		return c.dur(rd/5, rd*3/4)
	default:
		return c.dur(rd, 2*rd)
	}
}

func (c *clientLoop) leaderLoop(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		r := c.call(ctx, OpGet, http.MethodGet, c.cfg.Leader, "", nil, 5*time.Second)
		if ctx.Err() != nil {
			return
		}
		c.add(r)
		c.sleep(ctx, 100*time.Millisecond+time.Duration(rng.Int64N(int64(300*time.Millisecond))))
	}
}

func (c *clientLoop) mutexLoop(ctx context.Context) {
	m := c.lock
	for ctx.Err() == nil {
		ttl := c.pickTTL()
		wait := c.dur(time.Second, 4*time.Second)
		q := url.Values{"wait": {wait.String()}}
		if ttl > 0 {
			q.Set("ttl", ttl.String())
		}
		var a Record
		var conn io.Closer
		if c.rng.Float64() < 0.15 {
			a, conn = c.acquireConnection(ctx, q, wait+5*time.Second)
		} else {
			a = c.call(ctx, OpAcquire, http.MethodPost, m, "/acquire", q, wait+5*time.Second)
		}
		if ctx.Err() != nil {
			if conn != nil {
				conn.Close()
			}
			return
		}
		a.Wait, a.TTL = int64(wait), int64(ttl)
		if a.Status == 200 && a.Held {
			a.Lock = c.recordLock(a.Token)
		}
		c.add(a)
		if a.Status != 200 || !a.Held {
			if conn != nil {
				conn.Close()
			}
			c.sleep(ctx, c.dur(20*time.Millisecond, 300*time.Millisecond))
			continue
		}
		c.hold(ctx, a, ttl, conn)
		c.sleep(ctx, c.dur(0, 150*time.Millisecond))
	}
}

// acquireConnection acquires with ?hold=connection: the hold lasts until the client
// closes the connection (the returned Closer; nil when there is no open connection).
// The record is the first line of the answer, the lock's state.
func (c *clientLoop) acquireConnection(ctx context.Context, q url.Values, timeout time.Duration) (Record, io.Closer) {
	q.Set("hold", "connection")
	r := Record{Op: OpAcquire, Lock: c.lock, Conn: true}
	// The connection outlives the request's timeout: only the first line is timed.
	cctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(timeout, cancel)
	req, _ := http.NewRequestWithContext(cctx, http.MethodPost, "http://leasehold/v1/locks/"+url.PathEscape(c.lock)+"/acquire?"+q.Encode(), nil)
	r.Send = Now()
	resp, err := c.agentHTTP.Do(req)
	var line []byte
	if err == nil {
		line, err = bufio.NewReader(resp.Body).ReadBytes('\n')
	}
	r.Recv = Now()
	stopped := t.Stop()
	r.Agent = *c.agent.Load()
	if err != nil || !stopped {
		if err == nil {
			err = context.DeadlineExceeded
		}
		r.Err = err.Error()
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		return r, nil
	}
	r.Status = resp.StatusCode
	var a answer
	if json.Unmarshal(line, &a) != nil {
		r.Err = "answer is not JSON: " + string(line)
	}
	r.Held, r.Holder, r.Token, r.ValidFor, r.Reason = a.Held, a.Holder, a.Token, a.ValidForMillis*int64(time.Millisecond), a.Reason
	if a.Error != "" {
		r.Detail = a.Error
	}
	if r.Status == 200 && r.Held && r.Holder != "" {
		c.agent.Store(&r.Holder)
	}
	r.Agent = *c.agent.Load()
	return r, closerFunc(func() error { cancel(); return resp.Body.Close() })
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// hold works under the hold that acquire answer a gave, then releases it: with its
// token, or, for a hold tied to a connection (conn not nil), by closing the connection.
func (c *clientLoop) hold(ctx context.Context, a Record, ttl time.Duration, conn io.Closer) {
	if conn != nil {
		defer conn.Close()
	}
	m := c.lock
	tok := a.Token
	if c.sem {
		c.slot = a.Lock // the slot's Lease (recordLock)
		defer func() { c.slot = "" }()
	}
	// stale is a token of an earlier hold of the same lock (on a semaphore: the same
	// slot's, since another token may name another client's live hold).
	stale, step := tok-1, int64(1)
	if c.sem {
		stale, step = tok-lock.SlotTokenBase, lock.SlotTokenBase
	}
	until := a.Send + a.ValidFor // by this client's clock, the hold may be relied on until then
	started := a.Recv            // the agent started the ttl before it answered
	overstay := ttl > 0 && c.rng.Float64() < 0.12
	// ride: in jeopardy, wait for the hold to resume (as `leasehold run` freezes its
	// command until "safe"), rather than give it up at once.
	ride := c.rng.Float64() < 0.8
	lost := false
	// check asks whether the hold is still this loop's: it updates until and says
	// whether the hold goes on.
	check := func() bool {
		g := c.get(ctx, m, tok)
		switch {
		case g.Status == 200 && g.Held && g.Token == tok:
			until = g.Send + g.ValidFor
		case g.Status == 200 && g.State == string(lock.PhaseJeopardy) && g.Token == tok && ride:
			if g, ok := c.rideOut(ctx, m, tok); ok {
				until = g.Send + g.ValidFor
			} else {
				return false
			}
		case g.Status == 200:
			return false
		}
		return true
	}
	// Most holds are short (1-3 writes); one in four is long (4-12 writes, about 0.5-3
	// seconds), so that a fault often finds a client in the middle of its hold.
	writes := 1 + c.rng.IntN(3)
	if c.rng.Float64() < 0.25 {
		writes = 4 + c.rng.IntN(9)
	}
	for i := 0; i < writes && !lost && ctx.Err() == nil; i++ {
		switch p := c.rng.Float64(); {
		case i == 0 || p < 0.25:
			// Check it holds: an acquire that waited answers late, and its validFor,
			// counted from the send time, may be spent already.
			lost = !check()
		case p < 0.35:
			nt := c.pickTTL()
			q := url.Values{"token": {fmt.Sprint(tok)}}
			if nt > 0 {
				q.Set("ttl", nt.String())
			}
			c.sent(OpRenew, tok)
			r := c.call(ctx, OpRenew, http.MethodPost, m, "/renew", q, 5*time.Second)
			r.ReqToken, r.TTL, r.Lock = tok, int64(nt), c.recordLock(tok)
			c.add(r)
			switch {
			case r.Status == 200 && r.Held && r.Token == tok:
				until = r.Send + r.ValidFor
				if nt > 0 {
					ttl, started = nt, r.Recv
				}
			case r.Status == 409:
				lost = true
			}
		case p < 0.42 && tok > step:
			r := c.call(ctx, OpStaleRenew, http.MethodPost, m, "/renew", url.Values{"token": {fmt.Sprint(stale)}}, 5*time.Second)
			r.ReqToken, r.Lock = stale, c.recordLock(stale)
			c.add(r)
		case p < 0.50 && tok > step:
			r := c.call(ctx, OpStaleRelease, http.MethodPost, m, "/release", url.Values{"token": {fmt.Sprint(stale)}}, 5*time.Second)
			r.ReqToken, r.Lock = stale, c.recordLock(stale)
			c.add(r)
		}
		if lost || ctx.Err() != nil {
			break
		}
		if Now()+int64(50*time.Millisecond) >= until && ride && !check() {
			lost = true // asked again, as a client that depends on its hold would
			break
		}
		if Now()+int64(50*time.Millisecond) >= until {
			break // the hold may end before the write arrives: stop relying on it
		}
		c.write(ctx, tok, false)
		c.sleep(ctx, c.dur(0, 250*time.Millisecond))
	}
	if ctx.Err() != nil {
		return
	}
	if overstay {
		c.sleep(ctx, time.Duration(started+int64(ttl)-Now())+c.dur(200*time.Millisecond, 700*time.Millisecond))
	}
	if lost || Now() >= until {
		// The hold is over by this client's own clock (a pause, a partition, its ttl):
		// write once more with the old token, as a client that missed it would. The
		// fence must reject it once a newer holder has written.
		c.write(ctx, tok, true)
	}
	if conn != nil {
		// The hold ends when the agent sees the connection close; the client stops
		// relying on it now.
		c.sent(OpRelease, tok)
		r := Record{Op: OpRelease, Lock: c.recordLock(tok), ReqToken: tok, Conn: true, Send: Now(), Agent: *c.agent.Load()}
		conn.Close()
		r.Recv = Now()
		c.add(r)
		return
	}
	c.sent(OpRelease, tok)
	r := c.call(ctx, OpRelease, http.MethodPost, m, "/release", url.Values{"token": {fmt.Sprint(tok)}}, 5*time.Second)
	r.ReqToken, r.Lock = tok, c.recordLock(tok)
	c.add(r)
}

// sent records that the loop is about to call op (release or renew) with its token
// tok, before it calls: the client stops relying on its hold (or on its ttl) from here,
// and a client killed before it records the answer leaves this record behind (without
// it, the checker would let the hold's promise run on after a release that landed).
func (c *clientLoop) sent(op Op, tok int64) {
	now := Now()
	c.log.Add(Record{Op: op, Lock: c.recordLock(tok), ReqToken: tok, Send: now, Recv: now, Sent: true, Agent: *c.agent.Load()})
}

// get asks about the loop's lock, whose hold of token own it is checking, and records
// the answer (on a semaphore, about the loop's slot).
func (c *clientLoop) get(ctx context.Context, m string, own int64) Record {
	g := c.call(ctx, OpGet, http.MethodGet, m, "", nil, 5*time.Second)
	g.Own = own
	if c.sem {
		g.Lock = c.slot
	}
	return c.add(g)
}

// rideOut waits while the hold of token tok is in jeopardy, asking every 100-250 ms,
// and returns the answer that says held again with the same token (true), or the
// answer that says anything else (false): lost, another holder. It waits at most the
// grace period plus renew-deadline (the agent ends the jeopardy within the grace).
func (c *clientLoop) rideOut(ctx context.Context, m string, tok int64) (Record, bool) {
	deadline := Now() + int64(c.cfg.Grace+c.cfg.RenewDeadline)
	var g Record
	for Now() < deadline && ctx.Err() == nil {
		c.sleep(ctx, c.dur(100*time.Millisecond, 250*time.Millisecond))
		g = c.get(ctx, m, tok)
		switch {
		case g.Status == 0:
			// No answer (the agent restarting): ask again.
		case g.Status == 200 && g.Held && g.Token == tok:
			return g, true
		case g.Status == 200 && g.State == string(lock.PhaseJeopardy) && g.Token == tok:
		default:
			return g, false
		}
	}
	return g, false
}

// write writes to the fenced store with token tok and records it.
func (c *clientLoop) write(ctx context.Context, tok int64, late bool) {
	lk := c.recordLock(tok)
	b, _ := json.Marshal(WriteRequest{Lock: lk, Token: tok, Proc: c.cfg.Proc, Holder: *c.agent.Load(), Late: late})
	r := Record{Op: OpWrite, Lock: lk, ReqToken: tok, Late: late}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.Store+"/write", bytes.NewReader(b))
	r.Send = Now()
	resp, err := c.storeHTTP.Do(req)
	var wa WriteAnswer
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&wa)
		resp.Body.Close()
		r.Status = resp.StatusCode
	}
	r.Recv = Now()
	if err != nil {
		r.Err = err.Error()
	}
	r.Accepted, r.Highest = wa.Accepted, wa.Highest
	r.Agent = *c.agent.Load()
	c.log.Add(r)
}
