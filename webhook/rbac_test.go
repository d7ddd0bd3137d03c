package webhook

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// webhookSA is the webhook's ServiceAccount as the API server sees its requests.
var webhookSA = rest.ImpersonationConfig{
	UserName: "system:serviceaccount:leasehold-system:leasehold-webhook",
	Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:leasehold-system", "system:authenticated"},
}

// TestWebhookMayChangeOnlyCABundle: with manifests/base's RBAC and
// webhook-config-policy.yaml on a real API server, the webhook's ServiceAccount
// (impersonated) may write the caBundle of its MutatingWebhookConfiguration, by update
// or patch, and nothing else of it or of any other webhook configuration; an operator
// still may.
func TestWebhookMayChangeOnlyCABundle(t *testing.T) {
	cfg := testenv.Start(t)
	ctx := context.Background()
	admin, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns, sa := &corev1.Namespace{}, &corev1.ServiceAccount{}
	role, rb, cr, crb := &rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}
	policy, binding := &admissionregistrationv1.ValidatingAdmissionPolicy{}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	decodeManifests(t, "namespace.yaml", ns)
	decodeManifests(t, "serviceaccount.yaml", sa)
	decodeManifests(t, "rbac.yaml", role, rb, cr, crb)
	decodeManifests(t, "webhook-config-policy.yaml", policy, binding)
	decodeManifests(t, "mutatingwebhookconfiguration.yaml", mwc)
	other := mwc.DeepCopy()
	other.Name = "someone-else"
	for _, o := range []client.Object{ns, sa, role, rb, cr, crb, policy, binding, mwc, other} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
	asWebhookCfg := rest.CopyConfig(cfg)
	asWebhookCfg.Impersonate = webhookSA
	asWebhook, err := client.New(asWebhookCfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}

	// update applies change to the current leasehold-webhook (or name) as c.
	update := func(c client.Client, name string, change func(*admissionregistrationv1.MutatingWebhookConfiguration), opts ...client.UpdateOption) error {
		m := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := admin.Get(ctx, client.ObjectKey{Name: name}, m); err != nil {
			t.Fatal(err)
		}
		change(m)
		return c.Update(ctx, m, opts...)
	}
	ignore := func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
		m.Webhooks[0].FailurePolicy = ptr.To(admissionregistrationv1.Ignore)
	}
	// The API server enforces a new policy once it has loaded it: wait for that with a
	// dry run of a change it refuses.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		err := update(asWebhook, "leasehold-webhook", ignore, client.DryRunAll)
		return err != nil && strings.Contains(err.Error(), "leasehold:"), nil
	}); err != nil {
		t.Fatalf("the webhook's ServiceAccount may set failurePolicy Ignore: %v", update(asWebhook, "leasehold-webhook", ignore, client.DryRunAll))
	}

	refused := map[string]func(*admissionregistrationv1.MutatingWebhookConfiguration){
		"failurePolicy Ignore":      ignore,
		"namespaceSelector dropped": func(m *admissionregistrationv1.MutatingWebhookConfiguration) { m.Webhooks[0].NamespaceSelector = nil },
		"matchConditions dropped":   func(m *admissionregistrationv1.MutatingWebhookConfiguration) { m.Webhooks[0].MatchConditions = nil },
		"objectSelector added": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].ObjectSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"never": "true"}}
		},
		"timeout raised": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].TimeoutSeconds = ptr.To[int32](30)
		},
		"another Service": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].ClientConfig.Service.Namespace = "attacker"
		},
		"a URL instead of the Service": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].ClientConfig.Service = nil
			m.Webhooks[0].ClientConfig.URL = ptr.To("https://attacker.example/mutate")
		},
		"rules widened to UPDATE": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].Rules[0].Operations = append(m.Webhooks[0].Rules[0].Operations, admissionregistrationv1.Update)
		},
		"label added": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Labels = map[string]string{"x": "y"}
		},
		"webhook added": func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			w := m.Webhooks[0].DeepCopy()
			w.Name = "second.leasehold.io"
			m.Webhooks = append(m.Webhooks, *w)
		},
	}
	for name, change := range refused {
		t.Run("refused: "+name, func(t *testing.T) {
			err := update(asWebhook, "leasehold-webhook", change)
			if err == nil {
				t.Fatal("the webhook's ServiceAccount made the change")
			}
			if !strings.Contains(err.Error(), "leasehold: the webhook's ServiceAccount may change only webhooks[].clientConfig.caBundle") ||
				!strings.Contains(err.Error(), "fix:") {
				t.Errorf("refused without the policy's message: %v", err)
			}
		})
	}

	bundle := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	t.Run("caBundle by update", func(t *testing.T) {
		if err := update(asWebhook, "leasehold-webhook", func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].ClientConfig.CABundle = bundle
		}); err != nil {
			t.Fatalf("the webhook's ServiceAccount could not write the caBundle: %v", err)
		}
	})
	t.Run("caBundle by patch", func(t *testing.T) {
		m := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := admin.Get(ctx, client.ObjectKey{Name: "leasehold-webhook"}, m); err != nil {
			t.Fatal(err)
		}
		patch := client.RawPatch(types.JSONPatchType, []byte(`[{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"TUlJQw=="}]`))
		if err := asWebhook.Patch(ctx, m, patch); err != nil {
			t.Fatalf("the webhook's ServiceAccount could not patch the caBundle: %v", err)
		}
	})
	t.Run("another webhook configuration", func(t *testing.T) {
		err := update(asWebhook, "someone-else", func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			m.Webhooks[0].ClientConfig.CABundle = bundle
		})
		if !apierrors.IsForbidden(err) {
			t.Errorf("want RBAC's 403 for another webhook configuration, got %v", err)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if err := asWebhook.Delete(ctx, mwc.DeepCopy()); err == nil {
			t.Error("the webhook's ServiceAccount deleted its webhook configuration")
		}
	})
	t.Run("an operator may change the rest", func(t *testing.T) {
		if err := update(admin, "leasehold-webhook", ignore); err != nil {
			t.Errorf("an operator could not set failurePolicy Ignore: %v", err)
		}
	})
}
