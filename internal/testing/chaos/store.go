package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// WriteRequest is a client's write to the fenced store.
type WriteRequest struct {
	Lock  string `json:"lock"`
	Token int64  `json:"token"`
	// Proc and Holder say who writes: the client loop and the agent identity that
	// gave it the token.
	Proc   string `json:"proc"`
	Holder string `json:"holder"`
	// Late is set when the client knows its hold has ended by its own clock.
	Late bool `json:"late"`
}

// WriteAnswer is the store's answer.
type WriteAnswer struct {
	Accepted bool  `json:"accepted"`
	Highest  int64 `json:"highest"`
}

// Store is the fenced store: a downstream resource that the holders of a lock write to
// with their fencing token. It accepts a write only if its token is at least the
// highest token it has accepted for that lock, and records every decision (OpStore)
// with the time it was made.
type Store struct {
	log     *Log
	mu      sync.Mutex
	highest map[string]int64
	srv     *http.Server
	l       net.Listener
	done    chan struct{}
}

// NewStore serves the store on 127.0.0.1 (a free port), recording into log.
func NewStore(log *Log) (*Store, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Store{log: log, highest: map[string]int64{}, l: l, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /write", s.serveWrite)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic("fenced store: " + err.Error())
		}
	}()
	return s, nil
}

// URL is the store's base URL.
func (s *Store) URL() string { return "http://" + s.l.Addr().String() }

// Close stops serving.
func (s *Store) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}

// Write decides on one write and records the decision.
func (s *Store) Write(w WriteRequest) WriteAnswer {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := Now()
	high := s.highest[w.Lock]
	ok := w.Token >= high
	if ok {
		s.highest[w.Lock] = w.Token
	}
	s.log.Add(Record{Op: OpStore, Lock: w.Lock, Send: now, Recv: now, ReqToken: w.Token, Holder: w.Holder,
		Target: w.Proc, Late: w.Late, Accepted: ok, Highest: high})
	return WriteAnswer{Accepted: ok, Highest: high}
}

func (s *Store) serveWrite(rw http.ResponseWriter, r *http.Request) {
	var w WriteRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&w); err != nil || w.Lock == "" {
		http.Error(rw, "want {\"lock\":...,\"token\":...}", http.StatusBadRequest)
		return
	}
	a := s.Write(w)
	rw.Header().Set("Content-Type", "application/json")
	if !a.Accepted {
		rw.WriteHeader(http.StatusConflict)
	}
	_ = json.NewEncoder(rw).Encode(a)
}
