package testenv

import "testing"

// LoadAdmissionPolicy returns the Lease policy and its bindings only, although
// manifests/base renders other ValidatingAdmissionPolicies too (before, the last
// policy rendered and every binding were returned, and InstallAdmissionPolicy installed
// another policy under the Lease policy's name).
func TestLoadAdmissionPolicyTakesTheLeasePolicy(t *testing.T) {
	p, err := LoadAdmissionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if p.Policy.Name != LeasePolicy {
		t.Errorf("policy %q, want %q", p.Policy.Name, LeasePolicy)
	}
	if p.CreatePolicy.Name != LeaseCreatePolicy {
		t.Errorf("create policy %q, want %q", p.CreatePolicy.Name, LeaseCreatePolicy)
	}
	for _, b := range p.Bindings {
		if b.Spec.PolicyName != LeasePolicy && b.Spec.PolicyName != LeaseCreatePolicy {
			t.Errorf("binding %s of policy %q", b.Name, b.Spec.PolicyName)
		}
	}
	if len(p.Bindings) == 0 {
		t.Error("no binding")
	}
}
