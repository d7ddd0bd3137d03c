package testenv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// ManifestsDir is manifests/ of this source tree.
func ManifestsDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "manifests")
}

// AdmissionPolicy is what manifests/base installs for guarantee 4.7: the
// ValidatingAdmissionPolicy, the one that caps every Lease create, their bindings and
// the operators' ClusterRole.
type AdmissionPolicy struct {
	Policy       *admissionregistrationv1.ValidatingAdmissionPolicy
	CreatePolicy *admissionregistrationv1.ValidatingAdmissionPolicy
	Bindings     []*admissionregistrationv1.ValidatingAdmissionPolicyBinding
	Operator     *rbacv1.ClusterRole
}

// LeasePolicy is the name of the ValidatingAdmissionPolicy of guarantee 4.7.
const LeasePolicy = "leasehold-lease-holder"

// LeaseCreatePolicy is the name of the ValidatingAdmissionPolicy that caps the duration
// and the token of every Lease a ServiceAccount creates, labelled or not.
const LeaseCreatePolicy = "leasehold-lease-create"

// OperatorClusterRole is the ClusterRole that grants the verb force-release.
const OperatorClusterRole = "leasehold-operator"

// LoadAdmissionPolicy renders manifests/base with kustomize's own library (what
// `kubectl apply -k manifests/base` runs) and returns its admission policy objects,
// decoded strictly.
func LoadAdmissionPolicy() (*AdmissionPolicy, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(ManifestsDir(), "base"))
	if err != nil {
		return nil, fmt.Errorf("kustomize build manifests/base: %w", err)
	}
	p := &AdmissionPolicy{}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		var into any
		// manifests/base has other policies too (the webhook's own configuration, Pod
		// annotations): only the Lease policy and its bindings.
		switch {
		case r.GetKind() == "ValidatingAdmissionPolicy" && r.GetName() == LeasePolicy:
			p.Policy = &admissionregistrationv1.ValidatingAdmissionPolicy{}
			into = p.Policy
		case r.GetKind() == "ValidatingAdmissionPolicy" && r.GetName() == LeaseCreatePolicy:
			p.CreatePolicy = &admissionregistrationv1.ValidatingAdmissionPolicy{}
			into = p.CreatePolicy
		case r.GetKind() == "ValidatingAdmissionPolicyBinding":
			b := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
			if err := yaml.Unmarshal(y, b); err != nil || (b.Spec.PolicyName != LeasePolicy && b.Spec.PolicyName != LeaseCreatePolicy) {
				continue
			}
			p.Bindings = append(p.Bindings, b)
			into = b
		case r.GetKind() == "ClusterRole" && r.GetName() == OperatorClusterRole:
			p.Operator = &rbacv1.ClusterRole{}
			into = p.Operator
		default:
			continue
		}
		if err := yaml.UnmarshalStrict(y, into); err != nil {
			return nil, fmt.Errorf("decode %s/%s: %w", r.GetKind(), r.GetName(), err)
		}
	}
	if p.Policy == nil || p.CreatePolicy == nil || len(p.Bindings) == 0 || p.Operator == nil {
		return nil, errors.New("manifests/base renders no ValidatingAdmissionPolicy " + LeasePolicy + " or " +
			LeaseCreatePolicy + ", no binding or no ClusterRole " + OperatorClusterRole)
	}
	return p, nil
}

// InstallAdmissionPolicy creates the admission policy of manifests/base on the API
// server of cfg, waits until the API server enforces it, and at the end of the test
// removes it again and waits until it is no longer enforced.
// Tests that run in parallel on one API server share one install: the first call
// installs, the others wait for it, and the policy is removed (and its removal
// awaited) when the last of their tests ends.
func InstallAdmissionPolicy(t testing.TB, cfg *rest.Config) *AdmissionPolicy {
	t.Helper()
	installs.Lock()
	defer installs.Unlock()
	in, ok := installs.m[cfg.Host]
	if !ok {
		p, uninstall := installAdmissionPolicy(t, cfg)
		in = &install{p: p, uninstall: uninstall}
		installs.m[cfg.Host] = in
	}
	in.users++
	t.Cleanup(func() {
		installs.Lock()
		defer installs.Unlock()
		if in.users--; in.users > 0 {
			return
		}
		delete(installs.m, cfg.Host)
		if err := in.uninstall(); err != nil {
			t.Error(err)
		}
	})
	return in.p
}

// installs are the admission policies installed, by API server (host).
var installs = struct {
	sync.Mutex
	m map[string]*install
}{m: map[string]*install{}}

type install struct {
	p         *AdmissionPolicy
	users     int
	uninstall func() error
}

