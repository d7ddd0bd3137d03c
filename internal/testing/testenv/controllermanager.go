package testenv

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// StartControllerManager runs the real kube-controller-manager (built by
// hack/build-k8s.sh kube-controller-manager into the same cache as kube-apiserver)
// with only the named controllers (e.g. "garbagecollector") against the API server of
// cfg, until the test ends. Each controller runs as the cluster runs it, with its own
// ServiceAccount of kube-system (--use-service-account-credentials: tokens from the
// TokenRequest API), so admission sees the same users it sees in a real cluster.
// LEASEHOLD_TEST_APISERVER_OUTPUT=1 shows its log.
func StartControllerManager(t testing.TB, cfg *rest.Config, controllers ...string) {
	t.Helper()
	dir, err := AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no kube-controller-manager in %s: run `make envtest` (hack/build-k8s.sh kube-apiserver etcd "+
			"kube-controller-manager): %v", dir, errors.Unwrap(err))
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := WriteKubeconfig(kc, cfg.Host, cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"--kubeconfig="+kc,
		"--controllers="+strings.Join(controllers, ","),
		"--use-service-account-credentials",
		"--leader-elect=false",
		"--secure-port=0",
	)
	cmd.WaitDelay = 5 * time.Second
	if os.Getenv("LEASEHOLD_TEST_APISERVER_OUTPUT") != "" {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start kube-controller-manager: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case err := <-done:
		t.Fatalf("kube-controller-manager exited at start: %v (LEASEHOLD_TEST_APISERVER_OUTPUT=1 shows its log)", err)
	case <-time.After(time.Second):
	}
}
