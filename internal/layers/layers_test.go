package layers

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/leasehold/leasehold/"

// testSupport are the packages (and the trees under them) that only tests may import:
// harnesses and suites. They may import any product package; no product package may
// import them. When they move, change this list.
var testSupport = []string{"internal/testing"}

// rooms says, for every package tree of the project (a path and everything under it),
// which trees of the project it may import besides its own: the allowed directions,
// leaves first. A package in no room fails the test, so a new package gets a place
// here. cmd/ and e2e/ are in no room's list: nothing imports them.
var rooms = []struct {
	tree string
	may  []string
}{
	// Leaves: the standard library (leaserecord: and k8s.io/api), nothing of the project.
	{"internal/contract", nil},
	{"internal/version", nil},
	{"sidecar/api/wire", nil},
	{"internal/leaserecord", nil},
	// A Pod's annotations read by the contract's rules.
	{"internal/contract/podannotations", []string{"internal/contract"}},
	// The client copied into every Pod: leaves only.
	{"sidecar/client", []string{"internal/contract", "sidecar/api/wire"}},
	// The agent, bottom up.
	{"sidecar/listen", nil},
	{"sidecar/kubeapi", []string{"internal/contract"}},
	{"sidecar/lock", []string{"internal/contract", "internal/leaserecord", "sidecar/api/wire"}},
	{"sidecar/api", []string{"sidecar/lock", "sidecar/api/wire", "internal/contract"}},
	{"sidecar/agent", []string{"sidecar/api", "sidecar/lock", "sidecar/kubeapi", "sidecar/listen", "internal/contract", "internal/version"}},
	// The webhook: the contract, never the engine.
	{"webhook", []string{"internal/contract", "internal/version"}},
	// kubectl leasehold: the contract and the record, never the webhook or the engine.
	{"kubectl", []string{"internal/contract", "internal/leaserecord", "internal/version"}},
	// The binaries: wiring only.
	{"cmd/leasehold", []string{"sidecar/client", "internal/version"}},
	{"cmd/leasehold-agent", []string{"sidecar/agent", "internal/version"}},
	{"cmd/leasehold-webhook", []string{"webhook", "internal/version"}},
	{"cmd/kubectl-leasehold", []string{"kubectl", "internal/version"}},
	// The demo and the example of a fenced store use the client, as users do.
	{"examples", []string{"sidecar/client", "internal/contract"}},
	// Tests of the whole product, and checks of documents and manifests.
	{"e2e", nil},
	{"docs", nil},
	{"charts", nil},
	{"plugins", nil},
	{"hack", nil},
	{"internal/layers", nil},
}

// links says what a binary must not link (transitively), by package path prefix.
var links = map[string][]string{
	// The client copied into every Pod: no engine, no Kubernetes libraries.
	"cmd/leasehold": {module + "sidecar/lock", module + "sidecar/agent", module + "webhook", "k8s.io/", "sigs.k8s.io/"},
	// The kubectl plugin: no webhook, no engine, no controller-runtime.
	"cmd/kubectl-leasehold": {module + "webhook", module + "sidecar/", "sigs.k8s.io/controller-runtime"},
	// The agent: no webhook, no plugin, no controller-runtime.
	"cmd/leasehold-agent": {module + "webhook", module + "kubectl", "sigs.k8s.io/controller-runtime"},
	// The webhook: no engine.
	"cmd/leasehold-webhook": {module + "sidecar/", module + "kubectl"},
}

// under says whether pkg is tree or under it.
func under(pkg, tree string) bool { return pkg == tree || strings.HasPrefix(pkg, tree+"/") }

// roomOf is the longest tree of rooms that holds pkg.
func roomOf(pkg string) (tree string, may []string, ok bool) {
	for _, r := range rooms {
		if under(pkg, r.tree) && len(r.tree) > len(tree) {
			tree, may, ok = r.tree, r.may, true
		}
	}
	return tree, may, ok
}

func isTestSupport(pkg string) bool {
	return slices.ContainsFunc(testSupport, func(t string) bool { return under(pkg, t) })
}

// goList runs go list with args and returns its lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// projectImports trims the module's prefix from the project's packages in imports.
func projectImports(imports string) []string {
	var out []string
	for _, imp := range strings.Fields(imports) {
		if p, ok := strings.CutPrefix(imp, module); ok {
			out = append(out, p)
		}
	}
	return out
}

// No package imports one it may not: every import of the project goes down the table
// of rooms or stays in its own room; no product package imports test-support code;
// nothing, not even a test, imports cmd/ or e2e/.
func TestLayers(t *testing.T) {
	lines := goList(t, "-tags", "e2e", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}|{{join .TestImports \" \"}} {{join .XTestImports \" \"}}", module+"...")
	for _, line := range lines {
		parts := strings.SplitN(line, "|", 3)
		pkg := strings.TrimPrefix(parts[0], module)
		imports, testImports := projectImports(parts[1]), projectImports(parts[2])
		for _, imp := range append(slices.Clone(imports), testImports...) {
			if under(imp, "cmd") || under(imp, "e2e") && !under(pkg, "e2e") {
				t.Errorf("%s imports %s: nothing imports a binary or the e2e suite", pkg, imp)
			}
		}
		if isTestSupport(pkg) {
			continue
		}
		tree, may, ok := roomOf(pkg)
		if !ok {
			t.Errorf("package %s is in no room: add it to rooms (or testSupport) in %s", pkg, "internal/layers/layers_test.go")
			continue
		}
		for _, imp := range imports {
			switch {
			case isTestSupport(imp):
				t.Errorf("%s imports the test-support package %s: only tests may", pkg, imp)
			case under(imp, tree):
			case slices.ContainsFunc(may, func(m string) bool { return under(imp, m) }):
			default:
				t.Errorf("%s imports %s, against the layers: %s may import only %v", pkg, imp, tree, may)
			}
		}
	}
}

// What each binary links, transitively: the client copied into every Pod links no
// engine and no Kubernetes library; the plugin links neither the webhook nor the
// engine; the agent and the webhook do not link each other.
func TestBinariesLinkOnlyTheirLayers(t *testing.T) {
	for bin, forbidden := range links {
		t.Run(bin, func(t *testing.T) {
			deps := goList(t, "-deps", module+bin)
			var bad []string
			for _, d := range deps {
				if slices.ContainsFunc(forbidden, func(f string) bool { return strings.HasPrefix(d, f) }) {
					bad = append(bad, d)
				}
			}
			if len(bad) > 0 {
				t.Errorf("%s links %d packages it must not (none of %v), e.g. %v", bin, len(bad), forbidden, bad[:min(len(bad), 5)])
			}
			t.Logf("%s links %d packages", bin, len(deps))
		})
	}
}