// installAdmissionPolicy installs the policy and waits until the API server enforces
// it; uninstall deletes it and waits until the API server no longer does.
func installAdmissionPolicy(t testing.TB, cfg *rest.Config) (*AdmissionPolicy, func() error) {
	t.Helper()
	ctx := context.Background()
	p, err := LoadAdmissionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	ar := cs.AdmissionregistrationV1()
	for _, vap := range []*admissionregistrationv1.ValidatingAdmissionPolicy{p.Policy, p.CreatePolicy} {
		if _, err := ar.ValidatingAdmissionPolicies().Create(ctx, vap, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create the admission policy %s: %v", vap.Name, err)
		}
	}
	for _, b := range p.Bindings {
		if _, err := ar.ValidatingAdmissionPolicyBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create binding %s: %v", b.Name, err)
		}
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, p.Operator, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create ClusterRole %s: %v", p.Operator.Name, err)
	}
	probe := newPolicyProbe(t, cfg, cs)
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		return probe.refused(ctx)
	}); err != nil {
		t.Fatalf("the API server did not start enforcing the admission policy %s: %v", p.Policy.Name, err)
	}
	return p, func() error {
		for _, b := range p.Bindings {
			_ = ar.ValidatingAdmissionPolicyBindings().Delete(ctx, b.Name, metav1.DeleteOptions{})
		}
		_ = ar.ValidatingAdmissionPolicies().Delete(ctx, p.Policy.Name, metav1.DeleteOptions{})
		_ = ar.ValidatingAdmissionPolicies().Delete(ctx, p.CreatePolicy.Name, metav1.DeleteOptions{})
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			refused, err := probe.refused(ctx)
			return !refused, err
		}); err != nil {
			return fmt.Errorf("the API server still enforces the admission policy after it was deleted: %w", err)
		}
		return nil
	}
}

// policyProbe is a ServiceAccount with a token bound to no Pod, allowed by RBAC to
// create Leases in a namespace of its own: the policy refuses its labelled Leases.
type policyProbe struct {
	ns    string
	admin kubernetes.Interface
	sa    kubernetes.Interface
}

func newPolicyProbe(t testing.TB, cfg *rest.Config, admin kubernetes.Interface) *policyProbe {
	t.Helper()
	ctx := context.Background()
	ns, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "policy-probe-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateServiceAccount(ctx, admin, ns.Name, "probe", []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
	}); err != nil {
		t.Fatal(err)
	}
	tok, err := Token(ctx, admin, ns.Name, "probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &policyProbe{ns: ns.Name, admin: admin, sa: kubernetes.NewForConfigOrDie(TokenConfig(cfg, tok))}
}

func (p *policyProbe) refused(ctx context.Context) (bool, error) {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-",
		Labels: map[string]string{"app.kubernetes.io/managed-by": "leasehold"}}}
	out, err := p.sa.CoordinationV1().Leases(p.ns).Create(ctx, l, metav1.CreateOptions{})
	switch {
	case apierrors.IsForbidden(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("probe the admission policy: %w", err)
	}
	_ = p.admin.CoordinationV1().Leases(p.ns).Delete(ctx, out.Name, metav1.DeleteOptions{})
	return false, nil
}

// CreateServiceAccount creates ServiceAccount name in ns and, when rules are given, a
// Role with them bound to it (both named name).
func CreateServiceAccount(ctx context.Context, cs kubernetes.Interface, ns, name string, rules []rbacv1.PolicyRule) (*corev1.ServiceAccount, error) {
	sa, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create ServiceAccount %s/%s: %w", ns, name, err)
	}
	if len(rules) == 0 {
		return sa, nil
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create Role %s/%s: %w", ns, name, err)
	}
	return sa, BindServiceAccount(ctx, cs, ns, name, "Role", name)
}

// BindServiceAccount binds Role or ClusterRole role to ServiceAccount sa in ns.
func BindServiceAccount(ctx context.Context, cs kubernetes.Interface, ns, sa, kind, role string) error {
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{GenerateName: sa + "-"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("bind %s %s to ServiceAccount %s/%s: %w", kind, role, ns, sa, err)
	}
	return nil
}

// CreatePod creates a Pod (it never runs: envtest has no nodes) that runs as
// ServiceAccount sa. Without the ServiceAccount admission plugin (envtest disables it)
// the Pod must name its ServiceAccount, as TokenRequest compares them.
func CreatePod(ctx context.Context, cs kubernetes.Interface, ns, name, sa string) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "app", Image: "example.com/app:1"}},
		},
	}
	out, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create Pod %s/%s: %w", ns, name, err)
	}
	return out, nil
}

// Token asks the TokenRequest API for a token of ServiceAccount sa. With a Pod it is
// bound to that Pod, like the projected token the kubelet mounts: the API server then
// names the Pod in the token's user info (extra authentication.kubernetes.io/pod-name
// and pod-uid) and stops accepting the token once the Pod is gone. Without, it is bound
// to nothing.
func Token(ctx context.Context, cs kubernetes.Interface, ns, sa string, pod *corev1.Pod) (string, error) {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}
	if pod != nil {
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	out, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request a token of ServiceAccount %s/%s: %w", ns, sa, err)
	}
	return out.Status.Token, nil
}

// TokenConfig is cfg's API server with token as the only credential.
func TokenConfig(cfg *rest.Config, token string) *rest.Config {
	return &rest.Config{Host: cfg.Host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData}}
}

// TokenKubeconfig is a kubeconfig for cfg's API server with token as the only
// credential and ns as the namespace.
func TokenKubeconfig(cfg *rest.Config, token, ns string) ([]byte, error) {
	c := clientcmdapi.NewConfig()
	c.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	c.AuthInfos["token"] = &clientcmdapi.AuthInfo{Token: token}
	c.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "token", Namespace: ns}
	c.CurrentContext = "envtest"
	return clientcmd.Write(*c)
}
