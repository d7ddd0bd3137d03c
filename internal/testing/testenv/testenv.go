// Package testenv starts the real test ground, a kube-apiserver and an etcd run by
// controller-runtime's envtest, for the tests of every package that talks to the
// Kubernetes API.
//
// The binaries come from hack/build-k8s.sh (built from the Go module proxy, cached in
// ~/.cache/leasehold/k8s/<version>). `make test` builds them and exports
// KUBEBUILDER_ASSETS; a plain `go test` finds them in the cache too. When they are
// missing the tests fail with the command that provides them: they never skip, so a
// green run always means the API server was really there.
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// KubernetesVersion is the version of the binaries that hack/build-k8s.sh builds.
const KubernetesVersion = "v1.37.2"

// CacheDir is the project's cache: $LEASEHOLD_CACHE, else leasehold in the user's cache
// directory (~/.cache/leasehold), as hack/build-k8s.sh has it.
func CacheDir() (string, error) {
	if dir := os.Getenv("LEASEHOLD_CACHE"); dir != "" {
		return dir, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the user cache directory: %w", err)
	}
	return filepath.Join(base, "leasehold"), nil
}

// AssetsDir returns the directory that holds kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS when set, else the cache that hack/build-k8s.sh fills.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		cache, err := CacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "k8s", KubernetesVersion)
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("no %s in %s: run `make envtest` (hack/build-k8s.sh kube-apiserver etcd) "+
				"or point KUBEBUILDER_ASSETS at a directory that has kube-apiserver and etcd: %w",
				bin, dir, errors.Unwrap(err))
		}
	}
	return dir, nil
}

// New returns an envtest.Environment that uses the project's binaries.
// Callers add what they need (WebhookInstallOptions, ...) and call Start.
func New() (*envtest.Environment, error) {
	dir, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	return &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		DownloadBinaryAssets:     false,
		AttachControlPlaneOutput: os.Getenv("LEASEHOLD_TEST_APISERVER_OUTPUT") != "",
	}, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WriteKubeconfig writes a kubeconfig with the credentials of cfg (an envtest user)
// and server host (cfg.Host, or a proxy in front of it).
func WriteKubeconfig(path, host string, cfg *rest.Config) error {
	c := clientcmdapi.NewConfig()
	c.Clusters["envtest"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: cfg.CAData}
	c.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	c.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	c.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*c, path)
}

// Start starts a real kube-apiserver and etcd for one test (New, then Start) and stops
// them when the test ends. It fails the test with testenv's message when the binaries
// are missing.
func Start(t testing.TB) *rest.Config {
	t.Helper()
	env, err := New()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return cfg
}

// BuildBinaries builds the project's commands pkgs into dir as shipped (static,
// CGO_ENABLED=0, like `make build`), or with the race detector when race is set (then
// with cgo, which it needs). The compiler's output goes to stderr.
//
// The go command builds them into a cache of this source tree (BinCacheDir), where it
// relinks only what changed, and dir gets hard links to them (copies across file
// systems): the test binaries of several packages, run at once by one `go test`, link
// the agent once between them, and a later build does not change the files dir holds.
func BuildBinaries(dir string, race bool, pkgs ...string) error {
	cache, err := BinCacheDir(race)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return fmt.Errorf("create the binary cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock the binary cache: %w", err)
	}
	defer lock.Close()
	// One build at a time in the cache; the others then find the binaries up to date.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock the binary cache: %w", err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	args := []string{"build", "-o", cache + string(filepath.Separator)}
	env := append(os.Environ(), "CGO_ENABLED=0")
	if race {
		args = append(args, "-race")
		env = append(os.Environ(), "CGO_ENABLED=1")
	}
	build := exec.Command("go", append(args, pkgs...)...)
	build.Env = env
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build %s: %w", strings.Join(pkgs, " "), err)
	}
	for _, pkg := range pkgs {
		name := path.Base(pkg)
		if err := linkOrCopy(filepath.Join(cache, name), filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("put %s into %s: %w", name, dir, err)
		}
	}
	return nil
}

// BinCacheDir is where BuildBinaries builds: a directory of the user's cache for this
// source tree (its path hashed: each checkout or worktree has its own), with or
// without the race detector.
func BinCacheDir(race bool) (string, error) {
	base, err := CacheDir()
	if err != nil {
		return "", err
	}
	root, err := filepath.Abs(filepath.Join(ManifestsDir(), ".."))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	kind := "static"
	if race {
		kind = "race"
	}
	return filepath.Join(base, "testbin", hex.EncodeToString(sum[:8]), kind), nil
}

// linkOrCopy makes dst the file src: a hard link, or a copy where there can be none.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
