# shellcheck shell=bash
# packages.sh: the Debian packages the cluster runs on. Sourced by hack/cluster.sh.

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
