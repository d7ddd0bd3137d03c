// Command ociimage builds a container image with go-containerregistry: one layer of
// files, for one or more platforms, as an OCI image index in an OCI layout directory,
// with OCI labels and an SPDX SBOM attached; optionally it pushes the index and the SBOM
// to a registry. hack/images.sh and the release (hack/release) run it.
//
//	go run ./hack/ociimage -name leasehold.local/leasehold:dev -o OUT/leasehold \
//	    -platforms linux/amd64,linux/arm64 -file 'bin/linux_{arch}/leasehold=/usr/local/bin/leasehold' \
//	    -label org.opencontainers.image.version=v1.2.3 -sbom -push 127.0.0.1:15500/leasehold:dev
//
// Flags (repeatable ones marked *):
//
//	-name NAME:TAG      the image's name, recorded in the layout's index.json (required)
//	-o DIR              OCI layout directory, replaced (required)
//	-platforms LIST     comma-separated os/arch (default linux/<this machine's arch>)
//	-file SRC=DST *     copy host file SRC to DST in the image (mode kept); {os} and {arch}
//	                    in SRC are replaced per platform
//	-link LINK=TARGET * symlink LINK -> TARGET in the image
//	-dir PATH[:MODE] *  extra directory (octal MODE, default 0755)
//	-user UID:GID       config User (default 65532:65532: non-root)
//	-entrypoint PATH    config Entrypoint (one element; empty = none)
//	-cmd ARGS           config Cmd (space separated; empty = none)
//	-env K=V *          extra config Env (PATH is always set)
//	-label K=V *        config label and index annotation (org.opencontainers.image.*)
//	-sbom               attach an SPDX 2.3 SBOM of the Go binaries (an OCI artifact whose
//	                    subject is the index)
//	-push REF           push the index (and the SBOM) to REF; a loopback registry is
//	                    spoken to over plain HTTP
//
// Reproducible: every timestamp (file mtimes, the config's created) is SOURCE_DATE_EPOCH
// (default 0), entries are sorted and owned by root: the same inputs give the same index
// digest, which is printed on stdout.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types of the SBOM artifact (OCI image spec 1.1 artifact guidance).
const (
	SBOMArtifactType = "application/spdx+json"
	emptyConfigType  = "application/vnd.oci.empty.v1+json"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// spec is everything one build needs.
type spec struct {
	name, out, user, entrypoint, cmd, push string
	platforms                              []string
	files, links, dirs, envs, labels       []string
	sbom                                   bool
	epoch                                  time.Time
}

func main() {
	var s spec
	var files, links, dirs, envs, labels multi
	platforms := flag.String("platforms", "linux/"+runtime.GOARCH, "comma-separated os/arch list")
	flag.StringVar(&s.name, "name", "", "image name, e.g. leasehold.local/leasehold:dev")
	flag.StringVar(&s.out, "o", "", "output OCI layout directory (replaced)")
	flag.StringVar(&s.user, "user", "65532:65532", "config User")
	flag.StringVar(&s.entrypoint, "entrypoint", "", "config Entrypoint (single path)")
	flag.StringVar(&s.cmd, "cmd", "", "config Cmd (space separated)")
	flag.StringVar(&s.push, "push", "", "also push to this reference (registry/repository:tag)")
	flag.BoolVar(&s.sbom, "sbom", false, "attach an SPDX SBOM of the Go binaries")
	flag.Var(&files, "file", "SRC=DST: copy a host file into the image ({os}, {arch} in SRC; repeatable)")
	flag.Var(&links, "link", "LINK=TARGET: symlink in the image (repeatable)")
	flag.Var(&dirs, "dir", "PATH[:MODE]: directory in the image (repeatable)")
	flag.Var(&envs, "env", "K=V: config Env (repeatable)")
	flag.Var(&labels, "label", "K=V: config label and index annotation (repeatable)")
	flag.Parse()
	if s.name == "" || s.out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	s.platforms = strings.Split(*platforms, ",")
	s.files, s.links, s.dirs, s.envs, s.labels = files, links, dirs, envs, labels
	epoch, err := sourceDateEpoch()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(2)
	}
	s.epoch = epoch
	digest, err := s.run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
	fmt.Println(digest)
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH (reproducible-builds.org), else the Unix epoch.
func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds (set it to `git log -1 --format=%%ct`): %w", v, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

func (s *spec) run() (string, error) {
	tag, err := name.NewTag(s.name)
	if err != nil {
		return "", fmt.Errorf("bad -name %q: %w", s.name, err)
	}
	labels := map[string]string{}
	for _, l := range s.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return "", fmt.Errorf("bad -label %q, want KEY=VALUE", l)
		}
		labels[k] = v
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var bins []sbomBinary
	for _, p := range s.platforms {
		osName, arch, ok := strings.Cut(p, "/")
		if !ok || osName == "" || arch == "" {
			return "", fmt.Errorf("bad platform %q in -platforms, want os/arch (linux/amd64)", p)
		}
		img, files, err := s.image(osName, arch, labels)
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		bins = append(bins, files...)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}},
		})
	}
	if len(labels) > 0 {
		idx = mutate.Annotations(idx, labels).(v1.ImageIndex)
	}
	digest, err := idx.Digest()
	if err != nil {
		return "", err
	}
	var sbom v1.Image
	if s.sbom {
		doc, err := writeSBOM(tag.Context().Name()+":"+tag.TagStr(), digest.String(), labels["org.opencontainers.image.version"], s.epoch, bins)
		if err != nil {
			return "", err
		}
		if sbom, err = sbomArtifact(idx, doc, s.epoch); err != nil {
			return "", err
		}
	}
	if err := s.writeLayout(tag, idx, sbom); err != nil {
		return "", err
	}
	if s.push != "" {
		if err := push(s.push, idx, sbom); err != nil {
			return "", err
		}
	}
	return digest.String(), nil
}

