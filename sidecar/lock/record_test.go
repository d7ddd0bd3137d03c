package lock

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"
)

var (
	recAcquired = time.Date(2026, 3, 1, 10, 0, 0, 123456000, time.UTC)
	recRenewed  = recAcquired.Add(7 * time.Second)
)

// toLER is r as client-go's LeaderElectionRecord.
func toLER(r Record) resourcelock.LeaderElectionRecord {
	return resourcelock.LeaderElectionRecord{
		HolderIdentity: r.Holder, LeaseDurationSeconds: int(r.DurationSeconds),
		AcquireTime: metav1.Time{Time: r.Acquired}, RenewTime: metav1.Time{Time: r.Renewed},
		LeaderTransitions: int(r.Transitions),
	}
}

// fromLER is client-go's LeaderElectionRecord as a Record.
func fromLER(ler *resourcelock.LeaderElectionRecord) Record {
	return Record{
		Holder: ler.HolderIdentity, DurationSeconds: int32(ler.LeaseDurationSeconds),
		Acquired: ler.AcquireTime.Time, Renewed: ler.RenewTime.Time, Transitions: int32(ler.LeaderTransitions),
	}
}

// TestRecordWritesAsClientGo: the spec the engine writes for a record is the spec
// client-go's LeaseLock writes for the same LeaderElectionRecord.
func TestRecordWritesAsClientGo(t *testing.T) {
	t.Parallel()
	tests := map[string]Record{
		"held":     {Holder: "api-0_uid", DurationSeconds: 15, Acquired: recAcquired, Renewed: recRenewed, Transitions: 7},
		"released": Record{Transitions: 7}.Released(recRenewed),
		"first":    {Holder: "api-1_uid", DurationSeconds: 1, Acquired: recAcquired, Renewed: recAcquired, Transitions: 1},
		"max":      {Holder: "h", DurationSeconds: 1 << 30, Acquired: recAcquired, Renewed: recRenewed, Transitions: 1<<31 - 1},
	}
	for name, rec := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ler := toLER(rec)
			if diff := cmp.Diff(resourcelock.LeaderElectionRecordToLeaseSpec(&ler), rec.Spec()); diff != "" {
				t.Errorf("spec (-client-go +engine):\n%s", diff)
			}
		})
	}
}

// TestRecordReadsAsClientGo: the record the engine reads from a spec is the one
// client-go's LeaseLock reads, unset fields included.
func TestRecordReadsAsClientGo(t *testing.T) {
	t.Parallel()
	tests := map[string]coordinationv1.LeaseSpec{
		"empty": {},
		"client-go elector": {
			HolderIdentity: ptr.To("elector-1"), LeaseDurationSeconds: ptr.To[int32](15),
			AcquireTime: &metav1.MicroTime{Time: recAcquired}, RenewTime: &metav1.MicroTime{Time: recRenewed},
			LeaseTransitions: ptr.To[int32](3),
		},
		"released by client-go": {
			HolderIdentity: ptr.To(""), LeaseDurationSeconds: ptr.To[int32](1),
			AcquireTime: &metav1.MicroTime{Time: recRenewed}, RenewTime: &metav1.MicroTime{Time: recRenewed},
			LeaseTransitions: ptr.To[int32](3),
		},
		"kubelet-style, no transitions": {
			HolderIdentity: ptr.To("node-1"), LeaseDurationSeconds: ptr.To[int32](40),
			RenewTime: &metav1.MicroTime{Time: recRenewed},
		},
		"preferred holder and strategy ignored": {
			HolderIdentity: ptr.To("a"), PreferredHolder: ptr.To("b"),
			Strategy: ptr.To(coordinationv1.OldestEmulationVersion), LeaseTransitions: ptr.To[int32](9),
		},
	}
	for name, spec := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			want := fromLER(resourcelock.LeaseSpecToLeaderElectionRecord(&spec))
			if diff := cmp.Diff(want, RecordOf(&coordinationv1.Lease{Spec: spec})); diff != "" {
				t.Errorf("record (-client-go +engine):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff(Record{}, RecordOf(nil)); diff != "" {
		t.Errorf("record of no Lease (-want +got):\n%s", diff)
	}
}

// TestRecordRoundTrip: a record written by the engine and read back by client-go (and
// the other way round) is the same record.
func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	rec := Record{Holder: "api-0_uid", DurationSeconds: 15, Acquired: recAcquired, Renewed: recRenewed, Transitions: 42}
	spec := rec.Spec()
	if diff := cmp.Diff(rec, fromLER(resourcelock.LeaseSpecToLeaderElectionRecord(&spec))); diff != "" {
		t.Errorf("engine -> client-go (-want +got):\n%s", diff)
	}
	ler := toLER(rec)
	back := resourcelock.LeaderElectionRecordToLeaseSpec(&ler)
	if diff := cmp.Diff(rec, RecordOf(&coordinationv1.Lease{Spec: back})); diff != "" {
		t.Errorf("client-go -> engine (-want +got):\n%s", diff)
	}
}

