package agent

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/go-logr/logr/funcr"
)

// The client lands at the path, runnable by any UID, and a second install (a restarted
// agent) replaces it whole.
func TestInstallCLI(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	script := "#!/bin/sh\necho installed client\n"
	if err := os.WriteFile(src, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "vol", "bin", "leasehold")
	old := syscall.Umask(0o077) // a strict umask must not make the copy private
	defer syscall.Umask(old)
	for i := range 2 {
		if err := InstallCLI(src, dst); err != nil {
			t.Fatalf("install %d: %v", i+1, err)
		}
	}
	for path, want := range map[string]fs.FileMode{dst: CLIMode, filepath.Dir(dst): fs.ModeDir | CLIMode} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %s, want %s", path, fi.Mode(), want)
		}
	}
	if got, _ := os.ReadFile(dst); string(got) != script {
		t.Errorf("installed client = %q, want the source's %q", got, script)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".*")); len(left) > 0 {
		t.Errorf("temporary files left beside the client: %v", left)
	}

	// Any UID can run it (an app container runs as its own UID, not the agent's).
	if os.Geteuid() == 0 {
		// The parents of the volume are the test's own temporary directories (0700).
		for d := filepath.Dir(dst); d != "/"; d = filepath.Dir(d) {
			if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
				defer os.Chmod(d, fi.Mode().Perm())
				_ = os.Chmod(d, fi.Mode().Perm()|0o001)
			}
		}
		cmd := exec.Command(dst)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "installed client") {
			t.Errorf("UID 1000 cannot run the installed client: %v: %s", err, out)
		}
	}
}

func TestInstallCLIMissingSourceIsALogLine(t *testing.T) {
	dir := t.TempDir()
	if err := InstallCLI(filepath.Join(dir, "nope"), filepath.Join(dir, "bin", "leasehold")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing source: want fs.ErrNotExist, got %v", err)
	}
	o := NewOptions()
	o.Socket = filepath.Join(dir, "agent.sock")
	o.CLISource = filepath.Join(dir, "nope")
	var logged bytes.Buffer
	if err := installCLI(o, funcr.New(func(prefix, args string) { logged.WriteString(args + "\n") }, funcr.Options{})); err != nil {
		t.Fatalf("a missing source must not stop the agent: %v", err)
	}
	for _, want := range []string{"Failed to install the leasehold client", filepath.Join(dir, "nope"), filepath.Join(dir, "bin", "leasehold"), "--cli-source"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log does not mention %q:\n%s", want, logged.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bin", "leasehold")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("something was installed from a missing source: %v", err)
	}

	o.InstallCLI = false
	o.CLISource = ""
	_ = installCLI(o, funcr.New(func(_, args string) { t.Errorf("--install-cli=false logged %s", args) }, funcr.Options{}))
}

// Another container of the Pod that got to write into the socket volume before the agent
// (an app container with a read-write mount, in plain-container mode where they start
// together) made bin/ its own, or a link to a directory of its choosing: the agent
// installs nothing there, and refuses to start (installCLI returns the error), with a
// message naming the directory and the fix.
func TestInstallCLIRefusesADirectoryItDoesNotOwn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to make a directory another UID owns")
	}
	tests := map[string]func(t *testing.T, bin string){
		"bin owned by another UID": func(t *testing.T, bin string) {
			if err := os.Mkdir(bin, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(bin, 1000, 1000); err != nil {
				t.Fatal(err)
			}
		},
		"bin a link to another UID's directory": func(t *testing.T, bin string) {
			theirs := filepath.Join(filepath.Dir(bin), "theirs")
			if err := os.Mkdir(theirs, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(theirs, 1000, 1000); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(theirs, bin); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, prepare := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src")
			if err := os.WriteFile(src, []byte("#!/bin/sh\necho agent's client\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			bin := filepath.Join(dir, "bin")
			prepare(t, bin)

			err := InstallCLI(src, filepath.Join(bin, CLIName))
			if !errors.Is(err, ErrUnsafeCLIDir) {
				t.Fatalf("install into %s: want ErrUnsafeCLIDir, got %v", bin, err)
			}
			for _, want := range []string{bin, "read-only"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if _, err := os.Lstat(filepath.Join(bin, CLIName)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("something was installed into %s: %v", bin, err)
			}

			o := NewOptions()
			o.Socket = filepath.Join(dir, "agent.sock")
			o.CLISource = src
			if err := installCLI(o, funcr.New(func(_, _ string) {}, funcr.Options{})); !errors.Is(err, ErrUnsafeCLIDir) {
				t.Errorf("installCLI: want the agent stopped with ErrUnsafeCLIDir, got %v", err)
			}
		})
	}
}
