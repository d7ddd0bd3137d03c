package webhook

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// TestManifests decodes manifests/base strictly into typed objects and checks what the
// issue and the contract ask of them.
func TestManifests(t *testing.T) {
	t.Run("webhook configuration", func(t *testing.T) {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		decodeManifests(t, "mutatingwebhookconfiguration.yaml", mwc)
		if len(mwc.Webhooks) != 1 {
			t.Fatalf("%d webhooks", len(mwc.Webhooks))
		}
		w := mwc.Webhooks[0]
		if s := w.ClientConfig.Service; s == nil || s.Name != "leasehold-webhook" || s.Namespace != "leasehold-system" ||
			s.Path == nil || *s.Path != Path || s.Port == nil || *s.Port != 443 {
			t.Errorf("clientConfig.service %+v", s)
		}
		if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Fail {
			t.Errorf("failurePolicy %v, want Fail", w.FailurePolicy)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
			t.Errorf("sideEffects %v", w.SideEffects)
		}
		if w.TimeoutSeconds == nil || *w.TimeoutSeconds > 5 {
			t.Errorf("timeoutSeconds %v, want at most 5", w.TimeoutSeconds)
		}
		if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
			t.Errorf("reinvocationPolicy %v", w.ReinvocationPolicy)
		}
		if len(w.MatchConditions) == 0 {
			t.Errorf("no matchConditions")
		}
		wantSel := []string{"kube-system", "leasehold-system"}
		if w.NamespaceSelector == nil || len(w.NamespaceSelector.MatchExpressions) != 1 ||
			w.NamespaceSelector.MatchExpressions[0].Key != "kubernetes.io/metadata.name" ||
			!cmp.Equal(w.NamespaceSelector.MatchExpressions[0].Values, wantSel) {
			t.Errorf("namespaceSelector %+v, want NotIn %v", w.NamespaceSelector, wantSel)
		}
		if len(w.Rules) != 1 || !cmp.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
			!cmp.Equal(w.Rules[0].Resources, []string{"pods"}) {
			t.Errorf("rules %+v", w.Rules)
		}
	})

	t.Run("deployment", func(t *testing.T) {
		d := &appsv1.Deployment{}
		decodeManifests(t, "deployment.yaml", d)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			t.Errorf("replicas %v, want 2", d.Spec.Replicas)
		}
		c := d.Spec.Template.Spec.Containers[0]
		if c.Image != DefaultAgentImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("image %s %s", c.Image, c.ImagePullPolicy)
		}
		ports := map[string]int32{}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
		if diff := cmp.Diff(map[string]int32{"webhook": 9443, "metrics": 8443, "health": 8081}, ports); diff != "" {
			t.Errorf("ports (-want +got):\n%s", diff)
		}
		// Memory: the limit holds the binary's pages (~40 MiB) beside GOMEMLIMIT, which
		// is what BenchmarkLargeReview measured the largest reviews in flight under.
		limit := c.Resources.Limits[corev1.ResourceMemory]
		var goLimit resource.Quantity
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				goLimit = resource.MustParse(strings.TrimSuffix(e.Value, "B"))
			}
		}
		if goLimit.Value() != benchMemLimit || goLimit.Value()+48<<20 > limit.Value() {
			t.Errorf("memory limit %s, GOMEMLIMIT %s: want GOMEMLIMIT %d MiB (BenchmarkLargeReview's; measure again to change it) "+
				"and the limit 48Mi above it at least", limit.String(), goLimit.String(), benchMemLimit>>20)
		}
		evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
		if err != nil {
			t.Fatal(err)
		}
		res := policy.AggregateCheckResults(evaluator.EvaluatePod(
			psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()},
			&d.Spec.Template.ObjectMeta, &d.Spec.Template.Spec))
		if !res.Allowed {
			t.Errorf("webhook pod is not restricted: %s: %s", res.ForbiddenReason(), res.ForbiddenDetail())
		}
		pdb := &policyv1.PodDisruptionBudget{}
		decodeManifests(t, "pdb.yaml", pdb)
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 ||
			!cmp.Equal(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
			t.Errorf("pdb %+v", pdb.Spec)
		}
		svc := &corev1.Service{}
		decodeManifests(t, "service.yaml", svc)
		if !cmp.Equal(svc.Spec.Selector, d.Spec.Template.Labels) {
			t.Errorf("service selector %v, pod labels %v", svc.Spec.Selector, d.Spec.Template.Labels)
		}

		// The serving key pair only: the CA's key, which signs every new serving
		// certificate, stays in the Secret (the rotator reads it through the API).
		// optional: the Secret is empty until the first replica's rotator fills it, and
		// the kubelet refuses to mount a listed key that is missing otherwise.
		var certs *corev1.SecretVolumeSource
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "leasehold-webhook-tls" {
				certs = v.Secret
			}
		}
		if certs == nil {
			t.Fatal("no volume of Secret leasehold-webhook-tls")
		}
		if diff := cmp.Diff([]corev1.KeyToPath{{Key: "tls.crt", Path: "tls.crt"}, {Key: "tls.key", Path: "tls.key"}}, certs.Items); diff != "" {
			t.Errorf("mounted keys of the TLS Secret (-want +got):\n%s", diff)
		}
		if certs.Optional == nil || !*certs.Optional {
			t.Errorf("the TLS Secret volume is not optional: the first Pod would wait for keys only it can write")
		}

		// Ingress: the webhook and metrics ports only, to these Pods.
		np := &networkingv1.NetworkPolicy{}
		decodeManifests(t, "networkpolicy.yaml", np)
		if !cmp.Equal(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) || !cmp.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
			t.Errorf("network policy selects %v (pods are %v), types %v", np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels, np.Spec.PolicyTypes)
		}
		var open []int32
		for _, r := range np.Spec.Ingress {
			if len(r.From) != 0 {
				t.Errorf("ingress rule with sources %+v: the API server's address cannot be selected", r.From)
			}
			for _, p := range r.Ports {
				if p.Port == nil || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
					t.Errorf("ingress port %+v", p)
					continue
				}
				open = append(open, p.Port.IntVal)
			}
		}
		if diff := cmp.Diff([]int32{ports["webhook"], ports["metrics"]}, open); diff != "" {
			t.Errorf("ingress ports (-want +got):\n%s", diff)
		}

		// Priority: above ordinary workloads, below the system classes.
		pc := &schedulingv1.PriorityClass{}
		decodeManifests(t, "priorityclass.yaml", pc)
		if d.Spec.Template.Spec.PriorityClassName != pc.Name {
			t.Errorf("priorityClassName %q, want %q", d.Spec.Template.Spec.PriorityClassName, pc.Name)
		}
		if pc.Value <= 0 || pc.Value > 1000000000 || pc.GlobalDefault {
			t.Errorf("priority class value %d (want 1 to 1e9, the user range), globalDefault %v", pc.Value, pc.GlobalDefault)
		}
	})

	t.Run("webhook RBAC has no Lease rights", func(t *testing.T) {
		role, rb, cr, crb := &rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}
		decodeManifests(t, "rbac.yaml", role, rb, cr, crb)
		for _, r := range append(append([]rbacv1.PolicyRule{}, role.Rules...), cr.Rules...) {
			if slices.Contains(r.APIGroups, "coordination.k8s.io") || slices.Contains(r.Resources, "pods") || slices.Contains(r.Verbs, "*") {
				t.Errorf("webhook rule too broad: %+v", r)
			}
			for _, v := range r.Verbs {
				if (v == "update" || v == "patch") && len(r.ResourceNames) == 0 {
					t.Errorf("write rule not narrowed to resourceNames: %+v", r)
				}
			}
		}
	})

	t.Run("metrics RBAC: review rights for the webhook, get /metrics for readers", func(t *testing.T) {
		auth, authBinding, reader := &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}, &rbacv1.ClusterRole{}
		decodeManifests(t, "metrics-rbac.yaml", auth, authBinding, reader)
		want := []rbacv1.PolicyRule{
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
		}
		if diff := cmp.Diff(want, auth.Rules); diff != "" {
			t.Errorf("%s rules (-want +got):\n%s", auth.Name, diff)
		}
		if authBinding.RoleRef.Name != auth.Name || len(authBinding.Subjects) != 1 || authBinding.Subjects[0].Name != "leasehold-webhook" {
			t.Errorf("binding %+v", authBinding)
		}
		if diff := cmp.Diff([]rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}, reader.Rules); diff != "" {
			t.Errorf("%s rules (-want +got):\n%s", reader.Name, diff)
		}
	})

	t.Run("agent ClusterRole as the contract says", func(t *testing.T) {
		cr := &rbacv1.ClusterRole{}
		decodeManifests(t, "agent-clusterrole.yaml", cr)
		want := []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		}
		if cr.Name != "leasehold-agent" {
			t.Errorf("name %q", cr.Name)
		}
		if diff := cmp.Diff(want, cr.Rules); diff != "" {
			t.Errorf("rules (-want +got):\n%s", diff)
		}
	})

	t.Run("kustomization lists every file", func(t *testing.T) {
		k := struct {
			Resources []string `json:"resources"`
		}{}
		b := readManifest(t, "kustomization.yaml")
		if err := yamlUnmarshal(b, &k); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "secret.yaml", "service.yaml",
			"deployment.yaml", "pdb.yaml", "mutatingwebhookconfiguration.yaml", "agent-clusterrole.yaml", "admission-policy.yaml",
			"metrics-rbac.yaml", "networkpolicy.yaml", "priorityclass.yaml", "priorityclass-policy.yaml",
			"webhook-config-policy.yaml", "pod-annotations-policy.yaml"} {
			if !slices.Contains(k.Resources, f) {
				t.Errorf("kustomization.yaml lacks %s", f)
			}
		}
		if strings.Contains(string(b), "namespace:") {
			t.Errorf("base sets a namespace transformer; the webhook's namespaceSelector names leasehold-system")
		}
	})
}
