package kubectl

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/internal/contract/podannotations"
)

// Workload is a workload whose Pods run Leasehold agents, as `kubectl leasehold rbac`
// reads it from its manifest (or from flags).
type Workload struct {
	Kind, Name, Namespace string
	// ServiceAccount is the Pod template's serviceAccountName (empty when it names none).
	ServiceAccount string
	// Locks are every lock the Pods declare, mutexes and leader locks, sorted.
	Locks []string
}

// AgentRBAC is the least-privilege identity of one workload's agents.
type AgentRBAC struct {
	// ServiceAccount is nil when the workload already names a ServiceAccount of its own:
	// it exists, and printing it would change it on apply.
	ServiceAccount *corev1.ServiceAccount
	Role           *rbacv1.Role
	RoleBinding    *rbacv1.RoleBinding
	// ServiceAccountName is the identity the Role is bound to.
	ServiceAccountName string
	// SetServiceAccount is true when the Pod template must be changed to run as it.
	SetServiceAccount bool
}

// AgentRules are the rights an agent needs for locks: exactly what it calls.
//   - get, list, watch, update of its own Leases by name. The agent lists and watches
//     each Lease with the field selector metadata.name=<lock>, which RBAC authorizes as
//     a request for that name. No patch (the agent only replaces records, conditional on
//     the resourceVersion) and no delete (deleting a Lease restarts its fencing tokens;
//     the admission policy refuses it to ServiceAccounts anyway).
//   - create of Leases: RBAC cannot narrow create by name (the name is in the body).
//   - create of Events, which the agent records on its Pod.
func AgentRules(locks []string) []rbacv1.PolicyRule {
	names := slices.Clone(locks)
	slices.Sort(names)
	names = slices.Compact(names)
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: names, Verbs: []string{"get", "list", "watch", "update"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
	}
}

// NewAgentRBAC returns the ServiceAccount, Role and RoleBinding that let w's agents hold
// w's locks and no other Lease. serviceAccount overrides the ServiceAccount's name;
// empty means the template's own, or else a dedicated one named after the workload.
// Never the namespace's default ServiceAccount unless asked for by name: every Pod of
// the namespace that names none runs as it.
func NewAgentRBAC(w Workload, serviceAccount string) AgentRBAC {
	r := AgentRBAC{ServiceAccountName: serviceAccount}
	if r.ServiceAccountName == "" {
		r.ServiceAccountName = w.ServiceAccount
	}
	if r.ServiceAccountName == "" || (r.ServiceAccountName == "default" && serviceAccount == "") {
		r.ServiceAccountName = w.Name
	}
	r.SetServiceAccount = r.ServiceAccountName != w.ServiceAccount
	if r.SetServiceAccount && r.ServiceAccountName != "default" {
		// The agent mounts a token of its own (the webhook adds the projected volume
		// leasehold-agent-token), so the app's containers need none: without it they
		// reach the Leases only through the agent.
		r.ServiceAccount = &corev1.ServiceAccount{
			TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta:                   metav1.ObjectMeta{Name: r.ServiceAccountName, Namespace: w.Namespace},
			AutomountServiceAccountToken: ptr.To(false),
		}
	}
	name := "leasehold-" + w.Name
	r.Role = &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.Namespace},
		Rules:      AgentRules(w.Locks),
	}
	r.RoleBinding = &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: r.ServiceAccountName, Namespace: w.Namespace}},
	}
	return r
}

