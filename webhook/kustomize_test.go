package webhook

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// render builds a kustomization under manifests/ with kustomize's own library (what
// `kubectl kustomize` runs).
func render(t *testing.T, dir string) map[string]string {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("..", "manifests", dir))
	if err != nil {
		t.Fatalf("kustomize build manifests/%s: %v", dir, err)
	}
	out := map[string]string{}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		out[r.GetKind()+"/"+r.GetName()] = string(y)
	}
	return out
}

func kinds(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestKustomizeBuilds(t *testing.T) {
	base := render(t, "base")
	want := []string{
		"ClusterRole/leasehold-agent", "ClusterRole/leasehold-metrics-reader", "ClusterRole/leasehold-operator", "ClusterRole/leasehold-webhook",
		"ClusterRole/leasehold-webhook-metrics-auth", "ClusterRoleBinding/leasehold-webhook", "ClusterRoleBinding/leasehold-webhook-metrics-auth",
		"Deployment/leasehold-webhook", "MutatingWebhookConfiguration/leasehold-webhook", "Namespace/leasehold-system",
		"NetworkPolicy/leasehold-webhook", "PodDisruptionBudget/leasehold-webhook", "PriorityClass/leasehold-webhook",
		"Role/leasehold-webhook", "RoleBinding/leasehold-webhook",
		"Secret/leasehold-webhook-tls", "Service/leasehold-webhook", "ServiceAccount/leasehold-webhook",
		"ValidatingAdmissionPolicy/leasehold-lease-holder", "ValidatingAdmissionPolicy/leasehold-pod-annotations",
		"ValidatingAdmissionPolicy/leasehold-webhook-cabundle-only",
		"ValidatingAdmissionPolicyBinding/leasehold-bind-all-leases", "ValidatingAdmissionPolicyBinding/leasehold-managed-leases",
		"ValidatingAdmissionPolicyBinding/leasehold-pod-annotations", "ValidatingAdmissionPolicyBinding/leasehold-webhook-cabundle-only",
	}
	if got := kinds(base); !slices.Equal(got, want) {
		t.Errorf("base renders %v\nwant %v", got, want)
	}

	cm := render(t, "overlays/cert-manager")
	for _, gone := range []string{"Secret/leasehold-webhook-tls", "Role/leasehold-webhook", "RoleBinding/leasehold-webhook",
		"ClusterRole/leasehold-webhook", "ClusterRoleBinding/leasehold-webhook"} {
		if _, ok := cm[gone]; ok {
			t.Errorf("cert-manager overlay still has %s", gone)
		}
	}
	for _, kept := range []string{"ClusterRole/leasehold-agent", "Certificate/leasehold-webhook", "Issuer/leasehold-selfsigned",
		"ValidatingAdmissionPolicy/leasehold-lease-holder", "ClusterRole/leasehold-operator"} {
		if _, ok := cm[kept]; !ok {
			t.Errorf("cert-manager overlay lacks %s", kept)
		}
	}
	if !strings.Contains(cm["Deployment/leasehold-webhook"], "--self-signed-certs=false") {
		t.Errorf("cert-manager overlay does not turn the self-managed certificates off:\n%s", cm["Deployment/leasehold-webhook"])
	}
	if !strings.Contains(cm["MutatingWebhookConfiguration/leasehold-webhook"], "cert-manager.io/inject-ca-from: leasehold-system/leasehold-webhook") {
		t.Errorf("cert-manager overlay lacks the CA injection annotation")
	}
	if !strings.Contains(cm["Certificate/leasehold-webhook"], "secretName: leasehold-webhook-tls") {
		t.Errorf("the Certificate does not fill the Secret the Deployment mounts")
	}
}
