package charts

import (
	"strings"
	"testing"
)

// image.digest pins the webhook's image and the agent image it injects by digest (the
// chart of a release sets it to the release's image index); a digest that is not
// sha256:<64 hex> is refused.
func TestChartImageDigest(t *testing.T) {
	digest := "sha256:" + strings.Repeat("0a", 32)
	objs := mustRender(t, "image: {repository: leasehold.local/leasehold, tag: v1.2.3, digest: "+digest+"}\n")
	got := strings.Join(deploymentArgs(t, objs), " ")
	for _, want := range []string{"image=leasehold.local/leasehold@" + digest, "--agent-image=leasehold.local/leasehold@" + digest} {
		if !strings.Contains(got+" ", want+" ") {
			t.Errorf("Deployment lacks %q: %s", want, got)
		}
	}
	if _, err := renderChart(t, "image: {repository: leasehold.local/leasehold, tag: v1.2.3, digest: sha256:abc}\n"); err == nil ||
		!strings.Contains(err.Error(), "digest") {
		t.Errorf("a short digest: %v, want a refusal naming image.digest", err)
	}
}
