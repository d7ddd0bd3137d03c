package chaos

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestHoldFateDecide(t *testing.T) {
	start := time.Now()
	lease := func(holder string, tok int32, renewed time.Time) *coordinationv1.Lease {
		return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseTransitions: ptr.To(tok),
			RenewTime: &metav1.MicroTime{Time: renewed}}}
	}
	tests := map[string]struct {
		l    *coordinationv1.Lease
		want HoldOutcome
	}{
		"renewed with the same token after the fault began": {lease(a, 5, start.Add(time.Millisecond)), HoldKept},
		"a write that kept the renewTime (a waiter queued)": {lease(a, 5, start.Add(-time.Second)), HoldUndecided},
		"cleared by its holder":                             {lease("", 5, start.Add(time.Second)), HoldCleared},
		"another holder":                                    {lease(b, 6, start.Add(time.Second)), HoldChanged},
		"the same Pod with a new token":                     {lease(a, 6, start.Add(time.Second)), HoldChanged},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := HoldFate{Lock: mu, Holder: a, Token: 5, Outcome: HoldUndecided}
			f.decide(tc.l, start)
			if f.Outcome != tc.want {
				t.Errorf("outcome %s, want %s", f.Outcome, tc.want)
			}
			if (f.Decided != 0) != (tc.want != HoldUndecided) {
				t.Errorf("decided at %d for outcome %s", f.Decided, f.Outcome)
			}
		})
	}
}
