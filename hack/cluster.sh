#!/usr/bin/env bash
# cluster.sh: a one-node Kubernetes cluster on this machine, for the end-to-end suite and
# `make demo`, built from the package registries alone.
#
#   hack/cluster.sh up       tear down leftovers, then start a fresh cluster (node Ready)
#   hack/cluster.sh down     stop everything and remove every trace (idempotent)
#   hack/cluster.sh status   what is running
#   hack/cluster.sh env      print `export KUBECONFIG=... PATH=...` (use: eval "$(hack/cluster.sh env)")
#
# Pieces: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# and kubectl built from the Go module proxy by hack/build-k8s.sh (cached per version in
# ~/.cache/leasehold); containerd, runc and the CNI plugins from Debian; certificates made
# here with openssl; images built locally by hack/images.sh (no registry is ever contacted).
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
# files, containerd state and socket). `down` removes both except $STATE/logs, which keeps
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
CNI_NAME=leasehold
CNI_BIN=/usr/lib/cni                   # Debian's containernetworking-plugins
# Images imported on `up` (pause is required; the others are what e2e and the demo use).
CLUSTER_IMAGES=${CLUSTER_IMAGES:-pause example-app leasehold}

# Start order; `down` stops them in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Executables whose leftover processes `down` hunts (only when their command line names
# $STATE or $RUN, so the envtest kube-apiserver/etcd of `make test` are never touched).
OUR_EXES=" etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 runc "
# Kernel settings that the cluster (kubelet, kube-proxy, CNI bridge) changes; saved on
# `up` and restored on `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Saved outside $STATE/$RUN so that a killed run's values survive until the next down.
SYSCTL_SAVE=/var/lib/leasehold-cluster.sysctl

log() { printf '[cluster %4ss] %s\n' "$SECONDS" "$*" >&2 || true; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

# wait_for DESC TIMEOUT_S CMD...: poll CMD every 0.5 s, printing a dot every 5 s.
wait_for() {
  local desc=$1 timeout=$2; shift 2
  local start=$SECONDS n=0
  printf '[cluster] waiting for %s ' "$desc" >&2 || true
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - start >= timeout )); then
      printf ' timed out after %ss\n' "$timeout" >&2 || true
      return 1
    fi
    sleep 0.5
    n=$((n + 1)); if (( n % 10 == 0 )); then printf '.' >&2 || true; fi
  done
  printf ' ok (%ss)\n' "$((SECONDS - start))" >&2 || true
}

# start NAME CMD...: run CMD in its own session, log to $LOGS/NAME.log, PID in $PIDS/NAME.pid.
start() {
  local name=$1; shift
  log "starting $name"
  # setsid: own session, so a Ctrl-C of `up` does not kill the cluster. A background job of a
  # non-interactive shell is no group leader, so setsid execs in place and $! is the PID.
  # 8>&-: the daemons must not inherit the lock of this script (see lock()).
  # trap - PIPE: they get the default SIGPIPE back (this script ignores it, see the end).
  ( trap - PIPE; exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- ) &
  echo $! >"$PIDS/$name.pid"
}

# alive NAME: the component's process is running.
alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# check_alive NAME...: fail with the log's tail when a component died.
check_alive() {
  local n
  for n in "$@"; do
    alive "$n" || { tail -n 30 "$LOGS/$n.log" >&2 || true; die "$n exited (log: $LOGS/$n.log)"; }
  done
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# our_pids: PIDs of cluster processes (by executable name AND a command line naming our
# directories), whether or not a PID file knows them.
our_pids() {
  local p comm exe cmd
  for p in /proc/[0-9]*; do
    # comm first (read without forking; names are cut to 15 characters), so that only
    # candidates cost a readlink: this runs several times per `down` on a busy machine.
    read -r comm 2>/dev/null <"$p/comm" || continue
    case "$comm" in
      etcd|kube-apiserver|kube-controller|kube-scheduler|kubelet|kube-proxy|containerd|containerd-shim|runc) ;;
      *) continue ;;
    esac
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    exe=${exe% (deleted)}
    [[ $OUR_EXES == *" ${exe##*/} "* ]] || continue
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    [[ $cmd == *"$STATE"* || $cmd == *"$RUN"* ]] && echo "${p#/proc/}"
  done
  return 0
}

