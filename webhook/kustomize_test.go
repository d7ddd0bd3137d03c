package webhook

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
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
		"ValidatingAdmissionPolicy/leasehold-lease-create", "ValidatingAdmissionPolicy/leasehold-lease-holder",
		"ValidatingAdmissionPolicy/leasehold-pod-annotations", "ValidatingAdmissionPolicy/leasehold-pod-binding",
		"ValidatingAdmissionPolicy/leasehold-webhook-cabundle-only", "ValidatingAdmissionPolicy/leasehold-webhook-priorityclass",
		"ValidatingAdmissionPolicyBinding/leasehold-bind-all-leases", "ValidatingAdmissionPolicyBinding/leasehold-lease-create",
		"ValidatingAdmissionPolicyBinding/leasehold-managed-leases",
		"ValidatingAdmissionPolicyBinding/leasehold-pod-annotations", "ValidatingAdmissionPolicyBinding/leasehold-pod-binding",
		"ValidatingAdmissionPolicyBinding/leasehold-webhook-cabundle-only", "ValidatingAdmissionPolicyBinding/leasehold-webhook-priorityclass",
	}
	if got := kinds(base); !slices.Equal(got, want) {
		t.Errorf("base renders %v\nwant %v", got, want)
	}

	cm := render(t, "overlays/cert-manager")
	if _, ok := cm["Secret/leasehold-webhook-tls"]; ok {
		t.Error("cert-manager overlay still has the Secret cert-manager fills")
	}
	// With cert-manager the webhook writes nothing: it reads its one Secret and its one
	// webhook configuration (--cert-from-secret), no more.
	for _, k := range []string{"Role/leasehold-webhook", "ClusterRole/leasehold-webhook"} {
		if r := cm[k]; !strings.Contains(r, "resourceNames:") || strings.Contains(r, "update") || strings.Contains(r, "patch") {
			t.Errorf("cert-manager overlay: %s is not read-only and narrowed by name:\n%s", k, r)
		}
	}
	for _, kept := range []string{"ClusterRole/leasehold-agent", "Certificate/leasehold-webhook", "Issuer/leasehold-selfsigned",
		"ValidatingAdmissionPolicy/leasehold-lease-holder", "ClusterRole/leasehold-operator"} {
		if _, ok := cm[kept]; !ok {
			t.Errorf("cert-manager overlay lacks %s", kept)
		}
	}
	if !strings.Contains(cm["Deployment/leasehold-webhook"], "--self-signed-certs=false") || !strings.Contains(cm["Deployment/leasehold-webhook"], "--cert-from-secret") {
		t.Errorf("cert-manager overlay does not turn the self-managed certificates off:\n%s", cm["Deployment/leasehold-webhook"])
	}
	if !strings.Contains(cm["Certificate/leasehold-webhook"], "secretName: leasehold-webhook-tls") {
		t.Errorf("the Certificate does not fill the Secret the Deployment mounts")
	}
}

// TestCertManagerOverlayIssuesFromACA renders overlays/cert-manager and follows the
// chain: the serving Certificate is issued by a CA Issuer whose CA is a Certificate of
// its own (isCA, key kept on renewal), issued by a self-signed Issuer; the webhook
// configuration's caBundle is injected from that CA. So renewing the serving
// certificate never changes the caBundle (a self-signed leaf would replace it on every
// renewal, and calls would fail until the API server and every replica caught up).
func TestCertManagerOverlayIssuesFromACA(t *testing.T) {
	cm := render(t, "overlays/cert-manager")
	obj := func(key string) map[string]any {
		t.Helper()
		y, ok := cm[key]
		if !ok {
			t.Fatalf("the overlay renders no %s (it renders %v)", key, kinds(cm))
		}
		m := map[string]any{}
		if err := yaml.Unmarshal([]byte(y), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	get := func(m map[string]any, path ...string) any {
		var v any = m
		for _, p := range path {
			mm, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = mm[p]
		}
		return v
	}
	issuerOf := func(cert map[string]any) map[string]any {
		t.Helper()
		if kind := get(cert, "spec", "issuerRef", "kind"); kind != "Issuer" {
			t.Fatalf("issuerRef kind %v, want Issuer", kind)
		}
		return obj("Issuer/" + get(cert, "spec", "issuerRef", "name").(string))
	}

	serving := obj("Certificate/leasehold-webhook")
	if get(serving, "spec", "isCA") == true {
		t.Errorf("the serving certificate is a CA")
	}
	caIssuer := issuerOf(serving)
	caSecret, _ := get(caIssuer, "spec", "ca", "secretName").(string)
	if caSecret == "" {
		t.Fatalf("the serving certificate's Issuer %v is not a CA Issuer: %v", get(caIssuer, "metadata", "name"), get(caIssuer, "spec"))
	}
	var ca map[string]any
	for _, k := range kinds(cm) {
		if strings.HasPrefix(k, "Certificate/") && get(obj(k), "spec", "secretName") == caSecret {
			ca = obj(k)
		}
	}
	if ca == nil {
		t.Fatalf("no Certificate fills the CA Issuer's Secret %s", caSecret)
	}
	if get(ca, "spec", "isCA") != true {
		t.Errorf("the CA Certificate is not isCA")
	}
	if p := get(ca, "spec", "privateKey", "rotationPolicy"); p != "Never" {
		t.Errorf("the CA's privateKey.rotationPolicy is %v, want Never: a renewed CA with a new key would not verify the serving certificates issued before", p)
	}
	if get(issuerOf(ca), "spec", "selfSigned") == nil {
		t.Errorf("the CA is not issued by a self-signed Issuer")
	}
	if caSecret == get(serving, "spec", "secretName") {
		t.Errorf("the CA's key would land in the Secret the webhook mounts")
	}
	want := "leasehold-system/" + get(ca, "metadata", "name").(string)
	if got := get(obj("MutatingWebhookConfiguration/leasehold-webhook"), "metadata", "annotations", "cert-manager.io/inject-ca-from"); got != want {
		t.Errorf("caBundle injected from %v, want the CA Certificate %s", got, want)
	}
}
