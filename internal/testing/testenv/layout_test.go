package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// The test-support packages (internal/testing/...) stay out of every binary the
// project ships: no command imports them, directly or through another package.
func TestNoCommandLinksTestSupport(t *testing.T) {
	const module = "github.com/leasehold/leasehold/"
	out, err := exec.Command("go", "list", "-deps", module+"cmd/...").Output()
	if err != nil {
		t.Fatalf("go list -deps %scmd/...: %v", module, err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, module+"internal/testing/") {
			t.Errorf("a command links the test-support package %s: move what it needs into product code", pkg)
		}
	}
}
