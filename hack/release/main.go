// Command release assembles a release directory from what hack/release.sh built (make
// release VERSION=vX.Y.Z):
//
//	image/                                the image index (OCI layout, with its SBOM)
//	image.txt                             the image's name, tag and index digest
//	leasehold-X.Y.Z.tgz                   the Helm chart: version X.Y.Z, appVersion vX.Y.Z,
//	                                      image.tag vX.Y.Z and image.digest the index's digest
//	kubectl-leasehold_OS_ARCH.tar.gz      the kubectl plugin, one archive per platform
//	leasehold.yaml                        the krew manifest (plugins/leasehold.yaml) filled
//	                                      in: version, URIs, the archives' sha256
//	RELEASE_NOTES.md                      the version's section of CHANGELOG.md
//	SHA256SUMS                            sha256sum -c format, every file above but image/
//
//	go run ./hack/release -version v1.2.3 -o bin/release/v1.2.3 -image-layout DIR \
//	    -plugin-dir DIR (kubectl-leasehold_OS_ARCH binaries) [-chart charts/leasehold] \
//	    [-changelog CHANGELOG.md] [-krew plugins/leasehold.yaml]
//
// Archives are reproducible (entries owned by root, mtimes SOURCE_DATE_EPOCH, no gzip
// timestamp).
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	sigsyaml "sigs.k8s.io/yaml"
)

// options are the inputs of one release.
type options struct {
	version     string // vX.Y.Z
	out         string
	imageLayout string // OCI layout whose index.json names the image index first
	imageName   string // leasehold.local/leasehold
	pluginDir   string // kubectl-leasehold_OS_ARCH binaries
	chart       string
	changelog   string
	krew        string
	epoch       time.Time
}

func main() {
	var o options
	flag.StringVar(&o.version, "version", "", "release version, vX.Y.Z (required)")
	flag.StringVar(&o.out, "o", "", "release directory, created (required)")
	flag.StringVar(&o.imageLayout, "image-layout", "", "OCI layout of the image (hack/images.sh output; required)")
	flag.StringVar(&o.imageName, "image-name", "leasehold.local/leasehold", "image repository the chart pulls")
	flag.StringVar(&o.pluginDir, "plugin-dir", "", "directory of kubectl-leasehold_OS_ARCH binaries (required)")
	flag.StringVar(&o.chart, "chart", "charts/leasehold", "chart directory")
	flag.StringVar(&o.changelog, "changelog", "CHANGELOG.md", "Keep a Changelog file")
	flag.StringVar(&o.krew, "krew", "plugins/leasehold.yaml", "krew manifest template")
	flag.Parse()
	if o.version == "" || o.out == "" || o.imageLayout == "" || o.pluginDir == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	o.epoch = time.Unix(0, 0).UTC()
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "release: SOURCE_DATE_EPOCH=%q is not a number of seconds\n", v)
			os.Exit(2)
		}
		o.epoch = time.Unix(n, 0).UTC()
	}
	if err := assemble(o); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func assemble(o options) error {
	if !releaseVersion.MatchString(o.version) {
		return fmt.Errorf("version %q is not vMAJOR.MINOR.PATCH (e.g. make release VERSION=v0.1.0)", o.version)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	digest, err := copyLayout(o.imageLayout, filepath.Join(o.out, "image"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "image.txt"),
		[]byte(fmt.Sprintf("%s:%s@%s\n", o.imageName, o.version, digest)), 0o644); err != nil {
		return err
	}
	chartFile, err := packageChart(o, digest)
	if err != nil {
		return err
	}
	archives, err := pluginArchives(o)
	if err != nil {
		return err
	}
	if err := writeKrew(o, archives); err != nil {
		return err
	}
	notes, err := releaseNotes(o.changelog, o.version)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "RELEASE_NOTES.md"), notes, 0o644); err != nil {
		return err
	}
	files := []string{"image.txt", chartFile, "leasehold.yaml", "RELEASE_NOTES.md"}
	for _, a := range archives {
		files = append(files, a.file)
	}
	return writeSums(o.out, files)
}

// copyLayout copies the OCI layout and returns the digest of the image index it names
// first (hack/ociimage writes the index first, its SBOM after).
func copyLayout(src, dst string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(src, "index.json"))
	if err != nil {
		return "", fmt.Errorf("read the image layout (build it with hack/images.sh leasehold): %w", err)
	}
	var idx struct {
		Manifests []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return "", fmt.Errorf("parse %s/index.json: %w", src, err)
	}
	if len(idx.Manifests) == 0 || idx.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" {
		return "", fmt.Errorf("%s/index.json does not name an image index first", src)
	}
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	return idx.Manifests[0].Digest, err
}

var (
	// releaseVersion is vMAJOR.MINOR.PATCH with an optional pre-release (semver 2.0).
	releaseVersion = regexp.MustCompile(`^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$`)
	valuesTag      = regexp.MustCompile(`(?m)^(image:\n(?:  .*\n|\s*#.*\n)*?  tag: ).*$`)
	valuesDigest   = regexp.MustCompile(`(?m)^(image:\n(?:  .*\n|\s*#.*\n)*?  digest: ).*$`)
)

