//go:build e2e

package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
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

// takeAwayKustomizeInstall removes TestMain's install (kubectl delete -k) so that a test
// can install with Helm (one Leasehold per cluster: the cluster-scoped names are fixed),
// and puts it back, ready, when the test ends: no Helm release, leasehold-system gone,
// then install().
func takeAwayKustomizeInstall(t *testing.T, helm func(args ...string) (string, error)) {
	t.Helper()
	if _, err := kubectl("delete", "-k", deployKustomization(), "--ignore-not-found", "--wait", "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = helm("uninstall", helmRelease, "-n", helmRecordNamespace, "--ignore-not-found", "--wait")
		if err := wait.PollUntilContextTimeout(context.Background(), time.Second, 180*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := cs.CoreV1().Namespaces().Get(ctx, systemNamespace, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			t.Errorf("namespace %s still there: %v", systemNamespace, err)
		}
		if err := install(); err != nil {
			t.Errorf("restore the kustomize install: %v", err)
		}
	})
	waitNothingLeft(t, "kubectl delete -k")
}
