package webhook

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// TestPodAnnotationsAreFixedAfterCreation loads manifests/base/pod-annotations-policy.yaml
// into a real API server and updates Pods as `kubectl annotate` and a status writer
// would: leasehold.io/ annotations added, changed or removed after creation are refused
// with the policy's message and fix; other annotations, labels and status are not, nor
// Pods in kube-system and leasehold-system.
func TestPodAnnotationsAreFixedAfterCreation(t *testing.T) {
	cfg := testenv.Start(t)
	ctx := context.Background()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	own := &corev1.Namespace{}
	policy, binding := &admissionregistrationv1.ValidatingAdmissionPolicy{}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	decodeManifests(t, "namespace.yaml", own)
	// The policy on Bindings, also in this file: TestTenantsCannotBypassThePodPolicies.
	decodeManifests(t, "pod-annotations-policy.yaml", policy, binding,
		&admissionregistrationv1.ValidatingAdmissionPolicy{}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{})
	for _, o := range []client.Object{own, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}, policy, binding} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("create %s: %v", o.GetName(), err)
		}
	}

	seq := 0
	newPod := func(t *testing.T, ns string, annotations map[string]string) *corev1.Pod {
		t.Helper()
		seq++
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", seq), Annotations: annotations},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
		}
		restrictedApp(p) // leasehold-system enforces the restricted profile
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	injected := func() map[string]string {
		return map[string]string{AnnotationLocks: "db", AnnotationStatus: StatusInjected, "team": "a"}
	}
	annotate := func(p *corev1.Pod, change func(map[string]string), opts ...client.UpdateOption) error {
		fresh := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), fresh); err != nil {
			t.Fatal(err)
		}
		if fresh.Annotations == nil {
			fresh.Annotations = map[string]string{}
		}
		change(fresh.Annotations)
		return c.Update(ctx, fresh, opts...)
	}

	// The API server enforces a new policy once it has loaded it.
	probe := newPod(t, "team-a", injected())
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		err := annotate(probe, func(a map[string]string) { a[AnnotationLeader] = "x" }, client.DryRunAll)
		return err != nil, nil
	}); err != nil {
		t.Fatal("leasehold.io/leader was added to a running Pod")
	}

	refused := map[string]struct {
		before map[string]string
		change func(map[string]string)
		names  string
	}{
		"lock added":               {injected(), func(a map[string]string) { a[AnnotationLeader] = "scheduler" }, AnnotationLeader},
		"lock changed":             {injected(), func(a map[string]string) { a[AnnotationLocks] = "db,other" }, AnnotationLocks},
		"status removed":           {injected(), func(a map[string]string) { delete(a, AnnotationStatus) }, AnnotationStatus},
		"all removed":              {injected(), func(a map[string]string) { clear(a) }, AnnotationLocks},
		"status on a plain Pod":    {nil, func(a map[string]string) { a[AnnotationStatus] = StatusInjected }, AnnotationStatus},
		"locks on a plain Pod":     {map[string]string{"team": "a"}, func(a map[string]string) { a[AnnotationLocks] = "db" }, AnnotationLocks},
		"opt-out added afterwards": {injected(), func(a map[string]string) { a[AnnotationInject] = "false" }, AnnotationInject},
	}
	for name, tc := range refused {
		t.Run("refused: "+name, func(t *testing.T) {
			p := newPod(t, "team-a", tc.before)
			err := annotate(p, tc.change)
			if err == nil {
				t.Fatal("the update was admitted")
			}
			if !apierrors.IsInvalid(err) {
				t.Errorf("want 422 Invalid, got %v", err)
			}
			for _, w := range []string{"leasehold: the leasehold.io/ annotations of a Pod are fixed when it is created",
				tc.names, "fix: recreate the Pod", "Pod template"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}

	t.Run("refused through pods/status", func(t *testing.T) {
		p := newPod(t, "team-a", injected())
		fresh := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), fresh); err != nil {
			t.Fatal(err)
		}
		fresh.Annotations[AnnotationLeader] = "scheduler"
		if err := c.Status().Update(ctx, fresh); err == nil {
			got := &corev1.Pod{}
			_ = c.Get(ctx, client.ObjectKeyFromObject(p), got)
			t.Errorf("a status update was admitted; the Pod's annotations are now %v", got.Annotations)
		}
	})

	t.Run("other changes are admitted", func(t *testing.T) {
		p := newPod(t, "team-a", injected())
		if err := annotate(p, func(a map[string]string) { a["team"] = "b"; a["note"] = "x" }); err != nil {
			t.Errorf("another annotation: %v", err)
		}
		fresh := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), fresh); err != nil {
			t.Fatal(err)
		}
		fresh.Labels = map[string]string{"version": "2"}
		if err := c.Update(ctx, fresh); err != nil {
			t.Errorf("a label: %v", err)
		}
		fresh.Status.Phase = corev1.PodRunning
		if err := c.Status().Update(ctx, fresh); err != nil {
			t.Errorf("status: %v", err)
		}
		plain := newPod(t, "team-a", nil)
		if err := annotate(plain, func(a map[string]string) { a["note"] = "x" }); err != nil {
			t.Errorf("an annotation on a plain Pod: %v", err)
		}
	})

	for _, ns := range []string{"kube-system", "leasehold-system"} {
		t.Run("not in "+ns, func(t *testing.T) {
			p := newPod(t, ns, nil)
			if err := annotate(p, func(a map[string]string) { a[AnnotationLocks] = "db" }); err != nil {
				t.Errorf("refused in %s: %v", ns, err)
			}
		})
	}
}
