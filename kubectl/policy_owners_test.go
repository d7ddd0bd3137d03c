package kubectl

import (
	"context"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// leaseRights is what the agents' ClusterRole grants, and delete: RBAC lets the Pods of
// these tests write any Lease of their namespace; only the admission policy stops them.
var leaseRights = []rbacv1.PolicyRule{{
	APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
	Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"},
}}

// refusedBy checks that the API server refused a write with 403 from ValidatingAdmissionPolicy
// policy, with a Leasehold message that contains want.
func refusedBy(t *testing.T, policy, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s: the API server allowed it; want it refused by the admission policy %s", what, policy)
	case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policy+"'") || !strings.Contains(err.Error(), "leasehold: "):
		t.Fatalf("%s: want 403 from ValidatingAdmissionPolicy %s, got %v", what, policy, err)
	case !strings.Contains(err.Error(), want):
		t.Fatalf("%s: refused with %q, want a message containing %q", what, err, want)
	}
}

// collected waits up to a minute for the garbage collector to delete Lease ns/name.
func collected(ctx context.Context, ns, name string) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// TestNonHolderCannotGetAHeldLeaseDeleted runs the real garbage collector
// (kube-controller-manager) beside the API server. Before the fix, the policy let
// through any write that left spec as it was (meant for a waiter's queue entry), so Pod A
// could add an ownerReference to Pod B's held Lease, naming an owner that does not
// exist, and the garbage collector deleted the Lease within seconds: the hold ended, and
// an agent that never saw the deleted record created it again with token 1. Now
// ownerReferences and finalizers are writes that only an operator makes, and a Pod that
// does not hold a Lease changes nothing of it but its queue entry.
func TestNonHolderCannotGetAHeldLeaseDeleted(t *testing.T) {
	ctx := context.Background()
	testenv.StartControllerManager(t, restCfg, "garbagecollector")
	testenv.InstallAdmissionPolicy(t, restCfg)
	ns := createNamespace(t)
	if _, err := testenv.CreateServiceAccount(ctx, client, ns, "app", leaseRights); err != nil {
		t.Fatal(err)
	}
	a, b := podWriter(t, ns, "app", "pod-a"), podWriter(t, ns, "app", "pod-b")
	ghost := metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: "gone", UID: uuid.NewUUID()}

	// The garbage collector runs: a Lease no binding covers, owned by a ConfigMap that
	// does not exist, is deleted (the attack, where the policy does not apply).
	control := lease(ns, "control", "host-1", "", 1, time.Now(), false)
	control.OwnerReferences = []metav1.OwnerReference{ghost}
	if _, err := client.CoordinationV1().Leases(ns).Create(ctx, control, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := collected(ctx, ns, "control"); err != nil {
		t.Fatalf("the garbage collector did not delete a Lease whose owner does not exist: %v", err)
	}

	held, err := b.leases.Create(ctx, record(ns, "held", b.id, 7), metav1.CreateOptions{})
	allowed(t, "Pod B takes a lock", err)
	// attack writes as Pod A, and reports what the garbage collector did when admitted.
	attack := func(t *testing.T, what string, change func(*coordinationv1.Lease), want string) {
		t.Helper()
		l := b.get(t, "held")
		change(l)
		_, err := a.leases.Update(ctx, l, metav1.UpdateOptions{})
		if err == nil {
			gone := "and the garbage collector left it"
			if collected(ctx, ns, "held") == nil {
				gone = "and the garbage collector deleted the held Lease"
			}
			t.Fatalf("%s: admitted, %s", what, gone)
		}
		refused(t, what, err, want)
	}
	attack(t, "Pod A adds an ownerReference to Pod B's held Lease", func(l *coordinationv1.Lease) {
		l.OwnerReferences = []metav1.OwnerReference{ghost}
	}, "may not add or change metadata.ownerReferences or metadata.finalizers")
	attack(t, "Pod A adds a finalizer to Pod B's held Lease", func(l *coordinationv1.Lease) {
		l.Finalizers = []string{"example.com/keep"}
	}, "may not add or change metadata.ownerReferences or metadata.finalizers")
	attack(t, "Pod A queues and labels Pod B's held Lease in one write", func(l *coordinationv1.Lease) {
		l.Annotations[lock.AnnotationQueue] = a.id
		l.Labels["team"] = "a"
	}, "another Pod may change only its own entry in the annotation leasehold.io/queue")
	attack(t, "Pod A changes the mode annotation of Pod B's held Lease", func(l *coordinationv1.Lease) {
		l.Annotations[AnnotationMode] = "leader"
	}, "another Pod may change only its own entry")
	_, err = a.leases.Patch(ctx, "held", types.MergePatchType,
		[]byte(`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"gone","uid":"`+string(ghost.UID)+`"}]}}`),
		metav1.PatchOptions{})
	refused(t, "Pod A patches an ownerReference onto Pod B's held Lease", err, "ownerReferences")

	// The holder itself adds none either (agents never do), nor does a new Lease carry one.
	l := b.get(t, "held")
	l.OwnerReferences = []metav1.OwnerReference{ghost}
	_, err = b.leases.Update(ctx, l, metav1.UpdateOptions{})
	refused(t, "the holder adds an ownerReference to its own Lease", err, "ownerReferences")
	owned := record(ns, "owned", b.id, 1)
	owned.OwnerReferences = []metav1.OwnerReference{ghost}
	_, err = b.leases.Create(ctx, owned, metav1.CreateOptions{})
	refused(t, "a new labelled Lease with an ownerReference", err, "ownerReferences")
	kept := record(ns, "kept", b.id, 1)
	kept.Finalizers = []string{"example.com/keep"}
	_, err = b.leases.Create(ctx, kept, metav1.CreateOptions{})
	refused(t, "a new labelled Lease with a finalizer", err, "finalizers")

	// A waiter still queues on the held Lease (its entry only).
	l = b.get(t, "held")
	l.Annotations[lock.AnnotationQueue] = a.id
	_, err = a.leases.Update(ctx, l, metav1.UpdateOptions{})
	allowed(t, "Pod A adds its queue entry to Pod B's held Lease", err)

	// The Lease outlived the garbage collector's look at it, still Pod B's.
	if got := b.get(t, "held"); *got.Spec.HolderIdentity != b.id || *got.Spec.LeaseTransitions != 7 || got.UID != held.UID {
		t.Fatalf("the held Lease changed: holder %q token %d uid %s", *got.Spec.HolderIdentity, *got.Spec.LeaseTransitions, got.UID)
	}

	// A Lease that got an owner before the policy covered it (created unlabelled in a
	// namespace that did not opt in): the agent's takeover removes the owner, which the
	// policy allows, and from then on it stays ownerless.
	cm, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "owner"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pre := lease(ns, "pre", "", "", 2, time.Now(), false)
	pre.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: cm.Name, UID: cm.UID}}
	_, err = a.leases.Create(ctx, pre, metav1.CreateOptions{})
	allowed(t, "an unlabelled Lease with an owner, outside an opted-in namespace", err)
	l = b.get(t, "pre")
	l.Labels = map[string]string{LabelManagedBy: ManagedByValue}
	l.OwnerReferences = nil
	l.Spec.HolderIdentity = ptr.To(b.id)
	l.Spec.LeaseTransitions = ptr.To(int32(3))
	_, err = b.leases.Update(ctx, l, metav1.UpdateOptions{})
	allowed(t, "Pod B takes the Lease, labels it and removes its owner", err)
	if err := client.CoreV1().ConfigMaps(ns).Delete(ctx, cm.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A further Lease owned by the same ConfigMap shows when the collector has acted.
	witness := lease(ns, "witness", "host-1", "", 1, time.Now(), false)
	witness.OwnerReferences = pre.OwnerReferences
	if _, err := client.CoordinationV1().Leases(ns).Create(ctx, witness, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := collected(ctx, ns, "witness"); err != nil {
		t.Fatalf("the garbage collector did not delete the witness Lease of the deleted ConfigMap: %v", err)
	}
	if got := b.get(t, "pre"); *got.Spec.HolderIdentity != b.id {
		t.Fatalf("Lease pre changed: holder %q", *got.Spec.HolderIdentity)
	}
}

// TestEveryLeaseCreateIsCapped: without the namespace opt-in, the Lease holder policy
// covers only labelled Leases, and the Role of kubectl leasehold rbac lets a workload
// create any Lease (RBAC cannot narrow create by name). Before the fix, Pod A could
// create the unlabelled Lease of a lock another workload uses later with
// leaseDurationSeconds 2^31-1 (the agents waited 68 years) or leaseTransitions 2^31-1
// (no acquisition could get a greater token: the lock was dead). Now every Lease create
// by a ServiceAccount is capped, labelled or not; an ordinary elector's create is not
// affected.
func TestEveryLeaseCreateIsCapped(t *testing.T) {
	ctx := context.Background()
	testenv.InstallAdmissionPolicy(t, restCfg)
	ns := createNamespace(t)
	if _, err := testenv.CreateServiceAccount(ctx, client, ns, "app", leaseRights); err != nil {
		t.Fatal(err)
	}
	a := podWriter(t, ns, "app", "pod-a")
	unbound := saWriter(t, ns, "app")
	const policy = testenv.LeaseCreatePolicy

	squat := lease(ns, "db-migration", "squatter", "", 1, time.Now(), false)
	squat.Spec.LeaseDurationSeconds = ptr.To(int32(2147483647))
	_, err := a.leases.Create(ctx, squat, metav1.CreateOptions{})
	refusedBy(t, policy, "Pod A creates an unlabelled Lease with leaseDurationSeconds 2^31-1", err,
		"spec.leaseDurationSeconds 2147483647 would block a lock of that name for more than an hour")
	squat.Spec.LeaseDurationSeconds = ptr.To(int32(15))
	squat.Spec.LeaseTransitions = ptr.To(int32(2147483647))
	_, err = unbound.leases.Create(ctx, squat, metav1.CreateOptions{})
	refusedBy(t, policy, "a token of no Pod creates an unlabelled Lease with leaseTransitions 2^31-1", err,
		"spec.leaseTransitions 2147483647 leaves too few fencing tokens")

	// At the caps, and a client-go elector's create (hostname, token 0): allowed.
	edge := lease(ns, "edge", "host-1", "", 1<<30, time.Now(), false)
	edge.Spec.LeaseDurationSeconds = ptr.To(int32(3600))
	_, err = a.leases.Create(ctx, edge, metav1.CreateOptions{})
	allowed(t, "an unlabelled Lease at both caps", err)
	_, err = unbound.leases.Create(ctx, lease(ns, "elector", "host-1", "", 0, time.Now(), false), metav1.CreateOptions{})
	allowed(t, "a client-go elector's create (no Pod-bound token, its hostname as holder)", err)

	// Labelled or opted in: the holder policy's rules 5 and 6, with its message.
	labelled := record(ns, "labelled", a.id, 1)
	labelled.Spec.LeaseDurationSeconds = ptr.To(int32(3601))
	_, err = a.leases.Create(ctx, labelled, metav1.CreateOptions{})
	refused(t, "a labelled Lease with leaseDurationSeconds 3601", err, "is more than 3600")

	// People are not restricted.
	_, err = client.CoordinationV1().Leases(ns).Create(ctx, squat, metav1.CreateOptions{})
	allowed(t, "a person creates a Lease with leaseTransitions 2^31-1", err)
}
