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
  # The fencing test's PostgreSQL too, should the test binary have been killed before
  # its own cleanup ran.
  trap 'hack/postgres.sh stop >/dev/null 2>&1 || true; hack/prometheus.sh stop >/dev/null 2>&1 || true; hack/cluster.sh down >/dev/null 2>&1 || hack/cluster.sh down' EXIT
fi
# The helm CLI that e2e/helm_test.go runs: built once from the Go module proxy (about
# 5 min on 2 cores, then cached), before the node is up rather than inside the test.
hack/helm.sh >/dev/null
# The Prometheus of TestMetricsScrapedByPrometheus, built before the suite's timeout
# starts (minutes the first time, cached after).
hack/prometheus.sh install >/dev/null
hack/cluster.sh up
eval "$(hack/cluster.sh env)"
if ! LEASEHOLD_E2E_KUBECONFIG=$KUBECONFIG go test -tags e2e -count=1 -timeout 25m -v "$@" ./e2e/; then
  # What a post-mortem needs first; the components' own logs stay in the state dir.
  echo "=== e2e failed: cluster state (component logs: /var/lib/leasehold-cluster/logs)" >&2
  kubectl get pods -A -o wide >&2 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 >&2 || true
  kubectl -n leasehold-system logs deployment/leasehold-webhook --tail=40 >&2 || true
  exit 1
fi
