package webhook

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// TestTenantsCannotBypassThePodPolicies loads what manifests/base renders for Pods
// (its namespace, the PriorityClass and every Pod policy with its binding) into a real
// API server and tries, as a tenant would, the two ways around them that the security
// review found:
//   - pods/binding (and the older bindings resource) copies the Binding's annotations
//     onto the Pod: leasehold.io/ annotations set that way escaped the annotation
//     freeze, which covered only updates of pods and pods/status;
//   - any Pod could name the PriorityClass leasehold-webhook, priority 1000000, and
//     preempt other tenants' Pods.
//
// Other subresources that write a Pod cannot change its annotations: the API server
// resets metadata on updates of pods/ephemeralcontainers and pods/resize
// (ResetObjectMetaForStatus), and pods/eviction only deletes.
func TestTenantsCannotBypassThePodPolicies(t *testing.T) {
	cfg := testenv.Start(t)
	ctx := context.Background()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	for key, y := range render(t, "base") {
		kind, name, _ := strings.Cut(key, "/")
		switch {
		case kind == "Namespace", kind == "PriorityClass",
			(kind == "ValidatingAdmissionPolicy" || kind == "ValidatingAdmissionPolicyBinding") &&
				(strings.HasPrefix(name, "leasehold-pod-") || name == "leasehold-webhook-priorityclass"):
		default:
			continue
		}
		o := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(y), &o.Object); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}); err != nil {
		t.Fatal(err)
	}
	seq := 0
	newPod := func(t *testing.T, ns, priorityClass string, dryRun bool) (*corev1.Pod, error) {
		t.Helper()
		seq++
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", seq), Annotations: map[string]string{"team": "a"}},
			Spec:       corev1.PodSpec{PriorityClassName: priorityClass, Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
		}
		restrictedApp(p) // leasehold-system enforces the restricted profile
		var opts []client.CreateOption
		if dryRun {
			opts = append(opts, client.DryRunAll)
		}
		return p, c.Create(ctx, p, opts...)
	}
	bind := func(p *corev1.Pod, annotations map[string]string, legacy bool, dryRun bool) error {
		b := &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Annotations: annotations},
			Target:     corev1.ObjectReference{Kind: "Node", Name: "node-1"},
		}
		opts := metav1.CreateOptions{}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if legacy {
			return cs.CoreV1().RESTClient().Post().Namespace(p.Namespace).Resource("bindings").
				VersionedParams(&opts, metav1.ParameterCodec).Body(b).Do(ctx).Error()
		}
		return cs.CoreV1().Pods(p.Namespace).Bind(ctx, b, opts)
	}
	frozen := map[string]string{AnnotationLocks: "db", AnnotationStatus: StatusInjected}

	// The API server enforces new policies once it has loaded them: wait for both, or
	// until it is clear that they are not there (then the subtests say what got through).
	probe, err := newPod(t, "team-a", "", false)
	if err != nil {
		t.Fatal(err)
	}
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		_, pcErr := newPod(t, "team-a", "leasehold-webhook", true)
		return bind(probe, frozen, false, true) != nil && pcErr != nil, nil
	})

	for _, legacy := range []bool{false, true} {
		resource := "pods/binding"
		if legacy {
			resource = "bindings"
		}
		t.Run("a Binding through "+resource+" sets no leasehold.io/ annotation", func(t *testing.T) {
			p, err := newPod(t, "team-a", "", false)
			if err != nil {
				t.Fatal(err)
			}
			err = bind(p, frozen, legacy, false)
			if err == nil {
				got := &corev1.Pod{}
				_ = c.Get(ctx, client.ObjectKeyFromObject(p), got)
				t.Fatalf("the Binding was admitted; the Pod's annotations are now %v", got.Annotations)
			}
			if !apierrors.IsInvalid(err) {
				t.Errorf("want 422 Invalid, got %v", err)
			}
			// (The keys come in the map's order.)
			for _, w := range []string{"leasehold: a Binding would set ", AnnotationLocks, AnnotationStatus, "on Pod team-a/" + p.Name, "fix: bind without"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			// The scheduler's Binding, with another annotation or none, is admitted.
			if err := bind(p, map[string]string{"scheduler.example.com/note": "x"}, legacy, false); err != nil {
				t.Fatalf("a Binding without leasehold.io/ annotations: %v", err)
			}
			got := &corev1.Pod{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(p), got); err != nil {
				t.Fatal(err)
			}
			if got.Spec.NodeName != "node-1" || got.Annotations[AnnotationLocks] != "" {
				t.Errorf("after the scheduler's Binding: node %q, annotations %v", got.Spec.NodeName, got.Annotations)
			}
		})
	}
	t.Run("a Binding in kube-system is not checked", func(t *testing.T) {
		p, err := newPod(t, "kube-system", "", false)
		if err != nil {
			t.Fatal(err)
		}
		if err := bind(p, frozen, false, false); err != nil {
			t.Errorf("refused in kube-system: %v", err)
		}
	})

	t.Run("the webhook's PriorityClass only in its namespace", func(t *testing.T) {
		_, err := newPod(t, "team-a", "leasehold-webhook", false)
		switch {
		case err == nil:
			t.Fatal("a tenant's Pod with priorityClassName leasehold-webhook was admitted")
		case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "the PriorityClass leasehold-webhook is for the Leasehold webhook"):
			t.Fatalf("want 403 from the priority class policy, got %v", err)
		}
		if _, err := newPod(t, "leasehold-system", "leasehold-webhook", false); err != nil {
			t.Errorf("the webhook's own namespace: %v", err)
		}
		if _, err := newPod(t, "team-a", "", false); err != nil {
			t.Errorf("a tenant's Pod without a PriorityClass: %v", err)
		}
	})
}
