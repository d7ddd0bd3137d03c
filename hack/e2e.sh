#!/usr/bin/env bash
# e2e.sh: bring up the local one-node cluster, run the e2e suite on real Pods, and tear
# the cluster down again whatever happened (its component logs stay in
# /var/lib/leasehold-cluster/logs for a post-mortem).
#
#   hack/e2e.sh [go test flags...]      e.g. hack/e2e.sh -run TestExampleApp
#
# Set KEEP_CLUSTER=1 to leave the cluster running afterwards (then: hack/cluster.sh down).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "e2e: run as root (the local node runs containerd and the kubelet)" >&2; exit 1; }

if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
  trap 'hack/cluster.sh down >/dev/null 2>&1 || hack/cluster.sh down' EXIT
fi
hack/cluster.sh up
eval "$(hack/cluster.sh env)"
LEASEHOLD_E2E_KUBECONFIG=$KUBECONFIG go test -tags e2e -count=1 -timeout 25m -v "$@" ./e2e/
