package kubectl

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/lock"
	"github.com/leasehold/leasehold/webhook"
)

// writer is one identity writing Leases in a namespace: a Pod's (Pod-bound token) or
// a ServiceAccount's without a Pod.
type writer struct {
	id     string // holder identity <pod-name>_<pod-uid>; empty without a Pod
	ns     string
	leases coordinationclient.LeaseInterface
	cs     kubernetes.Interface
	token  string
}

func podWriter(t *testing.T, ns, sa, name string) *writer {
	t.Helper()
	ctx := context.Background()
	pod, err := testenv.CreatePod(ctx, client, ns, name, sa)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := testenv.Token(ctx, client, ns, sa, pod)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(testenv.TokenConfig(restCfg, tok))
	return &writer{id: pod.Name + "_" + string(pod.UID), ns: ns, leases: cs.CoordinationV1().Leases(ns), cs: cs, token: tok}
}

func saWriter(t *testing.T, ns, sa string) *writer {
	t.Helper()
	tok, err := testenv.Token(context.Background(), client, ns, sa, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(testenv.TokenConfig(restCfg, tok))
	return &writer{ns: ns, leases: cs.CoordinationV1().Leases(ns), cs: cs, token: tok}
}

// record is a Lease as an agent writes it: holder, token, 15s, the managed-by label.
func record(ns, name, holder string, token int32) *coordinationv1.Lease {
	return lease(ns, name, holder, "mutex", token, time.Now(), true)
}

func allowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: want it allowed, got %v", what, err)
	}
}

// refused checks that the API server refused a write with 403 and a message of the
// Leasehold policy that contains want.
func refused(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s: the API server allowed it; want it refused by the admission policy", what)
	case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "leasehold-lease-holder") || !strings.Contains(err.Error(), "leasehold: "):
		t.Fatalf("%s: want 403 from ValidatingAdmissionPolicy leasehold-lease-holder, got %v", what, err)
	case !strings.Contains(err.Error(), want):
		t.Fatalf("%s: refused with %q, want a message containing %q", what, err, want)
	}
}

