# shellcheck shell=bash
# common.sh: the helpers every part of hack/cluster.sh uses: logging, waiting, starting
# a component and checking it still runs. Sourced by hack/cluster.sh, which sets
# $LOGS, $PIDS, $BIN and $KUBECONFIG_ADMIN.

log() { printf '[cluster %4ss] %s\n' "$SECONDS" "$*" >&2 || true; }
die() { log "ERROR: $*"; exit 1; }

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
  # 8>&-: the daemons must not inherit the lock of hack/cluster.sh (see its lock()).
  # trap - PIPE: they get the default SIGPIPE back (hack/cluster.sh ignores it, see its end).
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
