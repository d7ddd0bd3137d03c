package version

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestVersionDefaultsToDev(t *testing.T) {
	// A test binary has no module version ("(devel)") and nothing set by -ldflags.
	if got := Version(); got != "dev" {
		t.Errorf("Version() = %q, want dev", got)
	}
	if got, want := String("leasehold"), "leasehold dev ("+runtime.Version(); !strings.HasPrefix(got, want) {
		t.Errorf("String() = %q, want prefix %q", got, want)
	}
}

// The -ldflags -X path that make build and hack/images.sh use reaches Version: a real
// build of the agent, asked for --version.
func TestVersionSetAtBuildTime(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "leasehold-agent")
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/leasehold/leasehold/internal/version.version=v9.8.7-test", "../../cmd/leasehold-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("leasehold-agent --version: %v\n%s", err, out)
	}
	if got := string(out); !strings.HasPrefix(got, "leasehold-agent v9.8.7-test (") {
		t.Errorf("leasehold-agent --version printed %q", got)
	}
}
