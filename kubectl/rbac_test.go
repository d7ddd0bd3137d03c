package kubectl

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

const manifests = `
apiVersion: v1
kind: Service
metadata: {name: api}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  template:
    metadata:
      annotations:
        leasehold.io/locks: db-migration,reports
        leasehold.io/leader: api-leader
    spec:
      containers: [{name: app, image: app}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {leasehold.io/locks: nightly}
        spec:
          serviceAccountName: batch
          containers: [{name: app, image: app}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: opted-out}
spec:
  template:
    metadata:
      annotations: {leasehold.io/locks: x, leasehold.io/inject: "false"}
    spec:
      containers: [{name: app, image: app}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: one-off}
  spec:
    serviceAccountName: default
    containers: [{name: app, image: app}]
  # annotations below
- apiVersion: v1
  kind: Pod
  metadata:
    name: migrator
    annotations: {leasehold.io/locks: db-migration}
  spec:
    serviceAccountName: default
    containers: [{name: app, image: app}]
`

func TestReadWorkloads(t *testing.T) {
	got, err := ReadWorkloads(strings.NewReader(manifests), "team-a")
	if err != nil {
		t.Fatal(err)
	}
	want := []Workload{
		{Kind: "Deployment", Name: "api", Namespace: "shop", Locks: []string{"api-leader", "db-migration", "reports"}},
		{Kind: "CronJob", Name: "nightly", Namespace: "team-a", ServiceAccount: "batch", Locks: []string{"nightly"}},
		{Kind: "Pod", Name: "migrator", Namespace: "team-a", ServiceAccount: "default", Locks: []string{"db-migration"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("workloads (-want +got):\n%s", diff)
	}

	bad := `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"template":{"metadata":{"annotations":{"leasehold.io/locks":"DB_Lock"}}}}}`
	if _, err := ReadWorkloads(strings.NewReader(bad), "ns"); err == nil || !strings.Contains(err.Error(), "Deployment x") || !strings.Contains(err.Error(), "DB_Lock") {
		t.Errorf("a lock name the webhook refuses: err = %v, want one naming the workload and the value", err)
	}
}

func TestNewAgentRBAC(t *testing.T) {
	tests := map[string]struct {
		w        Workload
		override string
		wantSA   string
		wantObj  bool // a ServiceAccount object is printed
		wantSet  bool // the template must be changed
	}{
		"no ServiceAccount: a dedicated one":     {w: Workload{Name: "api"}, wantSA: "api", wantObj: true, wantSet: true},
		"default: a dedicated one instead":       {w: Workload{Name: "api", ServiceAccount: "default"}, wantSA: "api", wantObj: true, wantSet: true},
		"the template's own is kept":             {w: Workload{Name: "api", ServiceAccount: "batch"}, wantSA: "batch"},
		"--service-account names another":        {w: Workload{Name: "api", ServiceAccount: "batch"}, override: "locks", wantSA: "locks", wantObj: true, wantSet: true},
		"--service-account=default, if you must": {w: Workload{Name: "api"}, override: "default", wantSA: "default", wantSet: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.w.Namespace, tc.w.Locks = "shop", []string{"b", "a"}
			r := NewAgentRBAC(tc.w, tc.override)
			if r.ServiceAccountName != tc.wantSA || (r.ServiceAccount != nil) != tc.wantObj || r.SetServiceAccount != tc.wantSet {
				t.Fatalf("ServiceAccount %q (object %v, set %v), want %q (object %v, set %v)",
					r.ServiceAccountName, r.ServiceAccount != nil, r.SetServiceAccount, tc.wantSA, tc.wantObj, tc.wantSet)
			}
			if s := r.RoleBinding.Subjects; len(s) != 1 || s[0].Kind != "ServiceAccount" || s[0].Name != tc.wantSA || s[0].Namespace != "shop" {
				t.Errorf("RoleBinding subjects %+v", s)
			}
			if r.RoleBinding.RoleRef.Name != r.Role.Name || r.Role.Namespace != "shop" {
				t.Errorf("RoleBinding %+v does not bind Role %s/%s", r.RoleBinding.RoleRef, r.Role.Namespace, r.Role.Name)
			}
		})
	}
}

// The rules: by name for everything RBAC can narrow, nothing the agent does not call.
func TestAgentRules(t *testing.T) {
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"a", "b"}, Verbs: []string{"get", "list", "watch", "update"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
	}
	if diff := cmp.Diff(want, AgentRules([]string{"b", "a", "b"})); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
}

// kubectl leasehold rbac -f - prints what NewAgentRBAC returns, as documents that
// kubectl apply takes.
func TestRBACCommand(t *testing.T) {
	out, errOut, err := run(t, manifests, "-n", "team-a", "rbac", "-f", "-")
	if err != nil {
		t.Fatalf("rbac: %v\n%s", err, errOut)
	}
	docs := strings.Split(out, "\n---\n")
	if len(docs) != 1+3+2+3 { // the first comment, then api (SA, Role, RB), nightly (Role, RB), migrator (SA, Role, RB)
		t.Fatalf("%d documents, want 9:\n%s", len(docs), out)
	}
	if !strings.Contains(docs[0], "spec.template.spec.serviceAccountName: api in the Deployment") {
		t.Errorf("no instruction to run the Deployment as its ServiceAccount:\n%s", docs[0])
	}
	sa, role := &corev1.ServiceAccount{}, &rbacv1.Role{}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), sa); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(strings.TrimPrefix(docs[2], "---\n")), role); err != nil {
		t.Fatal(err)
	}
	w := Workload{Kind: "Deployment", Name: "api", Namespace: "shop", Locks: []string{"api-leader", "db-migration", "reports"}}
	r := NewAgentRBAC(w, "")
	if diff := cmp.Diff(r.ServiceAccount, sa); diff != "" {
		t.Errorf("printed ServiceAccount (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(r.Role, role); diff != "" {
		t.Errorf("printed Role (-want +got):\n%s", diff)
	}

	out, _, err = run(t, "", "-n", "shop", "rbac", "--name", "api", "--locks", "db-migration,reports", "--leader", "api-leader")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "name: leasehold-api") || !strings.Contains(out, "- api-leader\n  - db-migration\n  - reports") {
		t.Errorf("rbac from flags:\n%s", out)
	}
	for args, want := range map[string]string{
		"rbac --locks x":                  "--name is required",
		"rbac --name api":                 "name the locks",
		"rbac --name api --locks DB_Lock": "DB_Lock",
		"rbac -f - --name api":            "not both",
	} {
		if _, _, err := run(t, "", strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("kubectl leasehold %s: err = %v, want one containing %q", args, err, want)
		}
	}
	if _, _, err := run(t, "kind: Service\napiVersion: v1\nmetadata: {name: x}\n", "rbac", "-f", "-"); err == nil || !strings.Contains(err.Error(), "declares locks") {
		t.Errorf("a manifest without locks: err = %v", err)
	}
}

// A semaphore's agent writes its slot Leases: the Role grants each by name.
func TestRBACGrantsSemaphoreSlots(t *testing.T) {
	w, err := WorkloadFromLocks("reports", "shop", []string{"db"}, nil, []string{"report=3"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"db", "report.1", "report.2", "report.3"}, w.Locks); diff != "" {
		t.Fatalf("Leases of the workload (-want +got):\n%s", diff)
	}
	if _, err := WorkloadFromLocks("reports", "shop", nil, nil, []string{"report"}); err == nil ||
		!strings.Contains(err.Error(), "has no =N") {
		t.Fatalf("a semaphore without N: want the annotation's error, got %v", err)
	}
}
