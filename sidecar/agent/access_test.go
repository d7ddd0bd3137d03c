package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/kubectl"
)

// An agent whose rights the API server can list (RBAC) reviews its access with one
// SelfSubjectRulesReview, not one SelfSubjectAccessReview per verb and lock: a cluster's
// agents starting at once made more access reviews than Lease requests. Under the Role
// that `kubectl leasehold rbac` prints, narrowed to the Leases by name, it becomes ready
// (the rules cover each name); without rights it stays not ready
// (TestReadyzNamesMissingRBAC).
func TestAccessReviewedWithOneRulesReview(t *testing.T) {
	ctx := context.Background()
	ns, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "access-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := applyAgentRBAC(t, kubectl.Workload{Kind: "Deployment", Name: "workers", Namespace: ns.Name, Locks: []string{"jobs", "lead"}})
	port := testenv.FreePort(t)
	// startPodAgent waits until the agent is ready.
	startPodAgent(t, ns.Name, r.ServiceAccountName, "workers-a", "--locks=jobs", "--leader=lead",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port))
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	reviews := map[string]float64{}
	for _, m := range fams["leasehold_kube_api_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "resource" {
				reviews[l.GetValue()] += m.GetCounter().GetValue()
			}
		}
	}
	if reviews["selfsubjectrulesreviews"] != 1 || reviews["selfsubjectaccessreviews"] != 0 {
		t.Fatalf("access reviews at start: %v rules reviews and %v access reviews, want 1 and 0 (all requests: %v)",
			reviews["selfsubjectrulesreviews"], reviews["selfsubjectaccessreviews"], reviews)
	}
}
