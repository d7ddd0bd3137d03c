package lock

import (
	"slices"
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

// The Lease fields below are read and written only here: the engine decides on Records
// and on these helpers, never on a Lease's spec or annotations.

// holderOf is the holder identity lease names ("" for none or nil).
func holderOf(lease *coordinationv1.Lease) string { return RecordOf(lease).Holder }

// tokenOf is lease's leaseTransitions: the token of its current (or last) hold; 0
// without one.
func tokenOf(lease *coordinationv1.Lease) int64 { return int64(RecordOf(lease).Transitions) }

// names is true when lease is the record of the hold of identity with token.
func names(lease *coordinationv1.Lease, identity string, token int64) bool {
	rec := RecordOf(lease)
	return lease != nil && rec.Holder == identity && int64(rec.Transitions) == token
}

// withRecord is a copy of cur (nil: a new Lease namespace/name) whose spec is rec,
// stamped with meta. Annotations other than meta's (the queue) are kept.
func withRecord(cur *coordinationv1.Lease, namespace, name string, meta leaseMeta, rec Record) *coordinationv1.Lease {
	next := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if cur != nil {
		next = cur.DeepCopy()
	}
	meta.stamp(next)
	next.Spec = rec.Spec()
	return next
}

// leaseMeta is what an agent records on every Lease it writes besides the record.
type leaseMeta struct {
	mode                 Mode
	semaphore            string
	renewDeadline, grace time.Duration
}

// stamp sets meta's label and annotations on lease. A lock's Lease is owned by nothing
// and kept by nothing: an owner's deletion would have the garbage collector delete it
// (restarting its tokens) and a finalizer would keep it after a delete. The admission
// policy lets a write remove them, never add.
func (m leaseMeta) stamp(lease *coordinationv1.Lease) {
	lease.OwnerReferences, lease.Finalizers = nil, nil
	if lease.Labels == nil {
		lease.Labels = map[string]string{}
	}
	lease.Labels[LabelManagedBy] = ManagedBy
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[AnnotationMode] = string(m.mode)
	lease.Annotations[AnnotationRenewDeadline] = m.renewDeadline.String()
	lease.Annotations[AnnotationGrace] = m.grace.String()
	if m.semaphore != "" {
		lease.Annotations[AnnotationSemaphore] = m.semaphore
	}
}

// queueOf is the queue a Lease carries (nil for none).
func queueOf(lease *coordinationv1.Lease) []string {
	if lease == nil {
		return nil
	}
	v := lease.Annotations[AnnotationQueue]
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// withQueue is a copy of lease whose queue is q.
func withQueue(lease *coordinationv1.Lease, q []string) *coordinationv1.Lease {
	next := lease.DeepCopy()
	setQueue(next, q)
	return next
}

func setQueue(lease *coordinationv1.Lease, q []string) {
	if len(q) == 0 {
		delete(lease.Annotations, AnnotationQueue)
		return
	}
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[AnnotationQueue] = strings.Join(q, ",")
}

func without(q []string, id string) []string {
	return slices.DeleteFunc(slices.Clone(q), func(s string) bool { return s == id })
}

// sameRecord is true when a and b carry the same record (both absent, or every spec
// field equal, set or unset alike); metadata and annotations do not count.
func sameRecord(a, b *coordinationv1.Lease) bool {
	if a == nil || b == nil {
		return a == b
	}
	s, t := a.Spec, b.Spec
	return holderOf(a) == holderOf(b) &&
		eqInt32(s.LeaseDurationSeconds, t.LeaseDurationSeconds) &&
		eqInt32(s.LeaseTransitions, t.LeaseTransitions) &&
		eqTime(s.AcquireTime, t.AcquireTime) && eqTime(s.RenewTime, t.RenewTime)
}

func eqInt32(a, b *int32) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func eqTime(a, b *metav1.MicroTime) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

// handover says when the record prev, which this agent (self) replaced, let the lock go
// (its holder's release, or its expiry) and how long before now that was (never
// negative: the two wall clocks may differ). It is ("", 0) when prev tells nothing.
func handover(prev *coordinationv1.Lease, self string, now time.Time) (string, time.Duration) {
	if prev == nil || prev.Spec.RenewTime == nil {
		return "", 0
	}
	from, free := "released", prev.Spec.RenewTime.Time
	switch h := holderOf(prev); {
	case h == self:
		return "", 0
	case h != "":
		if prev.Spec.LeaseDurationSeconds == nil {
			return "", 0
		}
		from, free = "expired", free.Add(time.Duration(*prev.Spec.LeaseDurationSeconds)*time.Second)
	}
	return from, max(0, now.Sub(free))
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
