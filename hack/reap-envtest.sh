#!/usr/bin/env bash
# reap-envtest.sh: stop the kube-apiserver, etcd and kube-controller-manager processes
# that an envtest suite started and left behind when it was killed (a timeout, Ctrl-C,
# SIGKILL): their test binary is gone, so they were re-parented (PPID 1, or a
# subreaper). A running suite is their parent, so nothing of a live run is touched.
# `make unit`, `make race` and `make chaos` run it first, so that a run starts cleanly
# after one that was killed.
set -euo pipefail

CACHE=${LEASEHOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold}
reaped=0
for pid in $(pgrep -f "^$CACHE/k8s/[^ ]*/(kube-apiserver|etcd|kube-controller-manager) " || true); do
  parent=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') || continue
  [ -n "$parent" ] || continue
  # A live suite's control plane is the child of its test binary; an orphan's parent
  # is init (or whatever subreaper adopted it), never a *.test binary.
  pcomm=$(ps -o comm= -p "$parent" 2>/dev/null || true)
  case "$pcomm" in *.test) continue ;; esac
  # envtest's processes keep their data and certificates in k8s_test_framework_*
  # directories; the one-node cluster's (hack/cluster.sh) do not, and are left alone.
  args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || continue
  grep -q 'k8s_test_framework_' <<<"$args" || continue
  kill -KILL "$pid" 2>/dev/null || continue
  reaped=$((reaped + 1))
  # Its own directories, now that nothing uses them.
  while read -r dir; do
    [ -n "$dir" ] && rm -rf "$dir"
  done < <(grep -oE '/[^ =]*/k8s_test_framework_[0-9]+' <<<"$args" | sort -u)
done
if [ "$reaped" -gt 0 ]; then
  echo "reap-envtest: stopped $reaped process(es) left behind by a killed envtest run" >&2
fi
