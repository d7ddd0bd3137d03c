#!/usr/bin/env bash
# images.sh: build the local container images without Docker or any registry, and import
# them into the local cluster's containerd (hack/cluster.sh) when it is running.
#
#   hack/images.sh [IMAGE...]      IMAGE: pause leasehold example-app busybox fencing-app
#                                  (default: pause leasehold example-app)
#
# Images (docker-archives written by hack/mkimage, kept in ~/.cache/leasehold/images/):
#   leasehold.local/pause:3.10          hack/pause, containerd's sandbox image
#   leasehold.local/leasehold:dev       the project's binaries at /usr/local/bin (UID 65532)
#   leasehold.local/example-app:dev     busybox-static + applet symlinks, /usr/local/bin/leasehold
#   leasehold.local/busybox:dev         busybox-static + applet symlinks and nothing else: an image
#                                       that never had the leasehold client ($LEASEHOLD_CLI)
#   leasehold.local/fencing-app:dev     examples/fencing/writer at /usr/local/bin/fencing-writer (entrypoint)
#
# The leasehold image holds every command under ./cmd/ that builds (CGO_ENABLED=0). Set
# LEASEHOLD_BINARIES="path/to/bin1 path/to/bin2" to use prebuilt binaries instead.
# Set IMPORT=0 to only build the archives. The binaries report VERSION (default: git
# describe, else dev); the image tag stays dev.
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
OUT=$CACHE/images
CONTAINERD_SOCK=${CONTAINERD_SOCK:-/run/leasehold-cluster/containerd/containerd.sock}
IMPORT=${IMPORT:-auto}
mkdir -p "$OUT/bin"

log() { printf '[images] %s\n' "$*" >&2; }
export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--buildvcs=false}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
# Stripped (-s -w) as the Dockerfile builds them: the agent copies the leasehold client
# into every Pod's socket volume (8.5 MB stripped, 12.3 MB not).
LDFLAGS="-s -w -X github.com/leasehold/leasehold/internal/version.version=$VERSION"

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(pause leasehold example-app)

mkimage() { go run ./hack/mkimage "$@" >&2; }

# project_binaries: print the paths of the project's binaries, building ./cmd/* first.
project_binaries() {
  if [ -n "${LEASEHOLD_BINARIES:-}" ]; then
    # shellcheck disable=SC2086 # a space-separated list
    printf '%s\n' $LEASEHOLD_BINARIES
    return
  fi
  local d
  for d in cmd/*/; do
    [ -d "$d" ] || continue
    d=${d%/}
    if go build -ldflags "$LDFLAGS" -o "$OUT/bin/${d#cmd/}" "./$d" 2>"$OUT/bin/${d#cmd/}.err"; then
      echo "$OUT/bin/${d#cmd/}"
    else
      cat "$OUT/bin/${d#cmd/}.err" >&2
      log "ERROR: ./$d does not build: the image would lack it"
      exit 1
    fi
  done
}

build_pause() {
  go build -trimpath -ldflags "-s -w" -o "$OUT/bin/pause" ./hack/pause
  mkimage -tag leasehold.local/pause:3.10 -o "$OUT/pause.tar" \
    -file "$OUT/bin/pause=/pause" -entrypoint /pause
}

build_leasehold() {
  local args=() b
  project_binaries >"$OUT/bin/list" # not in <(...): a build failure must stop the script
  while IFS= read -r b; do
    [ -n "$b" ] && args+=(-file "$b=/usr/local/bin/$(basename "$b")")
  done <"$OUT/bin/list"
  [ ${#args[@]} -gt 0 ] || log "WARNING: no project binaries yet: leasehold image is empty apart from /etc and /tmp"
  mkimage -tag leasehold.local/leasehold:dev -o "$OUT/leasehold.tar" "${args[@]}"
}

# busybox_args: set BUSYBOX_ARGS to the -file/-link arguments of mkimage for
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
  mkimage -tag leasehold.local/busybox:dev -o "$OUT/busybox.tar" "${BUSYBOX_ARGS[@]}"
}

build_example_app() {
  busybox_args
  local args=("${BUSYBOX_ARGS[@]}")
  if [ -f cmd/leasehold/main.go ] || [ -n "${LEASEHOLD_CLIENT:-}" ]; then
    local client=${LEASEHOLD_CLIENT:-$OUT/bin/leasehold}
    if [ -z "${LEASEHOLD_CLIENT:-}" ] && ! go build -ldflags "$LDFLAGS" -o "$client" ./cmd/leasehold 2>"$client.err"; then
      log "WARNING: ./cmd/leasehold does not build, example-app has no /usr/local/bin/leasehold"
    else
      args+=(-file "$client=/usr/local/bin/leasehold")
    fi
  fi
  mkimage -tag leasehold.local/example-app:dev -o "$OUT/example-app.tar" "${args[@]}"
}

build_fencing_app() {
  go build -trimpath -ldflags "-s -w" -o "$OUT/bin/fencing-writer" ./examples/fencing/writer
  mkimage -tag leasehold.local/fencing-app:dev -o "$OUT/fencing-app.tar" \
    -file "$OUT/bin/fencing-writer=/usr/local/bin/fencing-writer" -entrypoint /usr/local/bin/fencing-writer
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

# Import into the cluster's containerd (namespace k8s.io, the one the CRI plugin uses).
if [ "$IMPORT" = 0 ]; then exit 0; fi
if [ ! -S "$CONTAINERD_SOCK" ]; then
  [ "$IMPORT" = auto ] && { log "cluster containerd not running ($CONTAINERD_SOCK): archives left in $OUT"; exit 0; }
  log "containerd socket $CONTAINERD_SOCK missing"; exit 1
fi
for img in "${want[@]}"; do
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$OUT/$img.tar" >/dev/null
  log "imported $OUT/$img.tar"
done
