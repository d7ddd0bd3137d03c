# shellcheck shell=bash
# configs.sh: the configuration files of containerd, the CNI bridge, the kubelet and
# kube-proxy. Sourced by hack/cluster.sh, which sets the paths and the network settings.

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
    # Registry hosts, one directory per registry name (containerd's hosts.toml).
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$CONF/certs.d"
EOF

  # leasehold.local/* is served by the node's registry (hack/registry) on loopback, over
  # plain HTTP: it listens on 127.0.0.1 only, so nothing off this machine reaches it.
  mkdir -p "$CONF/certs.d/leasehold.local"
  cat >"$CONF/certs.d/leasehold.local/hosts.toml" <<EOF
server = "http://$REGISTRY_ADDR"

[host."http://$REGISTRY_ADDR"]
  capabilities = ["pull", "resolve"]
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
# The node's registry keeps images only while the cluster runs: never garbage-collect them.
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
