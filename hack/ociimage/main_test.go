package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Two builds of the same inputs give the same index digest; the index holds one image per
// platform, each non-root with the OCI labels; the SBOM artifact's subject is the index
// and it lists the Go binary of each platform.
func TestImageIsReproducibleMultiArchNonRootWithSBOM(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable() // a Go binary, for the SBOM
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		if err := os.MkdirAll(filepath.Join(dir, "bin", arch), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "bin", arch, "tool"), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := func(out string) string {
		s := spec{
			name: "leasehold.local/test:dev", out: filepath.Join(dir, out), user: "65532:65532",
			platforms: []string{"linux/amd64", "linux/arm64"},
			files:     []string{filepath.Join(dir, "bin", "{arch}", "tool") + "=/usr/local/bin/tool"},
			links:     []string{"/bin/t=/usr/local/bin/tool"},
			labels:    []string{"org.opencontainers.image.version=v9.9.9", "org.opencontainers.image.revision=abc"},
			sbom:      true, epoch: time.Unix(1700000000, 0).UTC(),
		}
		d, err := s.run()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d1, d2 := build("a"), build("b")
	if d1 != d2 {
		t.Fatalf("two builds of the same inputs: %s and %s", d1, d2)
	}
	lp, err := layout.FromPath(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 || im.Manifests[0].Digest.String() != d1 || im.Manifests[1].ArtifactType != SBOMArtifactType {
		t.Fatalf("layout index.json: %+v", im.Manifests)
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var archs []string
	for _, desc := range m.Manifests {
		archs = append(archs, desc.Platform.Architecture)
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Config.User != "65532:65532" || cf.Architecture != desc.Platform.Architecture ||
			cf.Config.Labels["org.opencontainers.image.version"] != "v9.9.9" || !cf.Created.Time.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("%s: user %q arch %q labels %v created %v", desc.Platform, cf.Config.User, cf.Architecture, cf.Config.Labels, cf.Created)
		}
	}
	if len(archs) != 2 || archs[0] != "amd64" || archs[1] != "arm64" {
		t.Errorf("platforms %v, want amd64 and arm64", archs)
	}
	sbom, err := top.Image(im.Manifests[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	sm, err := sbom.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if sm.Subject == nil || sm.Subject.Digest.String() != d1 || sm.Subject.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("SBOM subject %+v, want the index %s", sm.Subject, d1)
	}
	layers, err := sbom.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("SBOM layers %d (%v)", len(layers), err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var doc spdxDoc
	if err := json.NewDecoder(rc).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, p := range doc.Packages {
		if p.PrimaryPurpose == "APPLICATION" {
			files++
		}
	}
	if doc.SPDXVersion != "SPDX-2.3" || files != 2 || len(doc.Packages) < 4 {
		t.Errorf("SBOM %s with %d binaries and %d packages, want SPDX-2.3, 2 binaries and their modules", doc.SPDXVersion, files, len(doc.Packages))
	}
}
