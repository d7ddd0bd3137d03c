package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// tieEngine acquires lock "a" with token 7 and no Hold (as a leader lock does), and
// follows it with tie; events are what Subscribe streams.
type tieEngine struct {
	fakeEngine
	tie      stubTie
	events   chan lock.Event
	released *int
}

func (e tieEngine) Acquire(context.Context, string, lock.AcquireOptions) (*lock.Hold, lock.State, error) {
	return nil, lock.State{Name: "a", Held: true, Phase: lock.PhaseHeld, Token: 7}, nil
}
func (e tieEngine) State(string) (lock.State, error) {
	return lock.State{Name: "a", Held: true, Phase: lock.PhaseHeld, Token: 7}, nil
}
func (e tieEngine) Subscribe(string) (<-chan lock.Event, func(), error) {
	return e.events, func() {}, nil
}
func (e tieEngine) Tie(string, *lock.Hold, lock.State) (lock.Tie, error)    { return e.tie, nil }
func (e tieEngine) ReleaseHold(context.Context, string, *lock.Hold, string) { *e.released++ }

// stubTie ends when told: already (ended) or by an event of the given type.
type stubTie struct {
	ended   string
	endedBy lock.EventType
}

func (t stubTie) Done() <-chan struct{}           { return nil }
func (t stubTie) Reason() string                  { return "" }
func (t stubTie) Ended(lock.State) (string, bool) { return t.ended, t.ended != "" }
func (t stubTie) EndedBy(ev lock.Event) bool      { return ev.Type == t.endedBy }

// A connection hold ends where the lock's kind says (its Tie), whatever the kind: the
// API itself never asks which kind it serves.
func TestConnectionHoldFollowsTheKindsTie(t *testing.T) {
	tests := map[string]struct {
		tie    stubTie
		events []lock.Event
		want   string
	}{
		"ended before the subscription": {tie: stubTie{ended: "this Pod no longer leads"},
			want: `{"event":"ended","lock":"a","reason":"this Pod no longer leads"}`},
		"ended by an event of the hold": {tie: stubTie{endedBy: lock.EventLost},
			events: []lock.Event{
				{Type: lock.EventLost, Lock: "a", Token: 6, Reason: "an older hold"},
				{Type: lock.EventJeopardy, Lock: "a", Token: 7, Reason: "unavailable"},
				{Type: lock.EventLost, Lock: "a", Token: 7, Reason: "taken over"},
			},
			want: `{"event":"jeopardy","lock":"a","reason":"unavailable","token":7}` + "\n" +
				`{"event":"ended","lock":"a","reason":"taken over"}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			events := make(chan lock.Event, len(tc.events))
			for _, ev := range tc.events {
				events <- ev
			}
			released := 0
			// A handler that does not follow the tie would hold the connection open: the
			// client gives up after a while (then the lines are wrong and it was released).
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			w := httptest.NewRecorder()
			NewHandler(tieEngine{tie: tc.tie, events: events, released: &released}, logr.Discard(), "").
				ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/locks/a/acquire?hold=connection", nil).WithContext(ctx))
			lines := strings.SplitN(strings.TrimSpace(w.Body.String()), "\n", 2)
			if w.Code != 200 || len(lines) != 2 || lines[1] != tc.want {
				t.Fatalf("want 200, the state, then\n%s\ngot %d\n%s", tc.want, w.Code, w.Body)
			}
			if released != 0 {
				t.Fatalf("a hold that ended was released again by the connection (%d)", released)
			}
		})
	}
}

// An acquire whose request ended while it acquired is answered 503 and its hold given
// to ReleaseHold, for every kind: also when the acquire gave no Hold (a leader lock),
// which before answered 200 with held true to a client that had gone, or to a script
// whose agent was shutting down.
func TestAcquireWhoseRequestEndedIsNeverAnswered200(t *testing.T) {
	released := 0
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w := httptest.NewRecorder()
	NewHandler(tieEngine{released: &released}, logr.Discard(), "").
		ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/locks/a/acquire", nil).WithContext(ctx))
	if w.Code != http.StatusServiceUnavailable || released != 1 {
		t.Fatalf("want 503 and the hold handed to ReleaseHold once, got %d (released %d): %s", w.Code, released, w.Body)
	}
}