// image builds the image of one platform and returns it with the files that may be Go
// binaries (for the SBOM).
func (s *spec) image(osName, arch string, labels map[string]string) (v1.Image, []sbomBinary, error) {
	t := newTree()
	for _, d := range s.dirs {
		p, m, hasMode := strings.Cut(d, ":")
		mode := int64(0o755)
		if hasMode {
			v, err := strconv.ParseInt(m, 8, 32)
			if err != nil {
				return nil, nil, fmt.Errorf("bad -dir mode %q: %w", d, err)
			}
			mode = v
		}
		t.dir(p, mode)
	}
	var bins []sbomBinary
	for _, f := range s.files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || src == "" || dst == "" {
			return nil, nil, fmt.Errorf("bad -file %q, want SRC=DST", f)
		}
		src = strings.NewReplacer("{os}", osName, "{arch}", arch).Replace(src)
		data, mode, err := readFileMode(src)
		if err != nil {
			return nil, nil, fmt.Errorf("-file %s: %w", f, err)
		}
		t.file(dst, data, mode)
		if mode&0o111 != 0 {
			bins = append(bins, sbomBinary{platform: osName + "/" + arch, path: dst, data: data})
		}
	}
	for _, l := range s.links {
		link, target, ok := strings.Cut(l, "=")
		if !ok || link == "" || target == "" {
			return nil, nil, fmt.Errorf("bad -link %q, want LINK=TARGET", l)
		}
		t.symlink(link, target)
	}
	layer, err := t.layer(s.epoch)
	if err != nil {
		return nil, nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return nil, nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = osName, arch
	cf.Created = v1.Time{Time: s.epoch}
	cf.Config.User = s.user
	cf.Config.WorkingDir = "/"
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.envs...)
	if s.entrypoint != "" {
		cf.Config.Entrypoint = []string{s.entrypoint}
	}
	if s.cmd != "" {
		cf.Config.Cmd = strings.Fields(s.cmd)
	}
	if len(labels) > 0 {
		cf.Config.Labels = labels
	}
	cf.History = []v1.History{{Created: v1.Time{Time: s.epoch}, CreatedBy: "hack/ociimage", Comment: "one layer of files"}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, nil, err
	}
	if len(labels) > 0 {
		img = mutate.Annotations(img, labels).(v1.Image)
	}
	return img, bins, nil
}

