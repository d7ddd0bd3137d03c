// Package leaserecord is a coordination.k8s.io/v1 Lease's record in client-go's
// LeaseLock shape: holderIdentity, leaseDurationSeconds, acquireTime, renewTime and
// leaseTransitions, read and written in one place. The lock engine (sidecar/lock) and
// the kubectl plugin both use it, so the plugin reads and force-releases a hold
// exactly as the agents write it without linking the engine.
//
// It imports k8s.io/api's coordination types and nothing of the project.
package leaserecord

import (
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Record is a Lease's spec in client-go's LeaseLock shape (holderIdentity,
// leaseDurationSeconds, acquireTime, renewTime, leaseTransitions): the one place that
// reads and writes it, for the engine (sidecar/lock) and for kubectl leasehold's listing
// and force-release.
type Record struct {
	Holder            string
	DurationSeconds   int32
	Acquired, Renewed time.Time
	// Transitions is leaseTransitions: the fencing token of the current (or last) hold.
	Transitions int32
}

// Of reads the record of lease (the zero Record for nil or an empty spec).
func Of(lease *coordinationv1.Lease) Record {
	var r Record
	if lease == nil {
		return r
	}
	s := lease.Spec
	if s.HolderIdentity != nil {
		r.Holder = *s.HolderIdentity
	}
	if s.LeaseDurationSeconds != nil {
		r.DurationSeconds = *s.LeaseDurationSeconds
	}
	if s.AcquireTime != nil {
		r.Acquired = s.AcquireTime.Time
	}
	if s.RenewTime != nil {
		r.Renewed = s.RenewTime.Time
	}
	if s.LeaseTransitions != nil {
		r.Transitions = *s.LeaseTransitions
	}
	return r
}

// Spec is the record as a LeaseSpec, every field set (as client-go writes it).
func (r Record) Spec() coordinationv1.LeaseSpec {
	holder, dur, transitions := r.Holder, r.DurationSeconds, r.Transitions
	return coordinationv1.LeaseSpec{
		HolderIdentity:       &holder,
		LeaseDurationSeconds: &dur,
		AcquireTime:          &metav1.MicroTime{Time: r.Acquired},
		RenewTime:            &metav1.MicroTime{Time: r.Renewed},
		LeaseTransitions:     &transitions,
	}
}

// Released is the record that ends the hold at now, as client-go's ReleaseOnCancel
// writes it: no holder, a 1s duration, and the transitions kept, so that the next
// acquisition's token is still greater.
func (r Record) Released(now time.Time) Record {
	return Record{DurationSeconds: 1, Acquired: now, Renewed: now, Transitions: r.Transitions}
}

// Expires is when the hold runs out by the record's own times (renewTime +
// leaseDurationSeconds), on the writer's clock; zero without a holder.
func (r Record) Expires() time.Time {
	if r.Holder == "" || r.Renewed.IsZero() {
		return time.Time{}
	}
	return r.Renewed.Add(time.Duration(r.DurationSeconds) * time.Second)
}
