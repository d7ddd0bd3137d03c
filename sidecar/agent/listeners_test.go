package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// TestAListenerThatFailsToOpenStopsTheAgentCleanly starts the agent with every
// listener on (API socket, loopback TCP, probe socket, metrics) and one of them
// impossible to open: the agent exits with an error naming the flag to fix, leaves no
// socket file behind, and never took its leader lock.
func TestAListenerThatFailsToOpenStopsTheAgentCleanly(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port

	for _, flag := range []string{"--socket", "--tcp-port", "--probe-socket", "--metrics-bind-address"} {
		t.Run(flag, func(t *testing.T) {
			dir := t.TempDir()
			listeners := map[string]string{
				"--socket":               filepath.Join(dir, "agent.sock"),
				"--tcp-port":             strconv.Itoa(testenv.FreePort(t)),
				"--probe-socket":         filepath.Join(dir, "probe.sock"),
				"--metrics-bind-address": fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			}
			// The one under test cannot be opened: its port is busy, or a non-empty
			// directory stands where its socket goes.
			switch flag {
			case "--tcp-port":
				listeners[flag] = strconv.Itoa(busyPort)
			case "--metrics-bind-address":
				listeners[flag] = fmt.Sprintf("127.0.0.1:%d", busyPort)
			default:
				if err := os.MkdirAll(filepath.Join(listeners[flag], "in-the-way"), 0o750); err != nil {
					t.Fatal(err)
				}
			}
			lease := "listen-fail" + flag[1:] // listen-fail-socket, ...
			spec := testenv.AgentSpec{Binary: filepath.Join(binDir, "leasehold-agent"), Pod: "pod" + flag[1:],
				UID: "00000000-0000-0000-0000-00000000f00d", Socket: listeners["--socket"], Kubeconfig: kubeconfig,
				Args: []string{"--leader=" + lease, "--install-cli=false"}}
			for f, v := range listeners {
				spec.Args = append(spec.Args, f+"="+v)
			}
			argv := spec.Argv()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("want exit status 1, got %v\n%s", err, out)
			}
			if !strings.Contains(string(out), `"error":"`+flag+": ") {
				t.Errorf("the error does not name %s:\n%s", flag, out)
			}
			for _, sock := range []string{"agent.sock", "probe.sock"} {
				if fi, err := os.Lstat(filepath.Join(dir, sock)); err == nil && fi.Mode()&os.ModeSocket != 0 {
					t.Errorf("the socket file %s was left behind", sock)
				}
			}
			_, err = kube.CoordinationV1().Leases("default").Get(context.Background(), lease, metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				t.Errorf("the leader lock's Lease %s: want none (the locks start after every listener is open), got %v", lease, err)
			}
		})
	}
}
