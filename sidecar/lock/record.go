package lock

import (
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Record is a Lease's spec in client-go's LeaseLock shape (holderIdentity,
// leaseDurationSeconds, acquireTime, renewTime, leaseTransitions): the one place that
// reads and writes it, for the engine and for kubectl leasehold's force-release.
type Record struct {
	Holder            string
	DurationSeconds   int32
	Acquired, Renewed time.Time
	// Transitions is leaseTransitions: the fencing token of the current (or last) hold.
	Transitions int32
}

// RecordOf reads the record of lease (the zero Record for nil or an empty spec).
func RecordOf(lease *coordinationv1.Lease) Record {
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

// Identity is the holder identity of the agent of Pod name with uid: unique per Pod
// incarnation, and what the admission policy checks a writer against.
func Identity(podName, podUID string) string { return podName + "_" + podUID }

// PodOf is the Pod name of an agent's holder identity; ok is false for identities
// that are not "<pod-name>_<pod-uid>" (client-go electors, hostnames).
func PodOf(identity string) (pod string, ok bool) {
	i := strings.LastIndexByte(identity, '_')
	if i <= 0 || i == len(identity)-1 {
		return "", false
	}
	pod, uid := identity[:i], identity[i+1:]
	if len(validation.IsDNS1123Subdomain(pod)) > 0 || !isUID(uid) {
		return "", false
	}
	return pod, true
}

// isUID: a Kubernetes object UID, an RFC 4122 UUID in its canonical 36-character
// lowercase form (uuid.Parse would also take the urn: and {} forms, which no UID has).
func isUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		default:
			return false
		}
	}
	return true
}
