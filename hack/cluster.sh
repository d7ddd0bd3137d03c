#!/usr/bin/env bash
# cluster.sh: a one-node Kubernetes cluster on this machine, for the end-to-end suite and
# `make demo`, built from the package registries alone.
#
#   hack/cluster.sh up       tear down leftovers, then start a fresh cluster (node Ready)
#   hack/cluster.sh down     stop everything and remove every trace (idempotent)
#   hack/cluster.sh status   what is running
#   hack/cluster.sh env      print `export KUBECONFIG=... PATH=...` (use: eval "$(hack/cluster.sh env)")
#   hack/cluster.sh stop-apiserver / start-apiserver
#                            restart kube-apiserver in place (same flags, etcd, certificates;
#                            start waits for /readyz): a control-plane outage for the e2e suite
#
# Pieces: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# and kubectl built from the Go module proxy by hack/build-k8s.sh (cached per version in
# ~/.cache/leasehold); containerd, runc and the CNI plugins from Debian; certificates made
# here with openssl; images built locally by hack/images.sh and pushed to the node's own
# OCI registry (hack/registry, go-containerregistry's registry on 127.0.0.1:15500, blobs
# in $STATE/registry), from which containerd pulls every leasehold.local/* image: its
# hosts.toml (config_path, as a user configures a registry mirror) sends leasehold.local
# to that address. No other registry is ever contacted.
#
# Network: everything stays inside the machine. The script creates the bridge lh0 with the
# gateway 10.244.0.1/24; the API server, the kubelet and the node IP live on that address
# (kube-apiserver refuses a loopback advertise address), etcd and the component health
# ports on 127.0.0.1. Pods get 10.244.0.0/24 from host-local IPAM, Services 10.96.0.0/16
# (the API at 10.96.0.1:443 through kube-proxy's iptables rules). Forwarded traffic is only
# allowed between Pods on lh0, so no Pod packet leaves the machine, and Pods get no DNS
# servers (kubelet resolvConf is empty).
#
# State: $STATE (default /var/lib/leasehold-cluster: certificates, etcd, containerd and
# kubelet data, configs, admin.kubeconfig, logs/) and $RUN (/run/leasehold-cluster: PID
# files, containerd state and socket). The registry's blobs and the built images' OCI
# layouts and digests are in $STATE too (registry/, images/). `down` removes both except $STATE/logs, which keeps
# the last run's component logs for post-mortems, and $STATE/.lock (`down --purge` removes
# those too).
set -euo pipefail

# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------
REPO=$(cd "$(dirname "$0")/.." && pwd)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
BIN=$CACHE/k8s/$K8S_VERSION            # what hack/build-k8s.sh fills
STATE=${LEASEHOLD_CLUSTER_STATE:-/var/lib/leasehold-cluster}
RUN=${LEASEHOLD_CLUSTER_RUN:-/run/leasehold-cluster}
LOGS=$STATE/logs
PKI=$STATE/pki
CONF=$STATE/config
PIDS=$RUN/pids
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig

NODE_NAME=leasehold-node
BRIDGE=lh0                             # created by this script; CNI reuses it
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1                     # bridge gateway = node IP = API server address
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
API_PORT=6443
ETCD_CLIENT=127.0.0.1:12379            # not 2379: leaves the standard port to others
ETCD_PEER=127.0.0.1:12380
PAUSE_IMAGE=leasehold.local/pause:3.10
REGISTRY_ADDR=127.0.0.1:15500          # the node's registry (loopback only; containerd's mirror for leasehold.local)
REGISTRY_BIN=$CACHE/bin/leasehold-registry
CNI_NAME=leasehold
CNI_BIN=/usr/lib/cni                   # Debian's containernetworking-plugins
# Images pushed on `up` (pause is required; the others are what e2e and the demo use).
CLUSTER_IMAGES=${CLUSTER_IMAGES:-pause example-app leasehold}

