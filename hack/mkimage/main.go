// Command mkimage writes a single-layer container image as a docker-archive tarball,
// without Docker and without any registry, so that hack/images.sh can import it into the
// local cluster's containerd with `ctr -n k8s.io images import`.
//
//	go run ./hack/mkimage -tag leasehold.local/pause:3.10 -o pause.tar \
//	    -file bin/pause=/pause -entrypoint /pause
//
// Flags (repeatable ones marked *):
//
//	-tag NAME:TAG       image reference written into the archive (required)
//	-o PATH             output docker-archive (required)
//	-file SRC=DST *     copy host file SRC to DST in the image (mode kept from SRC)
//	-link LINK=TARGET * symlink LINK -> TARGET in the image
//	-dir PATH[:MODE] *  extra directory (octal MODE, default 0755)
//	-user UID:GID       config User (default 65532:65532)
//	-entrypoint PATH    config Entrypoint (one element; empty = none)
//	-cmd ARGS           config Cmd (space separated; empty = none)
//	-env K=V *          extra config Env (PATH is always set)
//
// Every image also gets /tmp (1777), /etc/passwd and /etc/group naming root (0) and
// nonroot (65532), so tools that look users up by name behave. Files are owned by root,
// timestamps are zero, entries are sorted: the same inputs give the same image digest.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// entry is one file-system object of the layer.
type entry struct {
	hdr  tar.Header
	data []byte
}

func main() {
	var files, links, dirs, envs multi
	tag := flag.String("tag", "", "image reference, e.g. leasehold.local/pause:3.10")
	out := flag.String("o", "", "output docker-archive path")
	user := flag.String("user", "65532:65532", "config User")
	entrypoint := flag.String("entrypoint", "", "config Entrypoint (single path)")
	cmd := flag.String("cmd", "", "config Cmd (space separated)")
	flag.Var(&files, "file", "SRC=DST: copy a host file into the image (repeatable)")
	flag.Var(&links, "link", "LINK=TARGET: symlink in the image (repeatable)")
	flag.Var(&dirs, "dir", "PATH[:MODE]: directory in the image (repeatable)")
	flag.Var(&envs, "env", "K=V: config Env (repeatable)")
	flag.Parse()
	if *tag == "" || *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*tag, *out, *user, *entrypoint, *cmd, files, links, dirs, envs); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(tag, out, user, entrypoint, cmd string, files, links, dirs, envs []string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("bad -tag: %w", err)
	}
	entries := map[string]*entry{}
	addDir := func(p string, mode int64) {
		p = path.Clean("/" + p)
		for d := p; d != "/"; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}
			}
		}
		entries[p].hdr.Mode = mode
	}
	addParents := func(p string) {
		if d := path.Dir(p); d != "/" {
			if _, ok := entries[d]; !ok {
				addDir(d, 0o755)
			}
		}
	}
	addFile := func(dst string, data []byte, mode int64) {
		dst = path.Clean("/" + dst)
		addParents(dst)
		entries[dst] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}, data: data}
	}

	addDir("/tmp", 0o1777)
	addFile("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh\n"), 0o644)
	addFile("/etc/group", []byte("root:x:0:\nnonroot:x:65532:\n"), 0o644)
	addDir("/home/nonroot", 0o755)
	entries["/home/nonroot"].hdr.Uid, entries["/home/nonroot"].hdr.Gid = 65532, 65532

	for _, d := range dirs {
		p, m, hasMode := strings.Cut(d, ":")
		mode := int64(0o755)
		if hasMode {
			v, err := strconv.ParseInt(m, 8, 32)
			if err != nil {
				return fmt.Errorf("bad -dir mode %q: %w", d, err)
			}
			mode = v
		}
		addDir(p, mode)
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || src == "" || dst == "" {
			return fmt.Errorf("bad -file %q, want SRC=DST", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		st, err := os.Stat(src)
		if err != nil {
			return err
		}
		addFile(dst, data, int64(st.Mode().Perm()))
	}
	for _, l := range links {
		link, target, ok := strings.Cut(l, "=")
		if !ok || link == "" || target == "" {
			return fmt.Errorf("bad -link %q, want LINK=TARGET", l)
		}
		link = path.Clean("/" + link)
		addParents(link)
		entries[link] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
	}

	// Write the layer: sorted paths put every directory before its contents.
	names := make([]string, 0, len(entries))
	for p := range entries {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		e := entries[p]
		e.hdr.Name = strings.TrimPrefix(p, "/")
		if e.hdr.Typeflag == tar.TypeDir {
			e.hdr.Name += "/"
		}
		e.hdr.ModTime = time.Unix(0, 0)
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return err
	}

	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.User = user
	cf.Config.WorkingDir = "/"
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, envs...)
	if entrypoint != "" {
		cf.Config.Entrypoint = []string{entrypoint}
	}
	if cmd != "" {
		cf.Config.Cmd = strings.Fields(cmd)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s (%d files)\n", out, tag, digest, len(names))
	return nil
}
