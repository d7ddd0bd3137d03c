package client_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// TestMain starts the examples' agent: a real kube-apiserver and etcd (envtest), and
// a leasehold-agent built from this tree, serving on a socket named in
// $LEASEHOLD_SOCKET, as the webhook sets it in a Pod.
func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "leasehold-client-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := testenv.BuildBinaries(dir, false, "github.com/leasehold/leasehold/cmd/leasehold-agent"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env, err := testenv.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(kubeconfig, cfg.Host, cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	agent, err := testenv.StartAgent(filepath.Join(dir, "leasehold-agent"), kubeconfig, filepath.Join(dir, "agent.sock"),
		filepath.Join(dir, "agent.log"), "example", "--locks=db-migration,nightly-report", "--leader=scheduler", "--install-cli=false")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer agent.Stop()
	os.Setenv("LEASEHOLD_SOCKET", agent.Socket)
	os.Unsetenv("LEASEHOLD_URL")
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "agent log:\n%s", agent.Log())
	}
	return code
}
