#!/usr/bin/env bash
# helm.sh: build the helm CLI from the Go module proxy (the same helm.sh/helm/v3 version
# as go.mod's SDK) into the cache, once, and print the binary's path.
#
#   hack/helm.sh            prints e.g. ~/.cache/leasehold/helm/v3.22.0/helm
#
# Idempotent: a cached binary is reused; concurrent calls wait for one build (flock).
# The first build takes a few minutes.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
DIR=$CACHE/helm/$HELM_VERSION
BIN=$DIR/helm
mkdir -p "$DIR"

if [ ! -x "$BIN" ]; then
  exec 9>"$DIR/.lock"
  flock 9
  if [ ! -x "$BIN" ]; then
    printf '[helm] building helm %s from the Go module proxy (a few minutes, once)\n' "$HELM_VERSION" >&2
    tmp=$(mktemp -d "$DIR/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # A killed build leaves only the temporary directory, never a partial binary.
    # As helm's own Makefile: its version, and the newest Kubernetes it knows (the
    # minor of its k8s.io modules: 1.37 for v3.22), which `helm template` and `helm lint`
    # assume without a cluster (otherwise 1.20, older than the chart's kubeVersion).
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=${HELM_K8S_MINOR:-37}"
    done
    CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
    mv "$tmp/helm" "$BIN"
  fi
fi
echo "$BIN"