// packageChart writes leasehold-X.Y.Z.tgz: the chart with its version, appVersion, and
// the image pinned to the release's index (values.yaml's comments kept), and returns
// the file's name.
func packageChart(o options, digest string) (string, error) {
	ch, err := loader.Load(o.chart)
	if err != nil {
		return "", fmt.Errorf("load the chart %s: %w", o.chart, err)
	}
	ch.Metadata.Version = strings.TrimPrefix(o.version, "v")
	ch.Metadata.AppVersion = o.version
	for _, f := range ch.Raw {
		if f.Name != chartutil.ValuesfileName {
			continue
		}
		if !valuesTag.Match(f.Data) || !valuesDigest.Match(f.Data) {
			return "", errors.New("the chart's values.yaml has no image.tag or image.digest line to pin")
		}
		f.Data = valuesTag.ReplaceAll(f.Data, []byte("${1}"+o.version))
		f.Data = valuesDigest.ReplaceAll(f.Data, []byte(`${1}"`+digest+`"`))
		if err := sigsyaml.Unmarshal(f.Data, &ch.Values); err != nil {
			return "", fmt.Errorf("the pinned values.yaml does not parse: %w", err)
		}
	}
	if err := ch.Validate(); err != nil {
		return "", fmt.Errorf("the chart: %w", err)
	}
	path, err := chartutil.Save(ch, o.out)
	if err != nil {
		return "", fmt.Errorf("package the chart: %w", err)
	}
	return filepath.Base(path), nil
}

// archive is one kubectl-leasehold archive.
type archive struct {
	os, arch, file, sum string
}

// pluginArchives packs every kubectl-leasehold_OS_ARCH binary of the plugin directory
// into kubectl-leasehold_OS_ARCH.tar.gz (one file, kubectl-leasehold, as krew wants).
func pluginArchives(o options) ([]archive, error) {
	bins, err := filepath.Glob(filepath.Join(o.pluginDir, "kubectl-leasehold_*_*"))
	if err != nil {
		return nil, err
	}
	var out []archive
	for _, b := range bins {
		base := filepath.Base(b)
		parts := strings.Split(strings.TrimPrefix(base, "kubectl-leasehold_"), "_")
		if len(parts) != 2 || strings.Contains(base, ".") {
			continue
		}
		data, err := os.ReadFile(b)
		if err != nil {
			return nil, err
		}
		a := archive{os: parts[0], arch: parts[1], file: base + ".tar.gz"}
		var buf bytes.Buffer
		gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression) // no name, no mtime: reproducible
		tw := tar.NewWriter(gz)
		if err := tw.WriteHeader(&tar.Header{Name: "kubectl-leasehold", Mode: 0o755, Size: int64(len(data)),
			ModTime: o.epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		if err := gz.Close(); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(buf.Bytes())
		a.sum = hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(o.out, a.file), buf.Bytes(), 0o644); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no kubectl-leasehold_OS_ARCH binaries in %s", o.pluginDir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].file < out[j].file })
	return out, nil
}

// writeKrew fills the krew manifest template: the version, each platform's URI and the
// sha256 of its archive. Platforms without an archive in this release are dropped.
func writeKrew(o options, archives []archive) error {
	raw, err := os.ReadFile(o.krew)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := sigsyaml.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("parse %s: %w", o.krew, err)
	}
	spec, _ := m["spec"].(map[string]any)
	if spec == nil {
		return fmt.Errorf("%s has no spec", o.krew)
	}
	spec["version"] = o.version
	platforms, _ := spec["platforms"].([]any)
	var kept []any
	for _, p := range platforms {
		pm, _ := p.(map[string]any)
		sel, _ := pm["selector"].(map[string]any)
		labels, _ := sel["matchLabels"].(map[string]any)
		for _, a := range archives {
			if labels["os"] == a.os && labels["arch"] == a.arch {
				uri, _ := pm["uri"].(string)
				pm["uri"] = uri[:strings.LastIndex(uri, "/download/")+len("/download/")] + o.version + "/" + a.file
				pm["sha256"] = a.sum
				kept = append(kept, pm)
			}
		}
	}
	if len(kept) != len(archives) {
		return fmt.Errorf("%s names %d of the %d platforms built", o.krew, len(kept), len(archives))
	}
	spec["platforms"] = kept
	out, err := sigsyaml.Marshal(m)
	if err != nil {
		return err
	}
	header := fmt.Sprintf("# The krew plugin manifest of kubectl leasehold %s (filled in by make release).\n", o.version)
	return os.WriteFile(filepath.Join(o.out, "leasehold.yaml"), append([]byte(header), out...), 0o644)
}

// releaseNotes is the section of the Keep a Changelog file whose heading names the
// version (## [X.Y.Z] or ## [vX.Y.Z], with or without a date after it).
func releaseNotes(changelog, version string) ([]byte, error) {
	f, err := os.Open(changelog)
	if err != nil {
		return nil, fmt.Errorf("release notes: %w", err)
	}
	defer f.Close()
	want := strings.TrimPrefix(version, "v")
	var notes bytes.Buffer
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			if in {
				break
			}
			head := strings.TrimSpace(strings.TrimPrefix(line, "## "))
			head = strings.TrimPrefix(strings.SplitN(head, "]", 2)[0], "[")
			in = strings.TrimPrefix(head, "v") == want
			if in {
				fmt.Fprintf(&notes, "# Leasehold %s\n", version)
				if _, date, ok := strings.Cut(line, " - "); ok {
					fmt.Fprintf(&notes, "\nReleased %s.\n", strings.TrimSpace(date))
				}
			}
			continue
		}
		if in {
			notes.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !in && notes.Len() == 0 {
		return nil, fmt.Errorf("%s has no section for %s: add \"## [%s] - YYYY-MM-DD\" (move the Unreleased entries there)", changelog, version, want)
	}
	return append(bytes.TrimRight(notes.Bytes(), "\n"), '\n'), nil
}

// writeSums writes SHA256SUMS for files (sha256sum -c reads it).
func writeSums(dir string, files []string) error {
	sort.Strings(files)
	var b strings.Builder
	for _, name := range files {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), name)
	}
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(b.String()), 0o644)
}
