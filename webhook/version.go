package webhook

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	utilversion "k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apimachinery/pkg/version"
)

// MinKubernetesMinor is the oldest Kubernetes 1.x the webhook runs with: the
// webhook configuration's matchConditions (beta and on by default since 1.28) keep
// every Pod without a leasehold.io/ annotation away from the webhook. An older API
// server drops the field it does not know and calls the webhook for every Pod, so that
// with failurePolicy Fail no Pod at all is created while the webhook is down.
const MinKubernetesMinor = 28

// NativeSidecarMinor is the oldest Kubernetes 1.x with native sidecars (init
// containers with restartPolicy Always, on by default since 1.29).
const NativeSidecarMinor = 29

// CheckServerVersion refuses an API server older than the webhook needs, with the
// fix: older than 1.28 always, older than 1.29 unless the agent is injected as a plain
// container. It reads the minor version from GitVersion ("v1.30.4-gke.1348000"), or
// from Major and Minor ("30+") when that is all the server says.
func CheckServerVersion(info *version.Info, plainContainer bool) error {
	major, minor, err := majorMinor(info)
	if err != nil {
		return fmt.Errorf("cannot tell the API server's Kubernetes version (%+v): %w", *info, err)
	}
	name := info.GitVersion
	if name == "" {
		name = fmt.Sprintf("%d.%d", major, minor)
	}
	if major < 1 || (major == 1 && minor < MinKubernetesMinor) {
		return fmt.Errorf("the API server is Kubernetes %s; Leasehold needs 1.%d or later: its webhook configuration's "+
			"matchConditions, which keep Pods without leasehold.io/ annotations away from the webhook, are ignored before, and "+
			"with failurePolicy Fail every Pod's creation would depend on the webhook; fix: upgrade the cluster", name, MinKubernetesMinor)
	}
	if !plainContainer && major == 1 && minor < NativeSidecarMinor {
		return fmt.Errorf("the API server is Kubernetes %s: native sidecars need Kubernetes 1.%d or later; "+
			"fix: upgrade the cluster, or run the webhook with --plain-container", name, NativeSidecarMinor)
	}
	return nil
}

func majorMinor(info *version.Info) (major, minor int, err error) {
	if info.GitVersion != "" {
		if v, perr := utilversion.ParseGeneric(info.GitVersion); perr == nil {
			return int(v.Major()), int(v.Minor()), nil
		}
	}
	major, err1 := strconv.Atoi(strings.TrimRight(info.Major, "+"))
	minor, err2 := strconv.Atoi(strings.TrimRight(info.Minor, "+"))
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return major, minor, nil
}