func (w *writer) get(t *testing.T, name string) *coordinationv1.Lease {
	t.Helper()
	l, err := client.CoordinationV1().Leases(w.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestAdmissionPolicy proves guarantee 4.7 on a real kube-apiserver with the policy of
// manifests/base: two Pods of one ServiceAccount, whose RBAC lets them write any Lease
// of the namespace (what the agents' ClusterRole grants, and delete too), each with a
// Pod-bound token from the TokenRequest API like the kubelet mounts.
func TestAdmissionPolicy(t *testing.T) {
	ctx := context.Background()
	testenv.InstallAdmissionPolicy(t, restCfg)
	ns := createNamespace(t)
	if _, err := testenv.CreateServiceAccount(ctx, client, ns, "app", []rbacv1.PolicyRule{{
		APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
		Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
	}}); err != nil {
		t.Fatal(err)
	}
	a, b := podWriter(t, ns, "app", "pod-a"), podWriter(t, ns, "app", "pod-b")
	unbound := saWriter(t, ns, "app")
	// bHolds is a Lease that Pod B took with its own token.
	bHolds := func(t *testing.T, name string) *coordinationv1.Lease {
		t.Helper()
		l, err := b.leases.Create(ctx, record(ns, name, b.id, 1), metav1.CreateOptions{})
		allowed(t, "Pod B takes a free lock under its own name", err)
		return l
	}

	t.Run("a Pod-bound token names its Pod", func(t *testing.T) {
		r, err := a.cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		u := r.Status.UserInfo
		name, uid, _ := strings.Cut(a.id, "_")
		if u.Username != "system:serviceaccount:"+ns+":app" ||
			strings.Join(u.Extra["authentication.kubernetes.io/pod-name"], ",") != name ||
			strings.Join(u.Extra["authentication.kubernetes.io/pod-uid"], ",") != uid {
			t.Fatalf("user info of Pod A's token: %+v; want its ServiceAccount and extra pod-name %s, pod-uid %s", u, name, uid)
		}
	})

	t.Run("a Pod cannot name another Pod as holder", func(t *testing.T) {
		_, err := a.leases.Create(ctx, record(ns, "named", b.id, 1), metav1.CreateOptions{})
		refused(t, "Pod A creates a Lease held by Pod B", err, `spec.holderIdentity "`+b.id+`" is not the writing Pod (`+a.id+`)`)
		_, err = a.leases.Create(ctx, record(ns, "named", "pod-b", 1), metav1.CreateOptions{})
		refused(t, "Pod A names a holder that is not a Pod identity", err, "is not the writing Pod")
	})

	t.Run("only the holder clears or renews a live hold", func(t *testing.T) {
		l := bHolds(t, "clear")
		cleared := l.DeepCopy()
		cleared.Spec.HolderIdentity = ptr.To("")
		cleared.Spec.LeaseDurationSeconds = ptr.To(int32(1))
		_, err := a.leases.Update(ctx, cleared, metav1.UpdateOptions{})
		refused(t, "Pod A clears Pod B's hold", err, "is held by "+b.id+": only its holder clears or hands it over")

		renewed := l.DeepCopy()
		renewed.Spec.RenewTime = &metav1.MicroTime{Time: time.Now().Add(time.Minute)}
		_, err = a.leases.Update(ctx, renewed, metav1.UpdateOptions{})
		refused(t, "Pod A renews Pod B's hold for it", err, "is not the writing Pod")

		// The holder itself renews and then clears: both allowed.
		l, err = b.leases.Update(ctx, renewed, metav1.UpdateOptions{})
		allowed(t, "Pod B renews its own hold", err)
		l.Spec.HolderIdentity = ptr.To("")
		l.Spec.LeaseDurationSeconds = ptr.To(int32(1))
		_, err = b.leases.Update(ctx, l, metav1.UpdateOptions{})
		allowed(t, "Pod B releases its own hold", err)
	})

	t.Run("a waiter queues on a held Lease only leaving the record as it is", func(t *testing.T) {
		l := bHolds(t, "queue")
		queued := l.DeepCopy()
		queued.Annotations[lock.AnnotationQueue] = a.id // its entry, the rest kept (as the agent writes it)
		l, err := a.leases.Update(ctx, queued, metav1.UpdateOptions{})
		allowed(t, "Pod A adds its entry to the queue of Pod B's Lease", err)
		left := l.DeepCopy()
		delete(left.Annotations, lock.AnnotationQueue)
		l, err = a.leases.Update(ctx, left, metav1.UpdateOptions{})
		allowed(t, "Pod A takes its entry out again", err)
		sneak := l.DeepCopy()
		sneak.Annotations = map[string]string{lock.AnnotationQueue: a.id}
		sneak.Spec.RenewTime = &metav1.MicroTime{Time: time.Now().Add(time.Minute)}
		_, err = a.leases.Update(ctx, sneak, metav1.UpdateOptions{})
		refused(t, "Pod A queues and renews Pod B's hold in one write", err, "is not the writing Pod")
		byUnbound := l.DeepCopy()
		byUnbound.Annotations = map[string]string{lock.AnnotationQueue: "someone"}
		_, err = unbound.leases.Update(ctx, byUnbound, metav1.UpdateOptions{})
		refused(t, "a token bound to no Pod queues", err, "bound to no Pod")
	})

	t.Run("a takeover names the writer and the next token", func(t *testing.T) {
		l := bHolds(t, "takeover")
		same := l.DeepCopy()
		same.Spec.HolderIdentity = ptr.To(a.id)
		_, err := a.leases.Update(ctx, same, metav1.UpdateOptions{})
		refused(t, "Pod A takes over with the same token", err, "with spec.leaseTransitions 2")
		skip := same.DeepCopy()
		skip.Spec.LeaseTransitions = ptr.To(int32(5))
		_, err = a.leases.Update(ctx, skip, metav1.UpdateOptions{})
		refused(t, "Pod A takes over skipping tokens", err, "is held by")

		// What the API server cannot check: whether B's hold has run out. It has no
		// clock, so a Pod allowed to write the Lease can take a live hold under its own
		// name with the next token. Separate ServiceAccounts with per-lock
		// resourceNames (kubectl leasehold rbac) close that.
		next := same.DeepCopy()
		next.Spec.LeaseTransitions = ptr.To(int32(2))
		_, err = a.leases.Update(ctx, next, metav1.UpdateOptions{})
		allowed(t, "Pod A takes over under its own name with the next token (the documented limit)", err)
	})

	t.Run("fencing tokens never go down", func(t *testing.T) {
		l, err := b.leases.Create(ctx, record(ns, "tokens", b.id, 7), metav1.CreateOptions{})
		allowed(t, "Pod B creates a Lease going on from token 7", err)
		for _, tok := range []int32{6, 0, 9} {
			w := l.DeepCopy()
			w.Spec.LeaseTransitions = ptr.To(tok)
			_, err := b.leases.Update(ctx, w, metav1.UpdateOptions{})
			refused(t, "the holder writes token "+itoa(tok)+" instead of 7", err, "spec.leaseTransitions (the fencing token) 7 -> "+itoa(tok))
		}
		// Re-acquiring its own Lease (a restarted agent container) is the next token.
		w := l.DeepCopy()
		w.Spec.LeaseTransitions = ptr.To(int32(8))
		l, err = b.leases.Update(ctx, w, metav1.UpdateOptions{})
		allowed(t, "the holder takes its Lease again with the next token", err)
		// A release keeps the token; an acquisition after it takes the next one.
		l.Spec.HolderIdentity = ptr.To("")
		l.Spec.LeaseTransitions = ptr.To(int32(9))
		_, err = b.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "a release that bumps the token", err, "fencing token")
		l.Spec.LeaseTransitions = ptr.To(int32(8))
		l, err = b.leases.Update(ctx, l, metav1.UpdateOptions{})
		allowed(t, "a release that keeps the token", err)
		l.Spec.HolderIdentity = ptr.To(a.id)
		_, err = a.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "an acquisition of a free Lease without the next token", err, "fencing token")
		l.Spec.LeaseTransitions = ptr.To(int32(9))
		_, err = a.leases.Update(ctx, l, metav1.UpdateOptions{})
		allowed(t, "an acquisition of a free Lease with the next token", err)

		_, err = a.leases.Create(ctx, record(ns, "tokens-high", a.id, 1<<30+1), metav1.CreateOptions{})
		refused(t, "a new Lease that starts near the largest token", err, "at most 1073741824")
		_, err = a.leases.Create(ctx, record(ns, "tokens-high", a.id, 1<<30), metav1.CreateOptions{})
		allowed(t, "a new Lease that starts at 2^30", err)
	})

	t.Run("no squatting with a long leaseDurationSeconds", func(t *testing.T) {
		max := int32(webhook.MaxLeaseDuration / time.Second)
		l := record(ns, "squat", a.id, 1)
		l.Spec.LeaseDurationSeconds = ptr.To(int32(math.MaxInt32))
		_, err := a.leases.Create(ctx, l, metav1.CreateOptions{})
		refused(t, "Pod A squats with leaseDurationSeconds 2147483647", err, "spec.leaseDurationSeconds 2147483647 is more than 3600")
		// The longest lease-duration the webhook accepts is writable, and no longer.
		l.Spec.LeaseDurationSeconds = ptr.To(max)
		l, err = a.leases.Create(ctx, l, metav1.CreateOptions{})
		allowed(t, "leaseDurationSeconds of webhook.MaxLeaseDuration", err)
		l.Spec.LeaseDurationSeconds = ptr.To(max + 1)
		_, err = a.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "a renew one second past webhook.MaxLeaseDuration", err, "leaseDurationSeconds")
	})

	t.Run("ServiceAccounts do not delete Leases", func(t *testing.T) {
		bHolds(t, "delete")
		refused(t, "Pod A deletes Pod B's Lease", a.leases.Delete(ctx, "delete", metav1.DeleteOptions{}),
			"it is held by "+b.id)
		refused(t, "Pod B deletes its own Lease (tokens would restart)", b.leases.Delete(ctx, "delete", metav1.DeleteOptions{}),
			"only with the verb force-release")
		refused(t, "a delete of the whole collection", a.leases.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}),
			"force-release")
	})

	t.Run("the managed-by label stays", func(t *testing.T) {
		l := bHolds(t, "label")
		delete(l.Labels, LabelManagedBy)
		_, err := b.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "the holder removes the label", err, "app.kubernetes.io/managed-by=leasehold may not be removed")
		_, err = a.leases.Patch(ctx, "label", types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"app.kubernetes.io/managed-by":"someone-else"}}}`), metav1.PatchOptions{})
		refused(t, "Pod A relabels Pod B's Lease", err, "leasehold: ")
	})

	t.Run("a token bound to no Pod writes no Leasehold Lease", func(t *testing.T) {
		_, err := unbound.leases.Create(ctx, record(ns, "unbound", "", 1), metav1.CreateOptions{})
		refused(t, "a ServiceAccount token without a Pod creates a free Lease", err, "a token that is bound to no Pod")
		l := bHolds(t, "unbound")
		l.Spec.HolderIdentity = ptr.To("")
		_, err = unbound.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "a ServiceAccount token without a Pod clears a hold", err, "bound to no Pod")
	})

	t.Run("a ServiceAccount name without any user extra", func(t *testing.T) {
		// A client certificate whose user name looks like a ServiceAccount's: no extra
		// at all in the user info. Refused by the rule, not by an evaluation error.
		user, err := testEnv.AddUser(envtestUser("system:serviceaccount:"+ns+":app"), restCfg)
		if err != nil {
			t.Fatal(err)
		}
		cs := kubernetes.NewForConfigOrDie(user.Config())
		_, err = cs.CoordinationV1().Leases(ns).Create(ctx, record(ns, "cert", "", 1), metav1.CreateOptions{})
		refused(t, "a certificate named like a ServiceAccount", err, "a token that is bound to no Pod")
	})

	t.Run("the ServiceAccounts of kube-system are the cluster's controllers", func(t *testing.T) {
		// The namespace controller deletes every Lease of a namespace being deleted.
		if _, err := testenv.CreateServiceAccount(ctx, client, "kube-system", "lease-cleaner-"+ns, nil); err != nil {
			t.Fatal(err)
		}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "lease-cleaner"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "app"},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "lease-cleaner-" + ns, Namespace: "kube-system"}}}
		if _, err := client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cleaner := saWriter(t, "kube-system", "lease-cleaner-"+ns)
		bHolds(t, "cleaned")
		allowed(t, "a kube-system ServiceAccount deletes a held Lease",
			cleaner.cs.CoordinationV1().Leases(ns).Delete(ctx, "cleaned", metav1.DeleteOptions{}))
	})

	t.Run("other Leases are not affected until the namespace opts in", func(t *testing.T) {
		// A client-go leader elector's Lease: no label, a hostname as holder. (Its
		// create is capped by leasehold-lease-create: TestEveryLeaseCreateIsCapped.)
		other := lease(ns, "elector", "host-1", "", 5, time.Now(), false)
		l, err := unbound.leases.Create(ctx, other, metav1.CreateOptions{})
		allowed(t, "an unlabelled Lease written without a Pod", err)
		l.Spec.HolderIdentity = ptr.To("host-2")
		l.Spec.LeaseTransitions = ptr.To(int32(0))
		l.Spec.LeaseDurationSeconds = ptr.To(int32(1 << 20))
		l, err = a.leases.Update(ctx, l, metav1.UpdateOptions{})
		allowed(t, "Pod A names another holder, resets the token and sets a long duration on an unlabelled Lease", err)

		nsObj, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nsObj.Labels["leasehold.io/bind-all-leases"] = "true"
		if _, err := client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		l.Spec.HolderIdentity = ptr.To("host-3")
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := a.leases.Update(ctx, l, metav1.UpdateOptions{})
			return apierrors.IsForbidden(err), nil
		}); err != nil {
			t.Fatalf("the namespace opted in with leasehold.io/bind-all-leases=true, but Pod A may still name host-3 as holder: %v", err)
		}
		l, err = client.CoordinationV1().Leases(ns).Get(ctx, "elector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		l.Spec.HolderIdentity = ptr.To("")
		_, err = unbound.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "in an opted-in namespace, an unlabelled Lease written without a Pod", err, "bound to no Pod")
		l.Spec.HolderIdentity = ptr.To(a.id)
		l.Spec.LeaseTransitions = ptr.To(*l.Spec.LeaseTransitions + 1)
		l.Spec.LeaseDurationSeconds = ptr.To(int32(15))
		_, err = a.leases.Update(ctx, l, metav1.UpdateOptions{})
		allowed(t, "in an opted-in namespace, Pod A takes over an elector's Lease under its own name", err)
	})

	t.Run("operators force-release with kubectl leasehold release", func(t *testing.T) {
		bHolds(t, "force")
		// A ServiceAccount without force-release (Pod A may update any Lease by RBAC).
		kcA := writeKubeconfig(t, a.token, ns)
		_, _, err := runAs(t, kcA, "", "-n", ns, "release", "force", "--yes")
		if err == nil || !strings.Contains(err.Error(), "force-release") || !strings.Contains(err.Error(), OperatorClusterRole) {
			t.Fatalf("kubectl leasehold release as Pod A: err = %v, want a refusal that names the verb force-release and ClusterRole %s", err, OperatorClusterRole)
		}

		// An operator's ServiceAccount, bound to leasehold-operator, token of no Pod.
		if _, err := testenv.CreateServiceAccount(ctx, client, ns, "ops", nil); err != nil {
			t.Fatal(err)
		}
		if err := testenv.BindServiceAccount(ctx, client, ns, "ops", "ClusterRole", OperatorClusterRole); err != nil {
			t.Fatal(err)
		}
		ops := saWriter(t, ns, "ops")
		kcOps := writeKubeconfig(t, ops.token, ns)
		out, _, err := runAs(t, kcOps, "", "-n", ns, "release", "force", "--yes")
		if err != nil {
			t.Fatalf("kubectl leasehold release as the operator: %v\n%s", err, out)
		}
		if got := b.get(t, "force"); *got.Spec.HolderIdentity != "" || *got.Spec.LeaseTransitions != 1 {
			t.Fatalf("after the operator's release: holder %q token %d, want no holder and token 1", *got.Spec.HolderIdentity, *got.Spec.LeaseTransitions)
		}
		bHolds(t, "force-delete")
		allowed(t, "the operator deletes a held Lease", ops.leases.Delete(ctx, "force-delete", metav1.DeleteOptions{}))
		// Without a Pod, the operator still names no holder.
		l := b.get(t, "force")
		l.Spec.HolderIdentity = ptr.To("ops")
		l.Spec.LeaseTransitions = ptr.To(int32(2))
		_, err = ops.leases.Update(ctx, l, metav1.UpdateOptions{})
		refused(t, "the operator names a holder", err, "is not the writing Pod")
	})

	t.Run("people are not restricted", func(t *testing.T) {
		bHolds(t, "person")
		// envtest's admin: a user certificate, not a ServiceAccount.
		allowed(t, "a person deletes a held Lease", client.CoordinationV1().Leases(ns).Delete(ctx, "person", metav1.DeleteOptions{}))
	})
}

func envtestUser(name string) envtest.User { return envtest.User{Name: name} }

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// writeKubeconfig writes a kubeconfig with token as the credential.
func writeKubeconfig(t *testing.T, token, ns string) string {
	t.Helper()
	kc, err := testenv.TokenKubeconfig(restCfg, token, ns)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
