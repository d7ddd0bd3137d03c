package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// CLIMode is the mode of the installed client and of its directory: any UID of the Pod
// may read and run it, only the agent may change it.
const CLIMode = 0o755

// CLIName is the client's file name, in the image beside the agent and in the volume.
const CLIName = "leasehold"

// cliSource is where the client is copied from: src, or else the file CLIName beside
// the agent's own executable (both are in /usr/local/bin in the image).
func cliSource(src string) (string, error) {
	if src != "" {
		return src, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the agent's own executable: %w", err)
	}
	return filepath.Join(filepath.Dir(self), CLIName), nil
}

// ErrUnsafeCLIDir is wrapped by InstallCLI's error when the client's directory is not
// the agent's own: a symbolic link, or a directory another user owns (another container
// of the Pod wrote into the socket volume before the agent). The agent then refuses to
// start: a client it cannot vouch for would run in every other container.
var ErrUnsafeCLIDir = errors.New("the directory of the leasehold client is not the agent's own")

// InstallCLI copies the leasehold client from src to dst, so that every container
// that mounts the socket volume can run it (dst is in that volume; the webhook sets
// LEASEHOLD_CLI to it). The copy is atomic: it is written to a temporary file in dst's
// directory, then renamed over dst, so that a container never runs a half-written
// client, and a client already running from an earlier copy (a restarted agent) keeps
// its own file. dst's directory is created if missing; it and dst get CLIMode.
//
// It installs only into a directory that the agent itself owns (it created it, or an
// earlier incarnation of it did), and that is no symbolic link; otherwise the error
// wraps ErrUnsafeCLIDir. The checks and the writes go through one open handle on the
// directory (os.Root), so that the directory cannot be swapped between them.
func InstallCLI(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open the leasehold client: %w", err)
	}
	defer in.Close()
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(filepath.Dir(dir), CLIMode); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, CLIMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if fi, err := os.Lstat(dir); err != nil {
		return fmt.Errorf("inspect %s: %w", dir, err)
	} else if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("refuse to install the leasehold client into %s: it is a symbolic link, which the agent did not make "+
			"(another container of the Pod can write into the socket volume); fix: mount the volume read-only in every container "+
			"but the agent (the webhook does so), then recreate the Pod: %w", dir, ErrUnsafeCLIDir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	fi, err := root.Stat(".")
	if err != nil {
		return fmt.Errorf("inspect %s: %w", dir, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		owner := -1
		if ok {
			owner = int(st.Uid)
		}
		return fmt.Errorf("refuse to install the leasehold client into %s: it is owned by UID %d, not by the agent (UID %d), "+
			"so another container of the Pod wrote into the socket volume; fix: mount the volume read-only in every container "+
			"but the agent (the webhook does so), then recreate the Pod: %w", dir, owner, os.Geteuid(), ErrUnsafeCLIDir)
	}
	// The directory may be left from an earlier incarnation of the agent, and Mkdir's
	// mode goes through the umask: as its owner, the agent sets it.
	if err := root.Chmod(".", CLIMode); err != nil {
		return fmt.Errorf("set the mode of %s: %w", dir, err)
	}
	base := filepath.Base(dst)
	tmpName := fmt.Sprintf(".%s-%d-%d", base, os.Getpid(), time.Now().UnixNano())
	tmp, err := root.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, CLIMode)
	if err != nil {
		return fmt.Errorf("create a temporary file in %s: %w", dir, err)
	}
	defer root.Remove(tmpName) // after a successful rename there is nothing to remove
	if _, err := io.Copy(tmp, in); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("copy %s to %s: %w", src, filepath.Join(dir, tmpName), err)
	}
	if err := tmp.Chmod(CLIMode); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("set the mode of %s: %w", filepath.Join(dir, tmpName), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Join(dir, tmpName), err)
	}
	if err := root.Rename(tmpName, base); err != nil {
		return fmt.Errorf("move the leasehold client into place: %w", err)
	}
	return nil
}

// installCLI is InstallCLI as Run calls it. A client that cannot be installed is
// logged, not fatal (the locks and the socket API work without it), unless its
// directory is not the agent's own (ErrUnsafeCLIDir): then the error is returned and
// the agent does not start, since the other containers would run what is there.
func installCLI(o *Options, log logr.Logger) error {
	if !o.InstallCLI {
		return nil
	}
	dst := o.cliPath()
	src, err := cliSource(o.CLISource)
	if err == nil {
		err = InstallCLI(src, dst)
	}
	if errors.Is(err, ErrUnsafeCLIDir) {
		return err
	}
	if err != nil {
		log.Error(err, "Failed to install the leasehold client for the Pod's containers; "+
			"`leasehold` at $LEASEHOLD_CLI will be missing (the socket API works without it)",
			"source", src, "path", dst, "fix", "put the leasehold binary beside leasehold-agent in the agent image, or pass --cli-source")
		return nil
	}
	log.Info("Installed the leasehold client", "source", src, "path", dst)
	return nil
}
