#!/usr/bin/env bash
# images.sh: build the container images with go-containerregistry (hack/ociimage; no
# Docker), and push them to the local node's registry (hack/cluster.sh runs it on
# 127.0.0.1:15500; containerd pulls leasehold.local/* from it) when it runs.
#
#   hack/images.sh [IMAGE...]      IMAGE: pause leasehold example-app busybox fencing-app
#                                  (default: pause leasehold example-app)
#
# Images (OCI layouts in ~/.cache/leasehold/images/NAME/, the index digest in NAME.digest):
#   leasehold.local/pause:3.10          hack/pause, containerd's sandbox image
#   leasehold.local/leasehold:dev       the project's binaries at /usr/local/bin (UID 65532),
#                                       for every platform in $PLATFORMS, with an SPDX SBOM
#   leasehold.local/example-app:dev     busybox-static + applet symlinks, /usr/local/bin/leasehold
#   leasehold.local/busybox:dev         busybox-static + applet symlinks and nothing else: an image
#                                       that never had the leasehold client ($LEASEHOLD_CLI)
#   leasehold.local/fencing-app:dev     examples/fencing/writer at /usr/local/bin/fencing-writer (entrypoint)
#
# Every image is reproducible: static binaries built with -trimpath -buildvcs=false, every
# timestamp SOURCE_DATE_EPOCH (default: the commit's time), sorted entries, so the same
# commit gives the same digest. OCI labels: source, revision (the commit), version.
#
# Environment:
#   PLATFORMS=linux/amd64,linux/arm64   platforms of the leasehold image (the default); the
#                                       other images are for this machine's platform only
#                                       (busybox-static comes from its Debian package)
#   VERSION=v1.2.3                      what the binaries report (default: git describe)
#   TAG=dev                             the leasehold image's tag
#   PUSH=auto|1|0                       push to $REGISTRY (auto: when it answers)
#   REGISTRY=127.0.0.1:15500            the registry pushed to (repository = the name after leasehold.local/)
#   IMPORT=auto|1|0                     fallback without a registry: import into the node's
#                                       containerd (auto: when PUSH did not happen and it runs)
#   LEASEHOLD_BINARIES="a b"            prebuilt binaries for the leasehold image (this platform)
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
OUT=${IMAGES_OUT:-$CACHE/images}
CONTAINERD_SOCK=${CONTAINERD_SOCK:-/run/leasehold-cluster/containerd/containerd.sock}
REGISTRY=${REGISTRY:-127.0.0.1:15500}
PUSH=${PUSH:-auto}
IMPORT=${IMPORT:-auto}
HOST_PLATFORM=linux/$(go env GOARCH)
PLATFORMS=${PLATFORMS:-linux/amd64,linux/arm64}
TAG=${TAG:-dev}
mkdir -p "$OUT/bin"

log() { printf '[images] %s\n' "$*" >&2; }
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--buildvcs=false}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
# Stripped (-s -w) as the Dockerfile builds them: the agent copies the leasehold client
# into every Pod's socket volume (8.5 MB stripped, 12.3 MB not).
LDFLAGS="-s -w -X github.com/leasehold/leasehold/internal/version.version=$VERSION"
GOBUILD=(go build -trimpath -buildvcs=false)
LABELS=(-label org.opencontainers.image.source=https://github.com/leasehold/leasehold
  -label "org.opencontainers.image.revision=$REVISION" -label "org.opencontainers.image.version=$VERSION"
  -label "org.opencontainers.image.created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)")

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(pause leasehold example-app)

if [ "$PUSH" = auto ]; then
  if curl -sf -o /dev/null --max-time 2 "http://$REGISTRY/v2/"; then PUSH=1; else PUSH=0; fi
fi

# ociimage IMAGE NAME ARGS...: build NAME into $OUT/IMAGE (and push it), record its digest.
OCIIMAGE=$OUT/bin/ociimage
"${GOBUILD[@]}" -o "$OCIIMAGE" ./hack/ociimage
ociimage() {
  local img=$1 name=$2 push=(); shift 2
  [ "$PUSH" = 1 ] && push=(-push "$REGISTRY/${name#leasehold.local/}")
  "$OCIIMAGE" -name "$name" -o "$OUT/$img" "${LABELS[@]}" "${push[@]}" "$@" >"$OUT/$img.digest.tmp"
  mv "$OUT/$img.digest.tmp" "$OUT/$img.digest"
  log "$name $(cat "$OUT/$img.digest")$([ "$PUSH" = 1 ] && echo " pushed to $REGISTRY")"
}

