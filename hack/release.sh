#!/usr/bin/env bash
# release.sh: make release VERSION=vX.Y.Z. Builds everything a release ships into
# bin/release/vX.Y.Z/ (hack/release assembles it; see its doc for the files), checks the
# sums, and when the local node's registry runs (hack/cluster.sh up), pushes the image
# index and the Helm chart there: oci://127.0.0.1:15500/charts/leasehold --version X.Y.Z.
#
#   hack/release.sh vX.Y.Z
#
# Environment: RELEASE_DIR (default bin/release/VERSION), PLATFORMS (the image's, default
# linux/amd64,linux/arm64), PLUGIN_PLATFORMS (default linux/amd64 linux/arm64 darwin/amd64
# darwin/arm64), REGISTRY (default 127.0.0.1:15500), PUSH=auto|1|0.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${1:?usage: hack/release.sh vX.Y.Z}
[[ $VERSION =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] ||
  { echo "release: VERSION=$VERSION is not vMAJOR.MINOR.PATCH (e.g. make release VERSION=v0.1.0)" >&2; exit 2; }
OUT=${RELEASE_DIR:-bin/release/$VERSION}
REGISTRY=${REGISTRY:-127.0.0.1:15500}
PUSH=${PUSH:-auto}
PLUGIN_PLATFORMS=${PLUGIN_PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export SOURCE_DATE_EPOCH CGO_ENABLED=0
log() { printf '[release] %s\n' "$*" >&2; }

if [ "$PUSH" = auto ]; then
  if curl -sf -o /dev/null --max-time 2 "http://$REGISTRY/v2/"; then PUSH=1; else PUSH=0; fi
fi
start=$SECONDS
rm -rf "$OUT"
mkdir -p "$OUT"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/leasehold-release.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

log "image leasehold.local/leasehold:$VERSION (${PLATFORMS:-linux/amd64,linux/arm64})"
export VERSION REGISTRY
IMAGES_OUT=$tmp/images TAG=$VERSION PUSH=$PUSH IMPORT=0 hack/images.sh leasehold

for p in $PLUGIN_PLATFORMS; do
  log "kubectl-leasehold $p"
  GOOS=${p%/*} GOARCH=${p#*/} go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X github.com/leasehold/leasehold/internal/version.version=$VERSION" \
    -o "$tmp/plugin/kubectl-leasehold_${p%/*}_${p#*/}" ./cmd/kubectl-leasehold
done

go run ./hack/release -version "$VERSION" -o "$OUT" -image-layout "$tmp/images/leasehold" -plugin-dir "$tmp/plugin"
(cd "$OUT" && sha256sum --quiet -c SHA256SUMS)

if [ "$PUSH" = 1 ]; then
  helm=$(hack/helm.sh)
  export HELM_CONFIG_HOME=$tmp/helm/config HELM_CACHE_HOME=$tmp/helm/cache HELM_DATA_HOME=$tmp/helm/data
  "$helm" push "$OUT/leasehold-${VERSION#v}.tgz" "oci://$REGISTRY/charts" --plain-http 2>&1 | tee "$OUT/chart-push.txt" >&2
  log "chart: helm install leasehold oci://$REGISTRY/charts/leasehold --version ${VERSION#v} --plain-http"
else
  log "no registry at $REGISTRY (hack/cluster.sh up runs one): image and chart not pushed"
fi
log "$OUT ($((SECONDS - start)) s):"
ls -l "$OUT" >&2
