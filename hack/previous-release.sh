#!/usr/bin/env bash
# previous-release.sh: the release before this one, for the upgrade test
# (e2e/upgrade_test.go): built from a fixed older commit (PREVIOUS_COMMIT, default 7259b42,
# the tree released as v0.1.0) with `git archive` into ~/.cache/leasehold/previous-release/
# (once, cached), then its image and its chart pushed to the local node's registry.
#
#   hack/previous-release.sh        prints: CHART_REF CHART_VERSION IMAGE_TAG IMAGE_DIGEST
#
# The chart of that commit has no image.digest value: install it with
# --set image.tag=IMAGE_TAG (the registry serves that tag).
set -euo pipefail
cd "$(dirname "$0")/.."

PREVIOUS_COMMIT=${PREVIOUS_COMMIT:-7259b42}
PREVIOUS_VERSION=${PREVIOUS_VERSION:-v0.1.0}
REGISTRY=${REGISTRY:-127.0.0.1:15500}
CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
DIR=$CACHE/previous-release/$PREVIOUS_COMMIT
log() { printf '[previous-release] %s\n' "$*" >&2; }

# A shallow clone (as some CI systems make) lacks that commit: fetch the history once.
if ! git cat-file -e "$PREVIOUS_COMMIT^{commit}" 2>/dev/null; then
  log "commit $PREVIOUS_COMMIT is not in this clone; fetching the history (git fetch --unshallow)"
  git fetch --quiet --unshallow 2>/dev/null || git fetch --quiet origin 2>/dev/null || true
  git cat-file -e "$PREVIOUS_COMMIT^{commit}" 2>/dev/null ||
    { log "commit $PREVIOUS_COMMIT is not in this clone: clone the whole history (not --depth), or set PREVIOUS_COMMIT"; exit 1; }
fi

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if [ ! -f "$DIR/.built" ]; then
  log "building $PREVIOUS_VERSION from $PREVIOUS_COMMIT (git archive; once, cached in $DIR)"
  rm -rf "${DIR:?}/src" "${DIR:?}/bin"
  mkdir -p "$DIR/src" "$DIR/bin"
  git archive "$PREVIOUS_COMMIT" | tar -x -C "$DIR/src"
  for d in "$DIR"/src/cmd/*/; do
    d=${d%/}
    (cd "$DIR/src" && CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X github.com/leasehold/leasehold/internal/version.version=$PREVIOUS_VERSION" \
      -o "$DIR/bin/${d##*/}" "./cmd/${d##*/}")
  done
  touch "$DIR/.built"
fi

curl -sf -o /dev/null --max-time 2 "http://$REGISTRY/v2/" ||
  { log "no registry at $REGISTRY: start the local node first (hack/cluster.sh up)"; exit 1; }
bins=$(printf '%s ' "$DIR"/bin/*)
LEASEHOLD_BINARIES=$bins TAG=$PREVIOUS_VERSION VERSION=$PREVIOUS_VERSION IMAGES_OUT=$DIR/images PUSH=1 IMPORT=0 \
  REVISION=$(git rev-parse "$PREVIOUS_COMMIT") SOURCE_DATE_EPOCH=$(git log -1 --format=%ct "$PREVIOUS_COMMIT") \
  REGISTRY=$REGISTRY hack/images.sh leasehold
helm=$(hack/helm.sh)
export HELM_CONFIG_HOME=$DIR/helm/config HELM_CACHE_HOME=$DIR/helm/cache HELM_DATA_HOME=$DIR/helm/data
"$helm" package "$DIR/src/charts/leasehold" --version "${PREVIOUS_VERSION#v}" --app-version "$PREVIOUS_VERSION" -d "$DIR" >&2
"$helm" push "$DIR/leasehold-${PREVIOUS_VERSION#v}.tgz" "oci://$REGISTRY/charts" --plain-http >&2
echo "oci://$REGISTRY/charts/leasehold ${PREVIOUS_VERSION#v} $PREVIOUS_VERSION $(cat "$DIR/images/leasehold.digest")"