// TestRecordLeaseHelpers: the helpers through which the engine reads and writes the
// rest of a Lease (stamp, queue, identity of a hold, same record, handover).
func TestRecordLeaseHelpers(t *testing.T) {
	t.Parallel()
	meta := leaseMeta{mode: ModeSemaphore, semaphore: "report", renewDeadline: 10 * time.Second, grace: time.Minute}
	cur := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
		Name: "x", Namespace: "ns", ResourceVersion: "5",
		OwnerReferences: []metav1.OwnerReference{{Name: "o"}}, Finalizers: []string{"f"},
		Annotations: map[string]string{AnnotationQueue: "a,b", "other": "kept"},
	}}
	rec := Record{Holder: "me", DurationSeconds: 15, Acquired: recAcquired, Renewed: recRenewed, Transitions: 4}
	got := withRecord(cur, "ns", "x", meta, rec)
	want := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
		Name: "x", Namespace: "ns", ResourceVersion: "5",
		Labels: map[string]string{LabelManagedBy: ManagedBy},
		Annotations: map[string]string{AnnotationQueue: "a,b", "other": "kept", AnnotationMode: "semaphore",
			AnnotationSemaphore: "report", AnnotationRenewDeadline: "10s", AnnotationGrace: "1m0s"},
	}, Spec: rec.Spec()}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("withRecord (-want +got):\n%s", diff)
	}
	if cur.OwnerReferences == nil || cur.Annotations[AnnotationMode] != "" {
		t.Error("withRecord changed the Lease it copied")
	}
	if diff := cmp.Diff([]string{"a", "b"}, queueOf(got)); diff != "" {
		t.Errorf("queueOf (-want +got):\n%s", diff)
	}
	if q := queueOf(withQueue(got, nil)); q != nil {
		t.Errorf("queue after clearing = %v, want none", q)
	}
	if diff := cmp.Diff([]string{"a", "c"}, queueOf(withQueue(got, without([]string{"a", "me", "c"}, "me")))); diff != "" {
		t.Errorf("queue without me (-want +got):\n%s", diff)
	}
	if !names(got, "me", 4) || names(got, "me", 3) || names(got, "you", 4) || names(nil, "", 0) {
		t.Error("names does not say exactly whose hold the record is")
	}
	if holderOf(got) != "me" || tokenOf(got) != 4 || holderOf(nil) != "" || tokenOf(nil) != 0 {
		t.Error("holderOf/tokenOf do not read the record")
	}
	queued := withQueue(got, []string{"z"})
	queued.ResourceVersion = "6"
	if !sameRecord(got, queued) || sameRecord(got, nil) || !sameRecord(nil, nil) {
		t.Error("sameRecord must ignore metadata and annotations and compare presence")
	}
	unset := got.DeepCopy()
	unset.Spec.AcquireTime = nil
	if sameRecord(got, unset) {
		t.Error("sameRecord must tell an unset field from a set one")
	}
	from, d := handover(got, "other", recRenewed.Add(20*time.Second))
	if from != "expired" || d != 5*time.Second {
		t.Errorf("handover of an expired hold = %q %s, want expired 5s", from, d)
	}
	from, d = handover(withRecord(nil, "ns", "x", meta, rec.Released(recRenewed)), "other", recRenewed.Add(time.Second))
	if from != "released" || d != time.Second {
		t.Errorf("handover of a released hold = %q %s, want released 1s", from, d)
	}
	if from, _ := handover(got, "me", recRenewed); from != "" {
		t.Errorf("handover from our own record = %q, want none", from)
	}
}
