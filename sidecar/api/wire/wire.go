// Package wire holds the types of the agent's local API v1 as they travel as JSON: a
// lock's State, an Event of its stream, and the names they carry (Mode, Phase,
// EventType). It is a leaf: it imports only the standard library, so that the
// `leasehold` client (sidecar/client), which the agent copies into every container
// of a Pod, links nothing of the lock engine or of client-go.
//
// The engine (sidecar/lock) uses these very types through aliases (lock.State =
// wire.State), so the agent encodes and the client decodes one definition.
//
// What it guarantees: the JSON field names below are the API's; a field marked
// json:"-" is never sent (it is there for the agent's metrics).
package wire

import "time"

// Mode says how a lock is taken.
type Mode string

const (
	// ModeMutex is a lock the application takes on demand (acquire, release).
	ModeMutex Mode = "mutex"
	// ModeLeader is a lock the agent holds continuously while the Pod lives.
	ModeLeader Mode = "leader"
	// ModeSemaphore is a counting lock: N slot Leases, each taken like a mutex. A
	// slot's State has this mode.
	ModeSemaphore Mode = "semaphore"
)

// EventType names what happened to a lock.
type EventType string

// The events of a lock.
const (
	EventAcquired EventType = "acquired"
	EventLost     EventType = "lost"
	EventReleased EventType = "released"
	EventShutdown EventType = "shutdown"
	// EventJeopardy: renew-deadline passed while the API server was unavailable. The
	// hold is not held now (validFor 0) but not lost either: its renewal goes on for up
	// to the grace period.
	EventJeopardy EventType = "jeopardy"
	// EventSafe: a renewal landed while the hold was in jeopardy. Nobody else can have
	// held the lock in between; the hold goes on with the same fencing token.
	EventSafe EventType = "safe"
)

// Phase is where this agent's hold of a lock is. Every State carries it (sidecar/lock
// draws the transitions between phases).
type Phase string

// The phases of a hold.
const (
	// PhaseNotHeld: this Pod holds no hold of the lock.
	PhaseNotHeld Phase = "not-held"
	// PhaseHeld: this Pod holds the lock and may rely on it for validFor.
	PhaseHeld Phase = "held"
	// PhaseJeopardy: renew-deadline passed while the API server was unavailable. The
	// hold may not be relied on (held false, validFor 0), but it may resume with the
	// same token if a renewal lands within the grace period.
	PhaseJeopardy Phase = "jeopardy"
)

// Event is one change of a lock, as seen by this agent.
type Event struct {
	Type EventType `json:"type"`
	Lock string    `json:"lock"`
	// Slot is the slot's Lease for an event of a semaphore.
	Slot   string    `json:"slot,omitempty"`
	Holder string    `json:"holder"`
	Token  int64     `json:"token"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`

	// For metrics, not sent to event streams:
	// Cause is the kind of loss of a lost event (one of sidecar/lock's Loss* constants).
	Cause string `json:"-"`
	// HeldFor is how long the hold lasted, on a lost or released event that ended one.
	HeldFor time.Duration `json:"-"`
	// Handover, on an acquired event that had to wait for another holder, is the time
	// from the moment the Lease says the lock became free (the previous holder's
	// release: its last renewTime with holder ""; or its expiry: renewTime +
	// leaseDurationSeconds) to the moment this agent's write was answered. It compares
	// the previous holder's wall clock with this agent's. HandoverFrom says which:
	// "released" or "expired"; empty when the acquisition did not wait.
	Handover     time.Duration `json:"-"`
	HandoverFrom string        `json:"-"`
}

// State is what the agent knows of a lock. Held means held by this Pod, now.
type State struct {
	Name string `json:"name"`
	Mode Mode   `json:"mode"`
	Held bool   `json:"held"`
	// Phase is held, jeopardy or not-held (PhaseHeld, PhaseJeopardy, PhaseNotHeld).
	Phase          Phase  `json:"state"`
	Holder         string `json:"holder"`
	Token          int64  `json:"token"`
	ValidFor       string `json:"validFor"`
	ValidForMillis int64  `json:"validForMillis"`
	// Slot is, for a semaphore, the slot's Lease that the hold (or Holder) is about.
	Slot string `json:"slot,omitempty"`
	// Size and Slots describe a semaphore: how many holders it lets in and each
	// slot's state.
	Size  int     `json:"size,omitempty"`
	Slots []State `json:"slots,omitempty"`
	// HeldFor is how long the current hold has lasted (0 when not held), for metrics.
	HeldFor time.Duration `json:"-"`
}
