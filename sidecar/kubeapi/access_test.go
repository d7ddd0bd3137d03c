package kubeapi

import "testing"

// rulesAllow matches a SelfSubjectRulesReview's rules as RBAC matches them; a mistake
// here would make an agent ready that may not write its Leases, or keep a permitted one
// not ready (it only falls back to access reviews for what the rules do not cover).
func TestRulesAllow(t *testing.T) {
	leases := resourceRule{Verbs: []string{"get", "list", "watch", "create", "update"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}}
	named := resourceRule{Verbs: []string{"list", "watch", "update"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"db", "lead"}}
	createAny := resourceRule{Verbs: []string{"create"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}}
	admin := resourceRule{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}}
	basic := resourceRule{Verbs: []string{"create"}, APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"selfsubjectaccessreviews", "selfsubjectrulesreviews"}}
	tests := map[string]struct {
		rules []resourceRule
		a     LeaseAccess
		want  bool
	}{
		"the leasehold-agent ClusterRole, update by name": {[]resourceRule{basic, leases}, LeaseAccess{"update", "db"}, true},
		"the leasehold-agent ClusterRole, create":         {[]resourceRule{basic, leases}, LeaseAccess{"create", ""}, true},
		"cluster-admin":                                 {[]resourceRule{admin}, LeaseAccess{"watch", "db"}, true},
		"a Role by resourceNames, a named Lease":        {[]resourceRule{named, createAny}, LeaseAccess{"update", "lead"}, true},
		"a Role by resourceNames, another Lease":        {[]resourceRule{named, createAny}, LeaseAccess{"update", "other"}, false},
		"a Role by resourceNames does not allow create": {[]resourceRule{named}, LeaseAccess{"create", ""}, false},
		"no rule for Leases":                            {[]resourceRule{basic}, LeaseAccess{"list", "db"}, false},
		"the verb missing":                              {[]resourceRule{{Verbs: []string{"get", "list", "watch"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}}}, LeaseAccess{"update", "db"}, false},
		"leases of another group":                       {[]resourceRule{{Verbs: []string{"*"}, APIGroups: []string{""}, Resources: []string{"leases"}}}, LeaseAccess{"update", "db"}, false},
		"a subresource only":                            {[]resourceRule{{Verbs: []string{"*"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases/status"}}}, LeaseAccess{"update", "db"}, false},
		"every resource of the group":                   {[]resourceRule{{Verbs: []string{"update"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"*"}}}, LeaseAccess{"update", "db"}, true},
		"no rules at all":                               {nil, LeaseAccess{"watch", "db"}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := rulesAllow(tc.rules, tc.a); got != tc.want {
				t.Errorf("rulesAllow(%s) = %v, want %v", tc.a, got, tc.want)
			}
		})
	}
}
