// Command pause is the Pod sandbox ("infra") process of the local test cluster: it holds
// the Pod's namespaces open and does nothing else. It exits 0 on SIGTERM or SIGINT.
//
// It is built statically (CGO_ENABLED=0) by hack/images.sh into the image
// leasehold.local/pause:3.10, which hack/cluster.sh configures as containerd's sandbox
// image, so no image has to come from a registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	os.Exit(0)
}
