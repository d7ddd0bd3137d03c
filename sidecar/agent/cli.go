package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

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

// InstallCLI copies the leasehold client from src to dst, so that every container
// that mounts the socket volume can run it (dst is in that volume; the webhook sets
// LEASEHOLD_CLI to it). The copy is atomic: it is written to a temporary file in dst's
// directory, then renamed over dst, so that a container never runs a half-written
// client, and a client already running from an earlier copy (a restarted agent) keeps
// its own file. dst's directory is created if missing; it and dst get CLIMode.
func InstallCLI(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open the leasehold client: %w", err)
	}
	defer in.Close()
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, CLIMode); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// MkdirAll's mode goes through the umask, and the directory may be left from an
	// earlier incarnation of the agent.
	if err := os.Chmod(dir, CLIMode); err != nil {
		return fmt.Errorf("set the mode of %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+"-*")
	if err != nil {
		return fmt.Errorf("create a temporary file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if _, err := io.Copy(tmp, in); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("copy %s to %s: %w", src, tmp.Name(), err)
	}
	if err := tmp.Chmod(CLIMode); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("set the mode of %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("move the leasehold client into place: %w", err)
	}
	return nil
}

// installCLI is InstallCLI as Run calls it: a client that cannot be installed is
// logged, never fatal: the locks and the socket API work without it.
func installCLI(o *Options, log logr.Logger) {
	if !o.InstallCLI {
		return
	}
	dst := o.cliPath()
	src, err := cliSource(o.CLISource)
	if err == nil {
		err = InstallCLI(src, dst)
	}
	if err != nil {
		log.Error(err, "Failed to install the leasehold client for the Pod's containers; "+
			"`leasehold` at $LEASEHOLD_CLI will be missing (the socket API works without it)",
			"source", src, "path", dst, "fix", "put the leasehold binary beside leasehold-agent in the agent image, or pass --cli-source")
		return
	}
	log.Info("Installed the leasehold client", "source", src, "path", dst)
}
