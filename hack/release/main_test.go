package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"helm.sh/helm/v3/pkg/chart/loader"
	sigsyaml "sigs.k8s.io/yaml"
)

const testVersion = "v9.8.7"

// testLayout writes an OCI layout holding one (empty) image index, as hack/ociimage
// does, and returns its directory and the index digest.
func testLayout(t *testing.T) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: mutate.MediaType(empty.Image, types.OCIManifestSchema1)})
	if err := lp.AppendIndex(idx); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return dir, d.String()
}

// A release directory built from the real chart, krew template and a CHANGELOG, with the
// kubectl-leasehold of this machine's platform built with the version: every sum in
// SHA256SUMS matches its file; the chart is X.Y.Z with appVersion vX.Y.Z and pins the
// image index by digest; the krew manifest names each archive's sha256; the plugin in
// the archive reports the version; the notes are the version's CHANGELOG section. (The
// other platforms' cross builds are left to make release: they take minutes cold.)
func TestReleaseDirectory(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	pluginDir := filepath.Join(work, "plugin")
	plugin := filepath.Join(pluginDir, "kubectl-leasehold_"+runtime.GOOS+"_"+runtime.GOARCH)
	build := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X github.com/leasehold/leasehold/internal/version.version="+testVersion,
		"-o", plugin, "./cmd/kubectl-leasehold")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-leasehold: %v\n%s", err, out)
	}
	changelog := filepath.Join(work, "CHANGELOG.md")
	if err := os.WriteFile(changelog, []byte("# Changelog\n\n## [Unreleased]\n\n- next\n\n## [9.8.7] - 2030-01-02\n\n### Added\n- the thing\n\n## [9.8.6] - 2029-01-01\n\n- older\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	imageLayout, digest := testLayout(t)
	out := filepath.Join(work, "release")
	if err := assemble(options{
		version: testVersion, out: out, imageLayout: imageLayout, imageName: "leasehold.local/leasehold",
		pluginDir: pluginDir, chart: filepath.Join(root, "charts", "leasehold"), changelog: changelog,
		krew: filepath.Join(root, "plugins", "leasehold.yaml"),
	}); err != nil {
		t.Fatal(err)
	}

	// SHA256SUMS names every file but itself and the layout, and each sum matches.
	sums := map[string]string{}
	f, err := os.Open(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", sc.Text())
		}
		if got := fileSum(t, filepath.Join(out, name)); got != sum {
			t.Errorf("SHA256SUMS: %s %s, the file's is %s", name, sum, got)
		}
		sums[name] = sum
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, ok := sums[e.Name()]; !ok && e.Name() != "SHA256SUMS" && e.Name() != "image" {
			t.Errorf("%s is not in SHA256SUMS", e.Name())
		}
	}
	archive := "kubectl-leasehold_" + runtime.GOOS + "_" + runtime.GOARCH + ".tar.gz"
	for _, want := range []string{"leasehold-9.8.7.tgz", archive, "leasehold.yaml", "RELEASE_NOTES.md", "image.txt"} {
		if sums[want] == "" {
			t.Errorf("%s missing from the release (SHA256SUMS: %v)", want, sums)
		}
	}

	// The chart.
	ch, err := loader.Load(filepath.Join(out, "leasehold-9.8.7.tgz"))
	if err != nil {
		t.Fatal(err)
	}
	image, _ := ch.Values["image"].(map[string]any)
	if ch.Metadata.Version != "9.8.7" || ch.Metadata.AppVersion != testVersion || image["tag"] != testVersion || image["digest"] != digest {
		t.Errorf("chart version %q appVersion %q image %v, want 9.8.7, %s, tag %s and digest %s",
			ch.Metadata.Version, ch.Metadata.AppVersion, image, testVersion, testVersion, digest)
	}

	// The krew manifest.
	raw, err := os.ReadFile(filepath.Join(out, "leasehold.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var krew struct {
		Spec struct {
			Version   string `json:"version"`
			Platforms []struct {
				URI    string `json:"uri"`
				SHA256 string `json:"sha256"`
			} `json:"platforms"`
		} `json:"spec"`
	}
	if err := sigsyaml.Unmarshal(raw, &krew); err != nil {
		t.Fatal(err)
	}
	if krew.Spec.Version != testVersion || len(krew.Spec.Platforms) != 1 ||
		krew.Spec.Platforms[0].SHA256 != sums[archive] || !strings.HasSuffix(krew.Spec.Platforms[0].URI, "/"+testVersion+"/"+archive) {
		t.Errorf("krew manifest %+v, want version %s and %s with sha256 %s", krew.Spec, testVersion, archive, sums[archive])
	}

	// The plugin in the archive reports the version.
	bin := extract(t, filepath.Join(out, archive), "kubectl-leasehold")
	if got, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.Contains(string(got), testVersion) {
		t.Errorf("kubectl-leasehold version: %q (%v), want %s", got, err, testVersion)
	}

	// The notes are the version's section, no more.
	notes, err := os.ReadFile(filepath.Join(out, "RELEASE_NOTES.md"))
	if err != nil {
		t.Fatal(err)
	}
	if n := string(notes); !strings.Contains(n, "the thing") || strings.Contains(n, "older") || strings.Contains(n, "next") ||
		!strings.Contains(n, "2030-01-02") {
		t.Errorf("release notes:\n%s", n)
	}
	if img, _ := os.ReadFile(filepath.Join(out, "image.txt")); string(img) != "leasehold.local/leasehold:"+testVersion+"@"+digest+"\n" {
		t.Errorf("image.txt %q", img)
	}
}

// A version without its CHANGELOG section, or not vX.Y.Z, is refused with the fix.
func TestReleaseRefuses(t *testing.T) {
	changelog := filepath.Join(t.TempDir(), "CHANGELOG.md")
	if err := os.WriteFile(changelog, []byte("# Changelog\n\n## [Unreleased]\n\n- next\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := releaseNotes(changelog, "v1.0.0"); err == nil || !strings.Contains(err.Error(), "## [1.0.0]") {
		t.Errorf("release notes of a version without a section: %v", err)
	}
	for _, v := range []string{"1.0.0", "v1.0", "v01.0.0", "latest"} {
		if err := assemble(options{version: v, out: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "vMAJOR.MINOR.PATCH") {
			t.Errorf("version %q: %v", v, err)
		}
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// extract writes the archive's file name to a temporary directory and returns its path.
func extract(t *testing.T, archive, name string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s has no %s: %v", archive, name, err)
		}
		if h.Name != name {
			continue
		}
		dst := filepath.Join(t.TempDir(), name)
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return dst
	}
}
