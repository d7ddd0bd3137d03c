// Package version is the version every Leasehold binary reports (`leasehold version`,
// `leasehold-agent --version`, `leasehold-webhook --version`, `kubectl leasehold
// version`) and logs at start. The build sets it:
//
//	go build -ldflags "-X github.com/leasehold/leasehold/internal/version.version=$(git describe --tags --always --dirty)" ./cmd/...
//
// (make build and hack/images.sh do). Without it, the module version `go install
// ...@vX` records, else "dev".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set with -ldflags -X (see the package comment).
var version string

// Version is the binary's version: the one set at build time, else the module's
// version from the build info (go install ...@v1.2.3), else "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// String is the line the binaries print for --version: the program, its version, and
// the Go toolchain and platform it was built with.
func String(program string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", program, Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
