package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one file-system object of the layer.
type entry struct {
	hdr  tar.Header
	data []byte
}

// fsTree is the file system of one platform's layer, keyed by absolute path.
type fsTree map[string]*entry

func (t fsTree) dir(p string, mode int64) {
	p = path.Clean("/" + p)
	for d := p; d != "/"; d = path.Dir(d) {
		if _, ok := t[d]; !ok {
			t[d] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}
		}
	}
	t[p].hdr.Mode = mode
}

func (t fsTree) parents(p string) {
	if d := path.Dir(p); d != "/" {
		if _, ok := t[d]; !ok {
			t.dir(d, 0o755)
		}
	}
}

func (t fsTree) file(dst string, data []byte, mode int64) {
	dst = path.Clean("/" + dst)
	t.parents(dst)
	t[dst] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}, data: data}
}

func (t fsTree) symlink(link, target string) {
	link = path.Clean("/" + link)
	t.parents(link)
	t[link] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}

// newTree is the base every image gets: /tmp (1777), /etc/passwd and /etc/group naming
// root (0) and nonroot (65532), and nonroot's home, so tools that look users up by name
// behave. There is no shell and no package manager unless a -file puts one there.
func newTree() fsTree {
	t := fsTree{}
	t.dir("/tmp", 0o1777)
	t.file("/etc/passwd", []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"), 0o644)
	t.file("/etc/group", []byte("root:x:0:\nnonroot:x:65532:\n"), 0o644)
	t.dir("/home/nonroot", 0o755)
	t["/home/nonroot"].hdr.Uid, t["/home/nonroot"].hdr.Gid = 65532, 65532
	return t
}

// layer turns the tree into one layer. go-containerregistry takes a layer as a tar
// stream (tarball.LayerFromOpener compresses it and computes the digests) but has no
// writer of a tar from a file list with modes and symlinks (crane.Layer writes regular
// 0644 files only), so the tar is written here, as ko does: entries sorted (every
// directory before its contents), owned by root unless set, one fixed mtime, PAX headers.
// The same inputs give the same bytes, hence the same digest.
func (t fsTree) layer(mtime time.Time) (v1.Layer, error) {
	names := make([]string, 0, len(t))
	for p := range t {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		e := t[p]
		hdr := e.hdr
		hdr.Name = strings.TrimPrefix(p, "/")
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		hdr.ModTime = mtime
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&hdr); err != nil {
			return nil, fmt.Errorf("write tar header of %s: %w", p, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

// readFileMode reads a host file and its permission bits.
func readFileMode(src string) ([]byte, int64, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, 0, err
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, 0, err
	}
	return data, int64(st.Mode().Perm()), nil
}
