# shellcheck shell=bash
# network.sh: the bridge the Pods and the node live on, and the firewall that keeps
# their traffic inside the machine (cleanup.sh removes both). Sourced by hack/cluster.sh.

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
