#!/usr/bin/env bash
# prometheus.sh: a real Prometheus as a host process that scrapes the local one-node
# cluster (hack/cluster.sh) the way a plain Prometheus does: kubernetes_sd_configs (role:
# pod) and the prometheus.io/* scrape annotations, which the Leasehold webhook puts on
# every injected Pod. It also loads the shipped alert rules.
#
# Prometheus and promtool are built from the Go module proxy
# (github.com/prometheus/prometheus $PROMETHEUS_VERSION with Kubernetes discovery only:
# build tags remove_all_sd,enable_kubernetes_sd; minutes the first time, cached in
# ~/.cache/leasehold/prometheus/): Debian's `prometheus` package (2.42) is built without
# Kubernetes service discovery ("Kubernetes support has been completely removed", its
# NEWS.Debian), so it cannot discover Pods.
#
#   hack/prometheus.sh install     build prometheus and promtool when missing; print their directory
#   hack/prometheus.sh config      print the configuration start uses
#   hack/prometheus.sh start       (install,) check the configuration and the rules, start, wait until ready
#   hack/prometheus.sh stop        stop it and delete its data (what start also does first)
#   hack/prometheus.sh url         print its address (http://127.0.0.1:$PROMETHEUS_PORT)
#
# Environment:
#   PROMETHEUS_VERSION=v0.316.0    module version of github.com/prometheus/prometheus (Prometheus 3.16.0)
#   PROMETHEUS_PORT=19090          HTTP port, on 127.0.0.1 only
#   KUBECONFIG=/var/lib/leasehold-cluster/admin.kubeconfig   credentials for the service discovery
#   SCRAPE_INTERVAL=2s             scrape and rule evaluation interval
#   WEBHOOK_TOKEN_FILE=            a bearer token allowed to get the webhook's /metrics
#                                  (ClusterRole leasehold-metrics-reader): adds a job that
#                                  scrapes the webhook's Pods over HTTPS on their port "metrics"
#
# Pods are reachable from the host on 10.244.0.0/24 through the bridge lh0. State:
# /run/leasehold-prometheus (PID file, configuration, log) and
# /var/lib/leasehold-prometheus (the TSDB); stop removes both.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PORT=${PROMETHEUS_PORT:-19090}
KCFG=${KUBECONFIG:-/var/lib/leasehold-cluster/admin.kubeconfig}
INTERVAL=${SCRAPE_INTERVAL:-2s}
RUN_DIR=/run/leasehold-prometheus
DATA_DIR=/var/lib/leasehold-prometheus
RULES=$REPO/manifests/monitoring/leasehold-rules.yaml
VERSION=${PROMETHEUS_VERSION:-v0.316.0}
BIN=${LEASEHOLD_CACHE:-${HOME:-/root}/.cache/leasehold}/prometheus/$VERSION-k8s-sd

die() { echo "prometheus.sh: $*" >&2; exit 1; }

install() {
  if [ ! -x "$BIN/prometheus" ] || [ ! -x "$BIN/promtool" ]; then
    command -v go >/dev/null || die "go is needed to build Prometheus from the Go module proxy"
    echo "prometheus.sh: building prometheus and promtool $VERSION into $BIN (first time only)" >&2
    mkdir -p "$BIN.tmp"
    GOBIN="$BIN.tmp" CGO_ENABLED=0 go install -tags remove_all_sd,enable_kubernetes_sd \
      "github.com/prometheus/prometheus/cmd/prometheus@$VERSION" \
      "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >&2
    rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
  fi
  echo "$BIN"
}

config() {
  cat <<EOF
# Written by hack/prometheus.sh.
global:
  scrape_interval: $INTERVAL
  evaluation_interval: $INTERVAL
rule_files:
- $RULES
scrape_configs:
# Every Pod that asks for it with the prometheus.io/* annotations (the webhook adds them
# for the agent's metrics port), the usual relabeling of plain Prometheus.
- job_name: kubernetes-pods
  kubernetes_sd_configs:
  - role: pod
    kubeconfig_file: $KCFG
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
    action: keep
    regex: "true"
  - source_labels: [__meta_kubernetes_pod_phase]
    action: drop
    regex: Pending|Succeeded|Failed
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
    action: replace
    target_label: __metrics_path__
    regex: (.+)
  - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
    action: replace
    regex: ([^:]+)(?::\\d+)?;(\\d+)
    replacement: \$1:\$2
    target_label: __address__
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
EOF
  if [ -n "${WEBHOOK_TOKEN_FILE:-}" ]; then
    cat <<EOF
# The webhook's metrics: HTTPS (its own self-signed certificate), for a bearer token
# allowed to get /metrics.
- job_name: leasehold-webhook
  scheme: https
  authorization:
    credentials_file: $WEBHOOK_TOKEN_FILE
  tls_config:
    insecure_skip_verify: true
  kubernetes_sd_configs:
  - role: pod
    kubeconfig_file: $KCFG
    namespaces:
      names: [leasehold-system]
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_container_port_name]
    action: keep
    regex: metrics
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
EOF
  fi
}

stop() {
  if [ -f "$RUN_DIR/prometheus.pid" ]; then
    local pid
    pid=$(cat "$RUN_DIR/prometheus.pid")
    # Only the process this script started: its PID and its executable.
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$BIN/prometheus" ]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$RUN_DIR" "$DATA_DIR"
}

start() {
  install >/dev/null
  [ -r "$KCFG" ] || die "no kubeconfig at $KCFG: bring the cluster up first (hack/cluster.sh up)"
  stop # leftovers of a killed run
  mkdir -p "$RUN_DIR" "$DATA_DIR"
  config >"$RUN_DIR/prometheus.yml"
  "$BIN/promtool" check rules "$RULES" >&2
  "$BIN/promtool" check config "$RUN_DIR/prometheus.yml" >&2
  "$BIN/prometheus" --config.file="$RUN_DIR/prometheus.yml" --storage.tsdb.path="$DATA_DIR" \
    --web.listen-address="127.0.0.1:$PORT" --storage.tsdb.retention.time=1d \
    >"$RUN_DIR/prometheus.log" 2>&1 &
  echo $! >"$RUN_DIR/prometheus.pid"
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$PORT"
      return
    fi
    kill -0 "$(cat "$RUN_DIR/prometheus.pid")" 2>/dev/null || break
    sleep 0.2
  done
  tail -20 "$RUN_DIR/prometheus.log" >&2 || true
  stop
  die "Prometheus did not become ready on 127.0.0.1:$PORT"
}

case "${1:-}" in
  install) install ;;
  config) config ;;
  start) start ;;
  stop) stop ;;
  url) echo "http://127.0.0.1:$PORT" ;;
  *) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64 ;;
esac
