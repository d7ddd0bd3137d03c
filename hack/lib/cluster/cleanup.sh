# shellcheck shell=bash
# cleanup.sh: `down`, which is also the first step of `up` (leftovers of a killed run):
# stop every process of the cluster and remove every trace of it (cleanup), then say
# what is still there (leftovers). Sourced by hack/cluster.sh, which sets the paths and
# the network settings.

# our_pids: PIDs of cluster processes (by executable name AND a command line naming our
# directories), whether or not a PID file knows them.
our_pids() {
  local p comm exe cmd
  for p in /proc/[0-9]*; do
    # comm first (read without forking; names are cut to 15 characters), so that only
    # candidates cost a readlink: this runs several times per `down` on a busy machine.
    read -r comm 2>/dev/null <"$p/comm" || continue
    case "$comm" in
      etcd|kube-apiserver|kube-controller|kube-scheduler|kubelet|kube-proxy|containerd|containerd-shim|runc|leasehold-regis) ;;
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

cleanup() {
  local i n procs cg m
  # Best effort, step after step: a failing step must not stop the later ones (a cgroup or
  # mount can vanish while we look at it). leftovers() judges the result afterwards.
  set +e

  # 1. Components, in three waves: the kubelet (so it stops restarting containers); the
  #    API clients and the API server together; etcd last (an API server that loses etcd
  #    first hangs in its graceful shutdown) and the registry. TERM, up to 5 s, then KILL.
  #    containerd comes after the containers (step 3).
  local wave pid
  for wave in "kubelet" "kube-proxy kube-scheduler kube-controller-manager kube-apiserver" "etcd registry"; do
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
    procs=$({ find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true; } | sort -u | tr '\n' ' ')
    if [ -n "${procs// /}" ]; then
      log "killing container processes in $cg: $procs"
      # shellcheck disable=SC2086
      kill_wait KILL 10 $procs || log "WARNING: some container processes survived: $procs"
    fi
  done

  # 3. Whatever is left of ours (shims, containerd, components without PID file).
  procs=$(our_pids | tr '\n' ' ')
  if [ -n "${procs// /}" ]; then
    log "stopping leftover cluster processes: $procs"
    # shellcheck disable=SC2086
    # shellcheck disable=SC2046
    kill_wait TERM 5 $procs || kill_wait KILL 5 $(our_pids) || true
  fi
  procs=$(our_pids | tr '\n' ' ')
  [ -z "${procs// /}" ] || die "processes still running: $procs"

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