# Start order; `down` stops them in reverse.
COMPONENTS=(containerd registry etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Executables whose leftover processes `down` hunts (only when their command line names
# $STATE or $RUN, so the envtest kube-apiserver/etcd of `make test` are never touched).
OUR_EXES=" etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 runc leasehold-registry "
# Kernel settings that the cluster (kubelet, kube-proxy, CNI bridge) changes; saved on
# `up` and restored on `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Saved outside $STATE/$RUN so that a killed run's values survive until the next down.
SYSCTL_SAVE=/var/lib/leasehold-cluster.sysctl

# The parts, one file each (functions only; they use the settings above).
LIB=$REPO/hack/lib/cluster
# shellcheck source=hack/lib/cluster/common.sh
. "$LIB/common.sh"      # log, die, wait_for, start, alive, check_alive, kubectl_
# shellcheck source=hack/lib/cluster/cleanup.sh
. "$LIB/cleanup.sh"     # cleanup (= down), leftovers
# shellcheck source=hack/lib/cluster/packages.sh
. "$LIB/packages.sh"    # ensure_packages
# shellcheck source=hack/lib/cluster/network.sh
. "$LIB/network.sh"     # setup_network
# shellcheck source=hack/lib/cluster/certs.sh
. "$LIB/certs.sh"       # make_certs, kubeconfig
# shellcheck source=hack/lib/cluster/configs.sh
. "$LIB/configs.sh"     # detect_restrict_oom_score_adj, write_configs

# start_apiserver: start kube-apiserver on the cluster's etcd, certificates and flags, and
# wait until it is ready. `up` and `start-apiserver` (an in-place restart) both use it, so
# a restarted API server is the same one.
start_apiserver() {
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://$ETCD_CLIENT" \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --kubelet-preferred-address-types InternalIP \
    `# (InternalIP: the node name is never looked up in the machine's DNS)` \
    --allow-privileged=true --enable-aggregator-routing=true --profiling=false
  wait_for "kube-apiserver /readyz" 90 kubectl_ get --raw /readyz || { check_alive kube-apiserver; die "kube-apiserver not ready"; }
}

# stop_apiserver: stop the running kube-apiserver (SIGTERM, its graceful shutdown; SIGKILL
# after 10 s), leaving everything else running: the first half of an in-place restart.
stop_apiserver() {
  alive kube-apiserver || die "kube-apiserver is not running (start the cluster with: $0 up)"
  local pid
  pid=$(cat "$PIDS/kube-apiserver.pid")
  log "stopping kube-apiserver (pid $pid)"
  kill_wait TERM 10 "$pid" || kill_wait KILL 5 "$pid" || die "kube-apiserver (pid $pid) did not stop"
}

# ---------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------
up() {
  [ "$(id -u)" = 0 ] || die "run as root (it starts containerd and the kubelet)"
  log "cleaning up leftovers of earlier runs"
  cleanup
  leftovers || die "could not clean up an earlier run (see above)"
  mkdir -p "$LOGS" "$PIDS" "$RUN/containerd"
  rm -f "$LOGS"/*.log

  ensure_packages
  log "Kubernetes binaries $K8S_VERSION (hack/build-k8s.sh; 10-15 min the first time, cached after)"
  # The first build is silent for minutes: print the elapsed time every 30 s meanwhile.
  # (1 s sleeps: a killed ticker leaves no long sleep holding our stderr open.)
  ( n=0; while sleep 1 && kill -0 $$ 2>/dev/null; do
      n=$((n + 1)); (( n % 30 == 0 )) && log "... still building Kubernetes (${n}s)"; done ) &
  local ticker=$!
  BIN=$("$REPO/hack/build-k8s.sh") || { kill "$ticker"; die "hack/build-k8s.sh failed"; }
  kill "$ticker" 2>/dev/null || true
  export PATH=$BIN:$PATH

  # Save the kernel settings we may change, once (a killed run's file is restored by cleanup).
  local k
  for k in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$k" 2>/dev/null) && echo "$k $v"
  done >"$SYSCTL_SAVE"
  [ -d /run/netns ] || { mkdir -p "$STATE" && touch "$STATE/.netns-dir-ours"; }

  setup_network
  make_certs
  kubeconfig admin admin
  kubeconfig kubelet kubelet
  kubeconfig kube-controller-manager kube-controller-manager
  kubeconfig kube-scheduler kube-scheduler
  kubeconfig kube-proxy kube-proxy
  local restrict
  restrict=$(detect_restrict_oom_score_adj)
  log "restrict_oom_score_adj = $restrict (lowering oom_score_adj $( [ "$restrict" = true ] && echo is refused: no CAP_SYS_RESOURCE || echo works))"
  write_configs "$restrict"

  # containerd and the registry first: images are pushed while the control plane starts.
  start containerd containerd --config "$CONF/containerd.toml" --log-level warn
  log "building the registry (hack/registry)"
  mkdir -p "${REGISTRY_BIN%/*}"
  (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$REGISTRY_BIN" ./hack/registry) || die "hack/registry does not build"
  start registry "$REGISTRY_BIN" -addr "$REGISTRY_ADDR" -dir "$STATE/registry"
  wait_for "registry on $REGISTRY_ADDR" 30 curl -sf "http://$REGISTRY_ADDR/v2/" ||
    { check_alive registry; die "the registry does not answer on $REGISTRY_ADDR (port taken? ss -ltnp | grep ${REGISTRY_ADDR##*:})"; }
  wait_for "containerd" 30 ctr --address "$CONTAINERD_SOCK" version || { check_alive containerd; die "containerd not answering"; }

  start etcd "$BIN/etcd" --name leasehold --data-dir "$STATE/etcd" \
    --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
    --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
    --initial-cluster "leasehold=http://$ETCD_PEER" --unsafe-no-fsync --log-level warn

  log "building images and pushing them to the registry: $CLUSTER_IMAGES"
  # This machine's platform only (make images builds the leasehold image for all).
  # shellcheck disable=SC2086
  IMAGES_OUT=$STATE/images REGISTRY=$REGISTRY_ADDR PUSH=1 PLATFORMS="linux/$(go env GOARCH)" \
    "$REPO/hack/images.sh" $CLUSTER_IMAGES 2>"$LOGS/images.log" ||
    { tail "$LOGS/images.log" >&2; die "hack/images.sh failed"; }
  grep -E 'WARNING|sha256' "$LOGS/images.log" >&2 || true

  wait_for "etcd" 30 curl -sf "http://$ETCD_CLIENT/health" || { check_alive etcd; die "etcd not healthy"; }

  start_apiserver

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false --profiling=false \
    --flex-volume-plugin-dir "$STATE/kubelet-plugins"
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  start kubelet "$BIN/kubelet" --config "$CONF/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" --root-dir "$STATE/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  start kube-proxy "$BIN/kube-proxy" --config "$CONF/kube-proxy.yaml"

  wait_for "node $NODE_NAME Ready" 120 kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s ||
    { check_alive "${COMPONENTS[@]}"; die "node not Ready (see $LOGS/kubelet.log)"; }
  wait_for "ServiceAccount default/default" 60 kubectl_ -n default get serviceaccount default ||
    { check_alive kube-controller-manager; die "no default ServiceAccount"; }
  wait_for "ConfigMap default/kube-root-ca.crt" 60 kubectl_ -n default get configmap kube-root-ca.crt ||
    die "no kube-root-ca.crt ConfigMap (token volumes need it)"
  wait_for "kube-proxy rules for $API_SERVICE_IP" 60 sh -c "iptables-save -t nat | grep -q -- '-d $API_SERVICE_IP/32.*KUBE-SVC'" ||
    { check_alive kube-proxy; die "kube-proxy has not programmed the kubernetes Service"; }
  check_alive "${COMPONENTS[@]}"

  log "cluster up: node $NODE_NAME Ready"
  echo "# use it:  eval \"\$($0 env)\"; kubectl get pods -A" >&2 || true
}

status() {
  local n rc=0
  for n in "${COMPONENTS[@]}"; do
    if alive "$n"; then
      printf '%-24s running (pid %s, %s MiB RSS)\n' "$n" "$(cat "$PIDS/$n.pid")" \
        "$(( $(awk '/VmRSS/{print $2}' "/proc/$(cat "$PIDS/$n.pid")/status") / 1024 ))"
    else
      printf '%-24s stopped\n' "$n"; rc=1
    fi
  done
  if [ -f "$KUBECONFIG_ADMIN" ] && [ -x "$BIN/kubectl" ]; then
    kubectl_ get nodes -o wide 2>&1 || rc=1
  fi
  return $rc
}

env_() {
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export PATH=$BIN:\$PATH"
  # The project image by digest, as `up` pushed it to the node's registry.
  if [ -f "$STATE/images/leasehold.digest" ]; then
    echo "export LEASEHOLD_IMAGE=leasehold.local/leasehold@$(cat "$STATE/images/leasehold.digest")"
  fi
  echo "export LEASEHOLD_REGISTRY=$REGISTRY_ADDR"
}

# One `up`/`down` at a time (say e2e and `make demo` started together). The lock file is
# kept next to the logs, which `down` keeps.
lock_holders() {
  local f
  for f in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$f" 2>/dev/null)" = "$STATE/.lock" ] && { f=${f#/proc/}; echo "${f%%/*}"; }
  done | sort -u | tr '\n' ' '
}
lock() {
  mkdir -p "$STATE"
  exec 8>"$STATE/.lock"
  if ! flock -n 8; then
    log "waiting for another hack/cluster.sh up/down to finish (lock $STATE/.lock)"
    flock -w 300 8 || die "lock still held after 300 s by PIDs: $(lock_holders)"
  fi
}

# `up | head` or `down | head` must not kill a half-done run: output errors are ignored
# instead (log() and the progress lines use `|| true`). start() restores SIGPIPE for the
# daemons, which would otherwise inherit the ignored signal down to the containers.
trap '' PIPE

case "${1:-}" in
  up) lock; up ;;
  down)
    lock
    log "tearing down"
    cleanup
    [ "${2:-}" = --purge ] && rm -rf "$STATE"
    leftovers || die "down did not remove everything (see above)"
    log "down: nothing left running"
    ;;
  # An in-place restart of the API server (the e2e suite's control-plane outage): stop it,
  # later start it again with the same flags, etcd and certificates. `down` stops a
  # restarted one like any other (PID file, command line naming $STATE).
  stop-apiserver) lock; stop_apiserver ;;
  start-apiserver)
    lock
    alive etcd || die "etcd is not running (start the cluster with: $0 up)"
    alive kube-apiserver && die "kube-apiserver is already running (pid $(cat "$PIDS/kube-apiserver.pid"))"
    start_apiserver
    ;;
  status) status ;;
  env) env_ ;;
  *) echo "usage: $0 up|down [--purge]|status|env|stop-apiserver|start-apiserver" >&2; exit 2 ;;
esac
