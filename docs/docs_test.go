package docs_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/sidecar/client"
)

// startAgent runs a leasehold-agent built from this tree on a real kube-apiserver and
// etcd, as sidecar/agent's tests do, with lock nightly-report and args.
func startAgent(t *testing.T, args ...string) *testenv.Agent {
	t.Helper()
	dir := t.TempDir()
	if err := testenv.BuildBinaries(dir, false, "github.com/leasehold/leasehold/cmd/leasehold-agent"); err != nil {
		t.Fatal(err)
	}
	cfg := testenv.Start(t)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(kubeconfig, cfg.Host, cfg); err != nil {
		t.Fatal(err)
	}
	a, err := testenv.StartAgent(filepath.Join(dir, "leasehold-agent"), kubeconfig, filepath.Join(dir, "agent.sock"),
		filepath.Join(dir, "agent.log"), "docs", append([]string{"--locks=nightly-report", "--install-cli=false"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log())
		}
	})
	return a
}

// TestPythonSnippet runs docs/snippets/leasehold.py with python3 against a real agent:
// acquire with a ttl, a stale second release, and a hold tied to the connection, which
// the test sees held from outside and then sees end when the script closes it.
func TestPythonSnippet(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (Debian: apt-get install python3): the Python snippet is not run")
	}
	a := startAgent(t)
	cmd := exec.Command(python, filepath.Join("snippets", "leasehold.py"), "nightly-report")
	cmd.Env = append(os.Environ(), "LEASEHOLD_SOCKET="+a.Socket)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	var out []string
	next := func() string {
		if !lines.Scan() {
			t.Fatalf("the script ended early; it printed:\n%s", strings.Join(out, "\n"))
		}
		out = append(out, lines.Text())
		return lines.Text()
	}
	for _, want := range []string{
		"acquired nightly-report token=1 held=True",
		"second release: 409 StaleToken",
		"holding nightly-report token=2",
	} {
		if got := next(); got != want {
			t.Fatalf("the script printed %q, want %q", got, want)
		}
	}
	c := client.New(a.Socket, "")
	if s, err := c.State(context.Background(), "nightly-report"); err != nil || !s.Held || s.Token != 2 {
		t.Fatalf("while the script holds the lock by its connection, the agent says %+v %v", s, err)
	}
	if _, err := io.WriteString(stdin, "\n"); err != nil {
		t.Fatal(err)
	}
	if got, want := next(), "closed the hold on nightly-report"; got != want {
		t.Fatalf("the script printed %q, want %q", got, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("python3 leasehold.py: %v", err)
	}
	// The agent ends the hold when it sees the connection close.
	err = wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		s, err := c.State(ctx, "nightly-report")
		return err == nil && !s.Held, nil
	})
	if err != nil {
		t.Fatalf("the hold did not end after the script closed its connection: %v", err)
	}
}

// TestJavaSnippet runs docs/snippets/Leasehold.java over the agent's loopback TCP port
// when a JDK (11 or later: `java File.java`) is installed; otherwise it says so and skips.
func TestJavaSnippet(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Skip("no JDK installed (Debian: apt-get install default-jdk-headless): the Java snippet is not run")
	}
	port := testenv.FreePort(t)
	startAgent(t, fmt.Sprintf("--tcp-port=%d", port))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, java, filepath.Join("snippets", "Leasehold.java"), "nightly-report")
	cmd.Env = append(os.Environ(), fmt.Sprintf("LEASEHOLD_URL=http://127.0.0.1:%d", port))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("java Leasehold.java: %v\n%s", err, out)
	}
	if want := "acquired nightly-report token=1 held=true\nreleased nightly-report\n"; string(out) != want {
		t.Fatalf("java Leasehold.java printed %q, want %q", out, want)
	}
}

// quoted is a marker before a fenced block: <!-- quoted from PATH --> (PATH relative
// to the repository root). The block must appear in that file word for word.
var quoted = regexp.MustCompile("(?s)<!-- quoted from (\\S+) -->\\s*```[a-z]*\\n(.*?)```")

// TestQuotedSnippetsAreTheTestedOnes: every block a guide marks as quoted is the text
// of the file it names (docs/snippets/*, examples/*), which the tests run as they are.
func TestQuotedSnippetsAreTheTestedOnes(t *testing.T) {
	pages, _ := filepath.Glob("*.md")
	pages = append(pages, filepath.Join("..", "README.md"))
	n := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range quoted.FindAllStringSubmatch(string(b), -1) {
			n++
			src, err := os.ReadFile(filepath.Join("..", m[1]))
			if err != nil {
				t.Errorf("%s quotes %s: %v", page, m[1], err)
				continue
			}
			if !strings.Contains(string(src), m[2]) {
				t.Errorf("%s quotes %s, but the block is not in that file word for word: copy it again\n%s", page, m[1], m[2])
			}
		}
	}
	if n < 5 {
		t.Errorf("found %d quoted blocks in the guides, want at least 5: did the marker <!-- quoted from PATH --> change?", n)
	}
}
