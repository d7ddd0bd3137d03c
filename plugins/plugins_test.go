// Package plugins holds the krew plugin manifest of kubectl leasehold (leasehold.yaml)
// and its test.
package plugins

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// plugin mirrors the fields of krew's Plugin (krew.googlecontainertools.github.com/
// v1alpha2) that the manifest uses. Written out here rather than imported from
// sigs.k8s.io/krew: its module requires k8s.io/client-go v11, which would replace this
// module's client-go.
type plugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		Homepage         string `json:"homepage"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Caveats          string `json:"caveats"`
		Platforms        []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			Sha256 string `json:"sha256"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
			Bin string `json:"bin"`
		} `json:"platforms"`
	} `json:"spec"`
}

func TestKrewManifest(t *testing.T) {
	raw, err := os.ReadFile("leasehold.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var p plugin
	if err := yaml.UnmarshalStrict(raw, &p); err != nil {
		t.Fatalf("leasehold.yaml: %v", err)
	}
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" {
		t.Errorf("apiVersion %q kind %q, want krew's v1alpha2 Plugin", p.APIVersion, p.Kind)
	}
	// krew installs the plugin `leasehold` as kubectl-leasehold: kubectl leasehold.
	if p.Metadata.Name != "leasehold" {
		t.Errorf("metadata.name %q, want leasehold", p.Metadata.Name)
	}
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+`).MatchString(p.Spec.Version) {
		t.Errorf("spec.version %q is not a semantic version with a v", p.Spec.Version)
	}
	if p.Spec.ShortDescription == "" || p.Spec.Description == "" || p.Spec.Homepage == "" {
		t.Error("shortDescription, description and homepage are required")
	}
	var seen []string
	for _, pl := range p.Spec.Platforms {
		os, arch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		seen = append(seen, os+"/"+arch)
		bin := "kubectl-leasehold"
		if os == "windows" {
			bin += ".exe"
		}
		if pl.Bin != bin {
			t.Errorf("%s/%s: bin %q, want %q", os, arch, pl.Bin, bin)
		}
		if !slices.ContainsFunc(pl.Files, func(f struct {
			From string `json:"from"`
			To   string `json:"to"`
		}) bool {
			return f.From == bin
		}) {
			t.Errorf("%s/%s: files do not copy %s out of the archive", os, arch, bin)
		}
		if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(pl.Sha256) {
			t.Errorf("%s/%s: sha256 %q is not 64 hex digits", os, arch, pl.Sha256)
		}
		if !strings.HasPrefix(pl.URI, "https://") || !strings.Contains(pl.URI, "/"+p.Spec.Version+"/") ||
			!strings.Contains(pl.URI, "_"+os+"_"+arch+".") {
			t.Errorf("%s/%s: uri %q is not the release archive of %s for the platform", os, arch, pl.URI, p.Spec.Version)
		}
	}
	for _, want := range []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64"} {
		if !slices.Contains(seen, want) {
			t.Errorf("no platform %s (have %v)", want, seen)
		}
	}
}
