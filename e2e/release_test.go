//go:build e2e

package e2e

import (
	"os"
	"strings"
)

// imageDigestValues are the helm flags that pin the chart's image to the digest the
// node's registry serves ($LEASEHOLD_IMAGE, repository@sha256:...), as the chart of a
// release does; none when the image is not pinned.
func imageDigestValues() []string {
	repo, digest, ok := strings.Cut(os.Getenv("LEASEHOLD_IMAGE"), "@")
	if !ok {
		return nil
	}
	return []string{"--set", "image.repository=" + repo, "--set", "image.digest=" + digest}
}
