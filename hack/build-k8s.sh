#!/usr/bin/env bash
# build-k8s.sh: build the Kubernetes and etcd binaries that the test ground needs,
# from the Go module proxy alone, and cache them outside the repository.
#
#   hack/build-k8s.sh [COMPONENT...]     (default: every component below)
#
# COMPONENT is one of: etcd kube-apiserver kubectl kubelet kube-controller-manager
# kube-scheduler kube-proxy. Prints the cache directory on stdout when done.
#
# Why a throwaway module: `go install k8s.io/kubernetes/cmd/...@vX` is refused because
# k8s.io/kubernetes' go.mod has replace directives pointing at ./staging, and the
# staging folders are not part of the module download. Replacing each staging module
# with its published tag (k8s.io/api v0.37.2 for Kubernetes v1.37.2, ...) gives the
# same code, and plain `go build` then works.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
BIN=$CACHE/k8s/$K8S_VERSION
mkdir -p "$BIN"

all=(etcd kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy)
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${all[@]}")

log() { printf '[build-k8s] %s\n' "$*" >&2; }

# find_missing sets missing_k8s and need_etcd from what the cache holds now.
find_missing() {
  missing_k8s=()
  need_etcd=false
  for c in "${want[@]}"; do
    case "$c" in
      etcd) [ -x "$BIN/etcd" ] || need_etcd=true ;;
      kube-apiserver|kubectl|kubelet|kube-controller-manager|kube-scheduler|kube-proxy)
        [ -x "$BIN/$c" ] || missing_k8s+=("$c") ;;
      *) log "unknown component '$c' (want one of: ${all[*]})"; exit 2 ;;
    esac
  done
}

find_missing
if [ ${#missing_k8s[@]} -eq 0 ] && ! $need_etcd; then
  echo "$BIN"
  exit 0
fi

# One build at a time per cache: two `make test` runs must not race on the same files.
exec 9>"$CACHE/.build.lock"
flock 9
# Another run may have built what we wait for while we waited for the lock.
find_missing
if [ ${#missing_k8s[@]} -eq 0 ] && ! $need_etcd; then
  echo "$BIN"
  exit 0
fi

work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

if [ ${#missing_k8s[@]} -gt 0 ]; then
  minor=${K8S_VERSION#v1.}                    # 37.2
  staging_version=v0.$minor                   # v0.37.2
  log "building ${missing_k8s[*]} $K8S_VERSION from the Go module proxy (10-15 min on 2 cores the first time)"
  mkdir -p "$work/k8s" && cd "$work/k8s"
  go mod init leasehold.local/k8s-build >/dev/null 2>&1
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  src=$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION
  {
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "replace ("
    # Every "k8s.io/x => ./staging/src/k8s.io/x" line becomes "k8s.io/x => k8s.io/x v0.N.M".
    sed -n '/^replace (/,/^)/p' "$src/go.mod" | awk -v v="$staging_version" '$2=="=>" && $3 ~ /^\.\/staging/ {print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >>go.mod
  pkgs=()
  for c in "${missing_k8s[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  cat >tools.go <<GO
//go:build tools

package tools

import (
$(for p in "${pkgs[@]}"; do echo "	_ \"$p\""; done)
)
GO
  go mod tidy >/dev/null 2>&1 || go mod tidy
  ldflags="-s -w"
  gitver=$K8S_VERSION
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$gitver -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  go build -trimpath -ldflags "$ldflags" -o "$work/out/" "${pkgs[@]}"
  for c in "${missing_k8s[@]}"; do mv "$work/out/$c" "$BIN/$c"; done
fi

if $need_etcd; then
  log "building etcd $ETCD_VERSION from the Go module proxy (about 1.5 min the first time)"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init leasehold.local/etcd-build >/dev/null 2>&1
  cat >>go.mod <<MOD
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  # server/v3's siblings must be at the same version (the etcd repo pins them by replace).
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
    echo "require go.etcd.io/etcd/$m $ETCD_VERSION" >>go.mod
  done
  cat >tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go mod tidy >/dev/null 2>&1 || go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$work/etcd.bin" go.etcd.io/etcd/server/v3
  mv "$work/etcd.bin" "$BIN/etcd"
fi

log "binaries ready in $BIN"
echo "$BIN"
