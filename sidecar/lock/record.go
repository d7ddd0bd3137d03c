package lock

import (
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/internal/leaserecord"
)

// Record is a Lease's spec in client-go's LeaseLock shape (holderIdentity,
// leaseDurationSeconds, acquireTime, renewTime, leaseTransitions): leaserecord's, the
// one place that reads and writes it, for the engine and for kubectl leasehold.
type Record = leaserecord.Record

// RecordOf reads the record of lease (the zero Record for nil or an empty spec).
func RecordOf(lease *coordinationv1.Lease) Record { return leaserecord.Of(lease) }

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

// Identity is the holder identity of the agent of Pod name with uid (the contract's).
func Identity(podName, podUID string) string { return contract.Identity(podName, podUID) }

// PodOf is the Pod name of an agent's holder identity; ok is false for identities
// that are not "<pod-name>_<pod-uid>" (the contract's).
func PodOf(identity string) (pod string, ok bool) { return contract.PodOf(identity) }