# build_cmds PLATFORM: build ./cmd/* for PLATFORM into $OUT/bin/OS_ARCH/.
build_cmds() {
  local os=${1%/*} arch=${1#*/} d
  mkdir -p "$OUT/bin/${os}_$arch"
  for d in cmd/*/; do
    d=${d%/}
    if ! GOOS=$os GOARCH=$arch "${GOBUILD[@]}" -ldflags "$LDFLAGS" -o "$OUT/bin/${os}_$arch/${d#cmd/}" "./$d" \
        2>"$OUT/bin/${d#cmd/}.err"; then
      cat "$OUT/bin/${d#cmd/}.err" >&2
      log "ERROR: ./$d does not build for $1: the image would lack it"
      exit 1
    fi
  done
}

build_pause() {
  mkdir -p "$OUT/bin/linux_${HOST_PLATFORM#*/}"
  "${GOBUILD[@]}" -ldflags "-s -w" -o "$OUT/bin/linux_${HOST_PLATFORM#*/}/pause" ./hack/pause
  ociimage pause leasehold.local/pause:3.10 -platforms "$HOST_PLATFORM" \
    -file "$OUT/bin/linux_{arch}/pause=/pause" -entrypoint /pause
}

build_leasehold() {
  local args=() b p platforms=$PLATFORMS
  if [ -n "${LEASEHOLD_BINARIES:-}" ]; then
    platforms=$HOST_PLATFORM
    # shellcheck disable=SC2086 # a space-separated list
    for b in $LEASEHOLD_BINARIES; do args+=(-file "$b=/usr/local/bin/$(basename "$b")"); done
  else
    for p in ${platforms//,/ }; do build_cmds "$p"; done
    for b in cmd/*/; do b=${b%/}; args+=(-file "$OUT/bin/linux_{arch}/${b#cmd/}=/usr/local/bin/${b#cmd/}"); done
  fi
  ociimage leasehold "leasehold.local/leasehold:$TAG" -platforms "$platforms" -sbom \
    -entrypoint /usr/local/bin/leasehold-webhook "${args[@]}"
}

# busybox_args: set BUSYBOX_ARGS to the -file/-link arguments of ociimage for
# busybox-static and its applets (installing busybox-static when missing).
busybox_args() {
  local a
  BUSYBOX_ARGS=(-file /bin/busybox=/bin/busybox)
  if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    log "installing busybox-static (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
  fi
  # Applets the examples and tests use. (busybox-static's wget segfaults in containers: use nc.)
  for a in sh ash cat echo printf sleep date env id ls mkdir rm touch cp mv grep sed awk head \
           tail wc cut tr sort uniq tee xargs seq true false test [ kill ps nc timeout hostname \
           uname stat find chmod ln readlink basename dirname expr yes pidof watch httpd base64 \
           sha256sum which whoami mktemp realpath usleep netstat od hexdump; do
    BUSYBOX_ARGS+=(-link "/bin/$a=busybox")
  done
}

build_busybox() {
  busybox_args
  ociimage busybox leasehold.local/busybox:dev -platforms "$HOST_PLATFORM" "${BUSYBOX_ARGS[@]}"
}

build_example_app() {
  busybox_args
  local args=("${BUSYBOX_ARGS[@]}") arch=${HOST_PLATFORM#*/}
  local client=${LEASEHOLD_CLIENT:-$OUT/bin/linux_$arch/leasehold}
  mkdir -p "$OUT/bin/linux_$arch"
  if [ -z "${LEASEHOLD_CLIENT:-}" ] && ! "${GOBUILD[@]}" -ldflags "$LDFLAGS" -o "$client" ./cmd/leasehold 2>"$client.err"; then
    log "WARNING: ./cmd/leasehold does not build, example-app has no /usr/local/bin/leasehold"
  else
    args+=(-file "$client=/usr/local/bin/leasehold")
  fi
  ociimage example-app leasehold.local/example-app:dev -platforms "$HOST_PLATFORM" "${args[@]}"
}

build_fencing_app() {
  local arch=${HOST_PLATFORM#*/}
  mkdir -p "$OUT/bin/linux_$arch"
  "${GOBUILD[@]}" -ldflags "-s -w" -o "$OUT/bin/linux_$arch/fencing-writer" ./examples/fencing/writer
  ociimage fencing-app leasehold.local/fencing-app:dev -platforms "$HOST_PLATFORM" \
    -file "$OUT/bin/linux_{arch}/fencing-writer=/usr/local/bin/fencing-writer" -entrypoint /usr/local/bin/fencing-writer
}

for img in "${want[@]}"; do
  case "$img" in
    pause) build_pause ;;
    leasehold) build_leasehold ;;
    example-app) build_example_app ;;
    busybox) build_busybox ;;
    fencing-app) build_fencing_app ;;
    *) log "unknown image '$img' (want pause, leasehold, example-app, busybox or fencing-app)"; exit 2 ;;
  esac
done

# Fallback without a registry: import the OCI layouts into the cluster's containerd
# (namespace k8s.io, the one the CRI plugin uses).
if [ "$PUSH" = 1 ] || [ "$IMPORT" = 0 ]; then exit 0; fi
if [ ! -S "$CONTAINERD_SOCK" ]; then
  [ "$IMPORT" = auto ] && { log "no registry at $REGISTRY and no cluster containerd ($CONTAINERD_SOCK): layouts left in $OUT"; exit 0; }
  log "containerd socket $CONTAINERD_SOCK missing"; exit 1
fi
for img in "${want[@]}"; do
  tar -C "$OUT/$img" -cf - . | ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --platform "$HOST_PLATFORM" - >/dev/null
  log "imported $OUT/$img"
done
