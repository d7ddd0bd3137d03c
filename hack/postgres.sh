#!/usr/bin/env bash
# postgres.sh: a throwaway PostgreSQL on this machine for the fencing example and its e2e
# test (examples/fencing, e2e/fencing_test.go), reachable from the local cluster's Pods.
#
#   hack/postgres.sh start     install Debian's postgresql if missing, make a fresh cluster
#                              and start it; prints the DSN for Pods on stdout
#   hack/postgres.sh stop      stop it and remove everything it left (state dir, processes)
#   hack/postgres.sh status    exit 0 when it runs
#   hack/postgres.sh dsn       print the DSN for Pods (LOCAL=1: the one for this machine)
#
# It never touches the system's own clusters (pg_lsclusters): its cluster lives in
# $LEASEHOLD_PG_STATE (default /var/lib/leasehold-postgres), runs the binaries of
# /usr/lib/postgresql/<newest>/bin directly as the postgres user, and listens on its own
# port ($LEASEHOLD_PG_PORT, default 15432) on 127.0.0.1 and the node's bridge address
# 10.244.0.1 (hack/cluster.sh), with password (SCRAM) logins for the Pod network
# 10.244.0.0/24 and this machine only. Database and role: fencing.
#
# `start` first does everything `stop` does, so a killed run never breaks the next one.
set -euo pipefail

STATE=${LEASEHOLD_PG_STATE:-/var/lib/leasehold-postgres}
PORT=${LEASEHOLD_PG_PORT:-15432}
NODE_IP=${LEASEHOLD_NODE_IP:-10.244.0.1}
POD_CIDR=${LEASEHOLD_POD_CIDR:-10.244.0.0/24}
DATA=$STATE/data

log() { printf '[postgres] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and runs postgres as the postgres user)"
case "$STATE" in
  /*/?*) ;;
  *) die "LEASEHOLD_PG_STATE=$STATE: want an absolute path below / (it is removed on stop)" ;;
esac

# bindir: the newest installed server's binaries.
bindir() {
  local v
  v=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/postgres" ] || return 1
  echo "/usr/lib/postgresql/$v/bin"
}

install_postgres() {
  bindir >/dev/null && return
  log "installing postgresql (Debian)"
  # Debian's postinst creates and starts a default cluster; this script does not use it,
  # so keep it from starting: policy-rc.d is Debian's switch for "install, do not start".
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null || rc=$?
  if [ "$rc" != 0 ]; then
    apt-get update -qq >/dev/null && rc=0
    [ "$rc" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null || rc=$?; }
  fi
  [ "$ours" = 1 ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install postgresql failed"
  bindir >/dev/null || die "postgresql installed, but no /usr/lib/postgresql/<version>/bin/postgres"
}

# ours: PIDs of every process started from this cluster (postgres chdirs to its data dir).
ours() {
  local p cwd
  for p in /proc/[0-9]*; do
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    case "$cwd" in
      "$DATA" | "$DATA"/* | "$DATA (deleted)") echo "${p#/proc/}" ;;
    esac
  done
}

stop() {
  local pids i b
  if [ -f "$DATA/postmaster.pid" ] && b=$(bindir); then
    runuser -u postgres -- "$b/pg_ctl" stop -D "$DATA" -m immediate -w -t 10 >/dev/null 2>&1 || true
  fi
  for i in $(seq 1 50); do
    pids=$(ours)
    [ -z "$pids" ] && break
    # SIGQUIT is postgres' immediate shutdown; SIGKILL when it did not help.
    # shellcheck disable=SC2086 # a list of PIDs
    if [ "$i" -lt 20 ]; then kill -QUIT $pids 2>/dev/null || true; else kill -KILL $pids 2>/dev/null || true; fi
    sleep 0.1
  done
  pids=$(ours)
  [ -z "$pids" ] || die "postgres processes left: $pids"
  rm -rf "$STATE"
}

dsn() {
  local host=$NODE_IP
  [ "${LOCAL:-0}" = 1 ] && host=127.0.0.1
  [ -f "$STATE/password" ] || die "not started (no $STATE/password): hack/postgres.sh start"
  printf 'postgres://fencing:%s@%s:%s/fencing?sslmode=disable\n' "$(cat "$STATE/password")" "$host" "$PORT"
}

start() {
  stop
  install_postgres
  local b
  b=$(bindir)
  mkdir -p "$STATE"
  chmod 0755 "$STATE"
  install -d -o postgres -g postgres -m 0700 "$DATA" "$STATE/run" "$STATE/log"
  # The password only keeps other local users out; it is no secret worth protecting here.
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$STATE/password"
  chmod 0600 "$STATE/password"
  runuser -u postgres -- "$b/initdb" -D "$DATA" -U postgres --auth-local=peer --auth-host=reject \
    -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
  cat >"$DATA/pg_hba.conf" <<EOF
# hack/postgres.sh: the postgres superuser over the socket only; role fencing from this
# machine and from the Pod network; nothing else.
local all      postgres                 peer
host  fencing  fencing   127.0.0.1/32   scram-sha-256
host  fencing  fencing   $POD_CIDR      scram-sha-256
EOF
  local listen=127.0.0.1
  if ip -4 -o addr show 2>/dev/null | grep -q " $NODE_IP/"; then
    listen="$listen,$NODE_IP"
  else
    log "WARNING: $NODE_IP is on no interface (hack/cluster.sh up makes it): listening on 127.0.0.1 only"
  fi
  runuser -u postgres -- "$b/pg_ctl" start -D "$DATA" -w -t 30 -l "$STATE/log/postgres.log" \
    -o "-c listen_addresses=$listen -p $PORT -k $STATE/run -c max_connections=50 -c fsync=off" >/dev/null ||
    { cat "$STATE/log/postgres.log" >&2; die "postgres did not start (log above)"; }
  runuser -u postgres -- "$b/psql" -h "$STATE/run" -p "$PORT" -U postgres -d postgres -qX -v ON_ERROR_STOP=1 \
    -v pw="$(cat "$STATE/password")" >/dev/null <<'EOF'
CREATE ROLE fencing LOGIN PASSWORD :'pw';
CREATE DATABASE fencing OWNER fencing;
EOF
  log "running: data $DATA, port $PORT on $listen, log $STATE/log/postgres.log"
  dsn
}

status() {
  local b
  b=$(bindir) || exit 1
  [ -f "$DATA/postmaster.pid" ] && runuser -u postgres -- "$b/pg_ctl" status -D "$DATA" >/dev/null
}

case "${1:-}" in
  start) start ;;
  stop) stop; log "stopped, $STATE removed" ;;
  status) status ;;
  dsn) dsn ;;
  *) echo "usage: $0 start|stop|status|dsn" >&2; exit 64 ;;
esac
