package charts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// make deploy IMAGE=... (hack/deploy-kustomization.sh): kustomize's image override sets
// the webhook's image and the agent image it injects, and nothing else changes.
func TestDeployKustomizationSetsTheImage(t *testing.T) {
	base, err := filepath.Abs(filepath.Join("..", "manifests", "base"))
	if err != nil {
		t.Fatal(err)
	}
	for image, want := range map[string]string{
		"registry.example:5000/team/leasehold:v1.2.3":                   "registry.example:5000/team/leasehold:v1.2.3",
		"registry.example/leasehold@sha256:" + strings.Repeat("ab", 32): "registry.example/leasehold@sha256:" + strings.Repeat("ab", 32),
		"registry.example:5000/leasehold":                               "registry.example:5000/leasehold:latest",
		"leasehold.local/leasehold:dev":                                 "leasehold.local/leasehold:dev",
	} {
		dir := t.TempDir()
		rel, err := filepath.Rel(dir, base) // kustomize refuses an absolute resource path
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(filepath.Join("..", "hack", "deploy-kustomization.sh"), image, rel).Output()
		if err != nil {
			t.Fatalf("deploy-kustomization.sh %s: %v", image, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), out, 0o644); err != nil {
			t.Fatal(err)
		}
		rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatalf("kustomize build of\n%s: %v", out, err)
		}
		got := map[string]object{}
		for _, r := range rm.Resources() {
			m, err := r.Map()
			if err != nil {
				t.Fatal(err)
			}
			o := normalize(t, m)
			got[key(o)] = o
		}
		wantObjs := kustomize(t, "base")
		dep := wantObjs["Deployment/leasehold-system/leasehold-webhook"]
		c := dep["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
		c["image"] = want
		args := c["args"].([]any)
		replaced := 0
		for i, a := range args {
			if strings.HasPrefix(a.(string), "--agent-image=") {
				args[i] = "--agent-image=" + want
				replaced++
			}
		}
		if replaced != 1 {
			t.Fatalf("manifests/base has %d --agent-image args, want 1", replaced)
		}
		same(t, "make deploy IMAGE="+image, got, wantObjs)
	}
}