// artifact is an OCI 1.1 artifact manifest: the empty config, one layer, a subject.
// go-containerregistry has no constructor for one (mutate builds on a config file), so
// it is assembled from its v1.Manifest type and partial.CompressedToImage.
type artifact struct {
	manifest []byte
	layer    v1.Layer
}

var emptyJSON = []byte("{}")

func (a *artifact) RawConfigFile() ([]byte, error) { return emptyJSON, nil }
func (a *artifact) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}
func (a *artifact) RawManifest() ([]byte, error) { return a.manifest, nil }
func (a *artifact) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if d, _ := a.layer.Digest(); d == h {
		return a.layer, nil
	}
	if h == emptyDescriptor().Digest {
		return static.NewLayer(emptyJSON, emptyConfigType), nil
	}
	return nil, fmt.Errorf("artifact has no blob %s", h)
}

func emptyDescriptor() v1.Descriptor {
	h, n, _ := v1.SHA256(bytes.NewReader(emptyJSON))
	return v1.Descriptor{MediaType: emptyConfigType, Digest: h, Size: n}
}

// sbomArtifact is the SBOM as an artifact whose subject is the index: registries with
// the referrers API list it under the index's digest (oras discover, cosign tree).
func sbomArtifact(idx v1.ImageIndex, doc []byte, created time.Time) (v1.Image, error) {
	subject, err := partial.Descriptor(idx)
	if err != nil {
		return nil, err
	}
	subject = &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	layer := static.NewLayer(doc, SBOMArtifactType)
	ld, err := partial.Descriptor(layer)
	if err != nil {
		return nil, err
	}
	ld.Annotations = map[string]string{"org.opencontainers.image.title": "sbom.spdx.json"}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  SBOMArtifactType,
		Config:        emptyDescriptor(),
		Layers:        []v1.Descriptor{*ld},
		Subject:       subject,
		Annotations:   map[string]string{"org.opencontainers.image.created": created.Format(time.RFC3339)},
	}
	raw, err := jsonMarshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&artifact{manifest: raw, layer: layer})
}

// writeLayout replaces dir with an OCI layout holding the index (named by tag) and the
// SBOM artifact.
func (s *spec) writeLayout(tag name.Tag, idx v1.ImageIndex, sbom v1.Image) error {
	if err := os.RemoveAll(s.out); err != nil {
		return err
	}
	lp, err := layout.Write(s.out, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", s.out, err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
		"io.containerd.image.name":          tag.Context().Name() + ":" + tag.TagStr(),
	})); err != nil {
		return fmt.Errorf("write the index to %s: %w", s.out, err)
	}
	if sbom != nil {
		if err := lp.AppendImage(sbom, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": "sbom",
		})); err != nil {
			return fmt.Errorf("write the SBOM to %s: %w", s.out, err)
		}
	}
	return nil
}

// push writes the index to ref and the SBOM next to it, by digest.
func push(ref string, idx v1.ImageIndex, sbom v1.Image) error {
	r, err := parseRef(ref)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		return fmt.Errorf("push %s: %w (is the registry running? hack/cluster.sh up starts one)", ref, err)
	}
	if sbom != nil {
		d, err := sbom.Digest()
		if err != nil {
			return err
		}
		if err := remote.Write(r.Context().Digest(d.String()), sbom); err != nil {
			return fmt.Errorf("push the SBOM of %s: %w", ref, err)
		}
	}
	return nil
}

// parseRef parses a reference; a loopback registry is spoken to over plain HTTP.
func parseRef(ref string) (name.Reference, error) {
	var opts []name.Option
	host := strings.SplitN(ref, "/", 2)[0]
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("bad reference %q: %w", ref, err)
	}
	return r, nil
}