# kill_wait SIGNAL TIMEOUT PID...: signal, then wait for the PIDs to disappear.
kill_wait() {
  local sig=$1 timeout=$2 p left i; shift 2
  [ $# -gt 0 ] || return 0
  kill "-$sig" "$@" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    left=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.1
  done
  return 1
}

# kubepods_cgroups: the kubelet's cgroup trees, one per v1 hierarchy (and the v2 one).
kubepods_cgroups() { find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name kubepods 2>/dev/null || true; }

# our_mounts: mount points under our directories and the CNI network namespaces, deepest first.
our_mounts() {
  # /proc/self/mountinfo field 5 is the mount point (spaces escaped as \040).
  awk '{print $5}' /proc/self/mountinfo | while read -r m; do
    [[ $m == *\\* ]] && m=$(printf '%b' "${m//\\/\\0}")   # \040 -> \0040, which %b decodes
    case "$m" in
      "$STATE"/*|"$STATE"|"$RUN"/*|"$RUN"|/run/netns/cni-*|/var/run/netns/cni-*) echo "$m" ;;
    esac
  done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}

# ---------------------------------------------------------------------------------------
# down: stop and remove everything; also the first step of `up` (leftovers of a killed run)
# ---------------------------------------------------------------------------------------
cleanup() {
  local i n pids cg m
  # Best effort, step after step: a failing step must not stop the later ones (a cgroup or
  # mount can vanish while we look at it). leftovers() judges the result afterwards.
  set +e

  # 1. Components, in three waves: the kubelet (so it stops restarting containers); the
  #    API clients and the API server together; etcd last (an API server that loses etcd
  #    first hangs in its graceful shutdown). TERM, up to 5 s, then KILL. containerd comes
  #    after the containers (step 3).
  local wave pid
  for wave in "kubelet" "kube-proxy kube-scheduler kube-controller-manager kube-apiserver" "etcd"; do
    local stop=()
    for n in $wave; do
      [ -f "$PIDS/$n.pid" ] || continue
      pid=$(cat "$PIDS/$n.pid")
      # Only signal it if it is still the same program (PIDs get reused after a reboot).
      if [ -e "/proc/$pid/exe" ] && [[ $(readlink "/proc/$pid/exe") == *"$n"* ]]; then
        log "stopping $n (pid $pid)"
        stop+=("$pid")
      fi
    done
    [ ${#stop[@]} -gt 0 ] || continue
    kill_wait TERM 5 "${stop[@]}" || kill_wait KILL 5 "${stop[@]}" || true
  done

  # 2. Container processes: everything in the kubelet's cgroups (thaw frozen ones first).
  for cg in $(kubepods_cgroups); do
    if [ -f "$cg/freezer.state" ]; then
      find "$cg" -name freezer.state -exec sh -c 'echo THAWED >"$1"' _ {} \; 2>/dev/null || true
    fi
    # (|| true: cgroups may vanish while find walks them; that must not abort `down`.)
    pids=$({ find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true; } | sort -u | tr '\n' ' ')
    if [ -n "${pids// /}" ]; then
      log "killing container processes in $cg: $pids"
      # shellcheck disable=SC2086
      kill_wait KILL 10 $pids || log "WARNING: some container processes survived: $pids"
    fi
  done

  # 3. Whatever is left of ours (shims, containerd, components without PID file).
  pids=$(our_pids | tr '\n' ' ')
  if [ -n "${pids// /}" ]; then
    log "stopping leftover cluster processes: $pids"
    # shellcheck disable=SC2086
    # shellcheck disable=SC2046
    kill_wait TERM 5 $pids || kill_wait KILL 5 $(our_pids) || true
  fi
  pids=$(our_pids | tr '\n' ' ')
  [ -z "${pids// /}" ] || die "processes still running: $pids"

  # 4. Network namespaces of Pods (bind mounts in /run/netns), then every mount of ours.
  if [ -d /run/netns ]; then
    for m in /run/netns/cni-*; do
      [ -e "$m" ] || continue
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
      rm -f "$m"
    done
  fi
  for i in 1 2 3; do
    m=$(our_mounts)
    [ -n "$m" ] || break
    [ "$i" = 1 ] && log "unmounting $(echo "$m" | wc -l) mounts"
    while read -r n; do umount "$n" 2>/dev/null || umount -l "$n" 2>/dev/null || true; done <<<"$m"
  done
  [ -z "$(our_mounts)" ] || die "mounts left: $(our_mounts | head -5)"
  # /run/netns itself: containerd makes it a shared bind mount of itself. Remove it when we
  # created it (marker written by `up`) and it is empty.
  if [ -f "$STATE/.netns-dir-ours" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns 2>/dev/null || true
    rmdir /run/netns 2>/dev/null || true
  fi

  # 5. Links: veth ends left on the bridge, then the bridge.
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    for n in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link delete "$n" 2>/dev/null || true
    done
    log "deleting bridge $BRIDGE"
    ip link delete "$BRIDGE"
  fi

  # 6. iptables: every KUBE-*, CNI-* and LEASEHOLD-* chain and every rule jumping to them,
  #    in every table, IPv4 and IPv6. iptables-restore replaces each table it is given.
  local save rules
  for save in iptables-save ip6tables-save; do
    command -v "$save" >/dev/null || continue
    # (Captured, not piped into grep -q: an early-closed pipe would trip pipefail.)
    rules=$("$save" 2>/dev/null || true)
    if grep -qE 'KUBE-|CNI-|LEASEHOLD-' <<<"$rules"; then
      log "removing KUBE-/CNI-/LEASEHOLD- rules ($save)"
      grep -vE 'KUBE-|CNI-|LEASEHOLD-' <<<"$rules" | "${save%-save}-restore"
    fi
  done

  # 7. cgroups: remove the (now empty) kubepods trees, deepest first.
  for cg in $(kubepods_cgroups); do
    for i in 1 2 3 4 5; do
      find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$cg" ] || break
      sleep 0.5
    done
    [ -d "$cg" ] && log "WARNING: cgroup $cg could not be removed"
  done

  # 8. Kernel settings changed by the cluster.
  if [ -f "$SYSCTL_SAVE" ]; then
    log "restoring sysctls"
    while read -r k v; do
      if [ -n "$k" ]; then sysctl -q -w "$k=$v" >/dev/null 2>&1 || true; fi
    done <"$SYSCTL_SAVE"
    rm -f "$SYSCTL_SAVE"
  fi

  # 9. Files: our directories (keeping the last logs), CNI cache, kubelet log symlinks.
  rm -rf "$RUN"
  if [ -d "$STATE" ]; then
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name .lock -exec rm -rf {} +
  fi
  # libcni caches results in /var/lib/cni (containerd 1.6 cannot move it): ours are the
  # "leasehold" network and containerd's loopback.
  rm -rf /var/lib/cni/results/"$CNI_NAME"-* /var/lib/cni/results/cni-loopback-* /var/lib/cni/networks/"$CNI_NAME"
  rmdir /var/lib/cni/results /var/lib/cni/networks /var/lib/cni 2>/dev/null || true
  # containerd 1.6 puts shim sockets in /run/containerd/s (fixed path). Once no shim runs,
  # the sockets there are stale; remove them and the directories if empty.
  if ! pgrep -x containerd-shim >/dev/null && ! pgrep -x containerd >/dev/null; then   # (comm: 15 chars)
    find /run/containerd/s -maxdepth 1 -type s -delete 2>/dev/null || true
    rmdir /run/containerd/s /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd 2>/dev/null || true
  fi
  # The kubelet's device-plugin socket path is fixed (not under --root-dir).
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
  # Default flex-volume directory (created by older runs; now moved under $STATE): only if empty.
  rmdir /usr/libexec/kubernetes/kubelet-plugins/volume/exec /usr/libexec/kubernetes/kubelet-plugins/volume \
    /usr/libexec/kubernetes/kubelet-plugins /usr/libexec/kubernetes 2>/dev/null || true
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete
    rmdir /var/log/containers 2>/dev/null || true
  fi
  set -e
  return 0
}

# leftovers: print what of a cluster is still on the machine; false when something is.
leftovers() {
  local found=()
  [ -z "$(our_pids)" ] || found+=("processes: $(our_pids | tr '\n' ' ')")
  [ -z "$(our_mounts)" ] || found+=("mounts: $(our_mounts | wc -l)")
  ip link show "$BRIDGE" >/dev/null 2>&1 && found+=("bridge $BRIDGE")
  [ -n "$(find /run/netns -name 'cni-*' 2>/dev/null)" ] && found+=("netns: $(find /run/netns -name 'cni-*' | wc -l)")
  [ -z "$(kubepods_cgroups)" ] || found+=("cgroups: $(kubepods_cgroups | tr '\n' ' ')")
  local n
  n=$( { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -cE 'KUBE-|CNI-|LEASEHOLD-' || true)
  [ "$n" = 0 ] || found+=("iptables lines: $n")
  [ -e "$RUN" ] && found+=("$RUN")
  [ ${#found[@]} -eq 0 ] && return 0
  printf 'left behind: %s\n' "${found[@]}" >&2
  return 1
}

# ---------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------

# Debian packages: installed only when missing (apt-cache policy tells what is there).
ensure_packages() {
  local want=(containerd runc containernetworking-plugins iptables conntrack openssl busybox-static curl kmod
    iproute2 procps util-linux)
  local missing=() p
  # dpkg-query answers in milliseconds (apt-cache policy takes over a second per call).
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  # A fresh machine may have no package index (or an old one): refresh it when a missing
  # package has no install candidate, then check again.
  local p_unknown=()
  for p in "${missing[@]}"; do
    [[ $(apt-cache policy "$p" 2>/dev/null || true) =~ Candidate:\ [^\(] ]] || p_unknown+=("$p")
  done
  if [ ${#p_unknown[@]} -gt 0 ]; then
    log "apt-get update (no candidate yet for: ${p_unknown[*]})"
    apt-get update -qq >"$LOGS/apt-update.log" 2>&1 || { tail "$LOGS/apt-update.log" >&2; die "apt-get update failed"; }
    for p in "${p_unknown[@]}"; do
      [[ $(apt-cache policy "$p" 2>/dev/null || true) =~ Candidate:\ [^\(] ]] ||
        die "Debian has no package $p for this machine (apt-cache policy $p): install it by hand or use a Debian release that has it"
    done
  fi
  # Debian's containerd package would start its own daemon; policy-rc.d 101 forbids that.
  local prc=/usr/sbin/policy-rc.d made_prc=false
  if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; made_prc=true; fi
  # An old package index can name versions the archive no longer has: update once and retry.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 ||
    { log "apt-get install failed; apt-get update and one more try"; apt-get update -qq >>"$LOGS/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1; } ||
    { $made_prc && rm -f "$prc"; tail "$LOGS/apt.log" >&2; die "apt-get install ${missing[*]} failed (see $LOGS/apt.log)"; }
  $made_prc && rm -f "$prc"
  return 0
}

# restrict_oom_score_adj: runc sets each container's oom_score_adj; lowering it below the
# current value needs CAP_SYS_RESOURCE, which some VMs (Firecracker here) drop even for
# root, and then runc fails with "can't get final child's PID from pipe: EOF". Probe it in
# a child process: if lowering is refused, containerd must restrict the values it sets.
detect_restrict_oom_score_adj() {
  # RESTRICT_OOM_SCORE_ADJ=true|false overrides the probe (to reproduce the failure).
  if [ -n "${RESTRICT_OOM_SCORE_ADJ:-}" ]; then echo "$RESTRICT_OOM_SCORE_ADJ"; return; fi
  local cur target
  cur=$(cat /proc/self/oom_score_adj)
  target=$((cur > -1000 ? cur - 1 : -1000))
  if sh -c "echo $target >/proc/self/oom_score_adj" 2>/dev/null; then echo false; else echo true; fi
}

make_certs() {
  log "making certificates"
  mkdir -p "$PKI" && cd "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -subj "/CN=leasehold-cluster-ca" -days 3650 -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  # cert NAME SUBJECT EXTKEYUSAGE [SANS]
  cert() {
    local name=$1 subj=$2 eku=$3 sans=${4:-}
    openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
    openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$eku"
      [ -n "$sans" ] && echo "subjectAltName=$sans"
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
      -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
  }
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$API_SERVICE_IP,IP:$NODE_IP,IP:127.0.0.1"
  cert kubelet-serving "/CN=system:node:$NODE_NAME/O=system:nodes" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
  cert admin "/CN=leasehold-admin/O=system:masters" clientAuth
  cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" clientAuth
  cert kubelet "/CN=system:node:$NODE_NAME/O=system:nodes" clientAuth
  cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  # Front proxy (aggregation layer) CA and the API server's client cert for it: the
  # requestheader settings make extension-apiserver-authentication complete, which the
  # controller-manager and scheduler otherwise complain about every few seconds.
  openssl ecparam -name prime256v1 -genkey -noout -out front-proxy-ca.key 2>/dev/null
  openssl req -x509 -new -key front-proxy-ca.key -subj "/CN=leasehold-front-proxy-ca" -days 3650 \
    -out front-proxy-ca.crt -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out front-proxy-client.key 2>/dev/null
  openssl req -new -key front-proxy-client.key -subj "/CN=front-proxy-client" 2>/dev/null |
    openssl x509 -req -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -days 365 \
      -extfile <(printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
      -out front-proxy-client.crt 2>/dev/null
  # ServiceAccount token signing key pair.
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
  cd - >/dev/null
}

# kubeconfig NAME CERT: a kubeconfig for a client certificate of $PKI.
kubeconfig() {
  cat >"$STATE/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: leasehold
  cluster:
    certificate-authority: $PKI/ca.crt
    server: https://$NODE_IP:$API_PORT
users:
- name: $1
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: leasehold
  context: {cluster: leasehold, user: $1, namespace: default}
current-context: leasehold
EOF
}

write_configs() {
  local restrict=$1
  mkdir -p "$CONF" "$STATE/cni/net.d" "$STATE/cni/networks"

  cat >"$CONF/containerd.toml" <<EOF
# containerd for the leasehold test cluster (hack/cluster.sh): private root, state and socket.
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$STATE/containerd-opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    # Detected by hack/cluster.sh: true when this machine refuses to lower oom_score_adj.
    restrict_oom_score_adj = $restrict
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$RUN/runc"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN"
      conf_dir = "$STATE/cni/net.d"
EOF

  # No ipMasq: Pods only talk to each other and to this host. hairpinMode lets a Pod reach
  # itself through a Service.
  cat >"$STATE/cni/net.d/10-$CNI_NAME.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/networks"
      }
    }
  ]
}
EOF

  cat >"$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# containerd 1.6 has no RuntimeConfig RPC: the kubelet uses this driver.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# No DNS servers in Pods: nothing is resolved outside the machine.
resolvConf: ""
podLogsDir: $STATE/pod-logs
volumePluginDir: $STATE/kubelet-plugins
# Images cannot be pulled again (no registry): never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
serializeImagePulls: false
maxPods: 110
# syncFrequency stays the kubelet's default (1m), as on the clusters users run: mounted
# Secrets reach their volumes up to a minute after a change. The webhook does not wait
# for that: it serves the certificate it wrote into its Secret from the API
# (webhook/secretcert.go), so the e2e suite and the demo prove it ready without the sync.
EOF

  cat >"$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the bridge address (also keeps route_localnet untouched).
nodePortAddresses: ["$NODE_IP/32"]
# Leave the conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

setup_network() {
  log "creating bridge $BRIDGE $NODE_IP/${POD_CIDR#*/}"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service traffic between Pods on the bridge must pass iptables (kube-proxy's DNAT), and
  # Pod -> Service -> Pod is routed through the host.
  modprobe br_netfilter 2>/dev/null || true
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 net.ipv4.ip_forward=1
  # Forwarding only between Pods on the bridge: nothing from a Pod leaves the machine and
  # nothing from outside reaches a Pod.
  iptables -N LEASEHOLD-FORWARD
  iptables -A LEASEHOLD-FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -A LEASEHOLD-FORWARD -i "$BRIDGE" -j DROP
  iptables -A LEASEHOLD-FORWARD -o "$BRIDGE" -j DROP
  iptables -I FORWARD 1 -j LEASEHOLD-FORWARD
  # Pods never reach anything outside over IPv6 either.
  ip6tables -N LEASEHOLD-FORWARD
  ip6tables -A LEASEHOLD-FORWARD -i "$BRIDGE" -j DROP
  ip6tables -A LEASEHOLD-FORWARD -o "$BRIDGE" -j DROP
  ip6tables -I FORWARD 1 -j LEASEHOLD-FORWARD
}

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

  # containerd first: images are imported while the control plane starts.
  start containerd containerd --config "$CONF/containerd.toml" --log-level warn
  wait_for "containerd" 30 ctr --address "$CONTAINERD_SOCK" version || { check_alive containerd; die "containerd not answering"; }

  start etcd "$BIN/etcd" --name leasehold --data-dir "$STATE/etcd" \
    --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
    --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
    --initial-cluster "leasehold=http://$ETCD_PEER" --unsafe-no-fsync --log-level warn

  log "building/importing images: $CLUSTER_IMAGES"
  # shellcheck disable=SC2086
  CONTAINERD_SOCK=$CONTAINERD_SOCK IMPORT=1 "$REPO/hack/images.sh" $CLUSTER_IMAGES 2>"$LOGS/images.log" ||
    { tail "$LOGS/images.log" >&2; die "hack/images.sh failed"; }
  grep WARNING "$LOGS/images.log" >&2 || true

  wait_for "etcd" 30 curl -sf "http://$ETCD_CLIENT/health" || { check_alive etcd; die "etcd not healthy"; }

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
  status) status ;;
  env) env_ ;;
  *) echo "usage: $0 up|down [--purge]|status|env" >&2; exit 2 ;;
esac