// podTemplatePaths says where each kind keeps the Pod it runs.
var podTemplatePaths = map[string][]string{
	"Pod":                   nil,
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

// ReadWorkloads reads YAML or JSON manifests (several documents, or a List) and returns
// each workload whose Pods get a Leasehold agent, in namespace ns when its manifest
// names none. A lock annotation the webhook would refuse is an error.
func ReadWorkloads(r io.Reader, ns string) ([]Workload, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.IsList() {
			if err := u.EachListItem(func(o runtime.Object) error {
				objs = append(objs, o.(*unstructured.Unstructured))
				return nil
			}); err != nil {
				return nil, fmt.Errorf("read %s: %w", u.GetKind(), err)
			}
			continue
		}
		objs = append(objs, u)
	}
	var out []Workload
	for _, u := range objs {
		path, ok := podTemplatePaths[u.GetKind()]
		if !ok {
			continue
		}
		tmpl := u.Object
		if path != nil {
			m, found, err := unstructured.NestedMap(u.Object, path...)
			if err != nil || !found {
				return nil, fmt.Errorf("%s %s has no Pod template at %s", u.GetKind(), u.GetName(), strings.Join(path, "."))
			}
			tmpl = m
		}
		annotations, _, _ := unstructured.NestedStringMap(tmpl, "metadata", "annotations")
		if !podannotations.Wanted(annotations) {
			continue
		}
		cfg, errs := podannotations.Parse(annotations)
		if len(errs) > 0 {
			return nil, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), errs.ToAggregate())
		}
		sa, _, _ := unstructured.NestedString(tmpl, "spec", "serviceAccountName")
		w := Workload{Kind: u.GetKind(), Name: u.GetName(), Namespace: u.GetNamespace(), ServiceAccount: sa,
			Locks: cfg.LeaseNames()}
		if w.Namespace == "" {
			w.Namespace = ns
		}
		if w.Name == "" {
			return nil, fmt.Errorf("a %s without metadata.name declares locks: name it, the Role is named after it", w.Kind)
		}
		slices.Sort(w.Locks)
		out = append(out, w)
	}
	return out, nil
}

// WorkloadFromLocks is a workload described by flags instead of a manifest.
func WorkloadFromLocks(name, ns string, locks, leader, semaphores []string) (Workload, error) {
	if name == "" {
		return Workload{}, errors.New("--name is required with --locks, --leader and --semaphores: the Role, and the ServiceAccount, are named after the workload")
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return Workload{}, fmt.Errorf("--name=%q: %s", name, strings.Join(errs, "; "))
	}
	if len(locks)+len(leader)+len(semaphores) == 0 {
		return Workload{}, errors.New("name the locks with --locks, --leader and --semaphores, or read them from a manifest with -f")
	}
	annotations := map[string]string{}
	if len(locks) > 0 {
		annotations[contract.AnnotationLocks] = strings.Join(locks, ",")
	}
	if len(leader) > 0 {
		annotations[contract.AnnotationLeader] = strings.Join(leader, ",")
	}
	if len(semaphores) > 0 {
		annotations[contract.AnnotationSemaphores] = strings.Join(semaphores, ",")
	}
	cfg, errs := podannotations.Parse(annotations)
	if len(errs) > 0 {
		return Workload{}, errs.ToAggregate()
	}
	all := cfg.LeaseNames()
	slices.Sort(all)
	return Workload{Kind: "workload", Name: name, Namespace: ns, Locks: all}, nil
}

// WriteRBAC prints r for w as YAML documents that kubectl apply -f - takes, with
// comments that say what to change in the workload.
func WriteRBAC(out io.Writer, w Workload, r AgentRBAC) error {
	fmt.Fprintf(out, "# Leasehold agents of %s %s/%s: locks %s and no other Lease (kubectl leasehold rbac).\n",
		w.Kind, w.Namespace, w.Name, strings.Join(w.Locks, ", "))
	switch {
	case r.SetServiceAccount && w.Kind == "Pod":
		fmt.Fprintf(out, "# Run the Pod as this ServiceAccount: spec.serviceAccountName: %s\n", r.ServiceAccountName)
	case r.SetServiceAccount:
		fmt.Fprintf(out, "# Run the Pods as this ServiceAccount: spec.template.spec.serviceAccountName: %s in the %s.\n", r.ServiceAccountName, w.Kind)
	}
	if r.ServiceAccount != nil {
		fmt.Fprintf(out, "# The ServiceAccount mounts no token into the app's containers (the agent mounts its own), so they\n"+
			"# reach the Leases only through the agent; set automountServiceAccountToken: true on the Pod if the app calls the API.\n")
	}
	if r.ServiceAccountName == "default" {
		fmt.Fprintf(out, "# Warning: every Pod of namespace %s that names no ServiceAccount runs as default and may then write these locks.\n", w.Namespace)
	}
	objs := []any{r.Role, r.RoleBinding}
	if r.ServiceAccount != nil {
		objs = append([]any{r.ServiceAccount}, objs...)
	}
	for _, o := range objs {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return err
		}
		unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
		b, err := yaml.Marshal(m)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(out, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}
