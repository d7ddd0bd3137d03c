#!/usr/bin/env bash
# demo.sh: the main job. Builds everything, brings up a local one-node cluster, installs
# Leasehold from manifests/ as a user would, deploys the example app from examples/, and
# shows the locks changing hands.
#
#   hack/demo.sh            (make demo)
#   DEMO_SECONDS=60 hack/demo.sh   watch the locks for longer
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "demo: run as root (the local node runs containerd and the kubelet)" >&2; exit 1; }

step "1/5 Building the Kubernetes binaries (first run: 10-15 min on 2 cores; cached after)"
hack/build-k8s.sh >/dev/null

step "2/5 Bringing up the local one-node cluster and pushing the images to its registry"
hack/cluster.sh up
eval "$(hack/cluster.sh env)"   # KUBECONFIG, PATH, LEASEHOLD_IMAGE (the image by digest)
CGO_ENABLED=0 go build -o bin/ ./cmd/kubectl-leasehold
export PATH=$REPO/bin:$PATH

step "3/5 Installing Leasehold: manifests/base with the image by digest ($LEASEHOLD_IMAGE)"
mkdir -p bin/deploy
hack/deploy-kustomization.sh "$LEASEHOLD_IMAGE" >bin/deploy/kustomization.yaml
kubectl apply -k bin/deploy
kubectl -n leasehold-system rollout status deployment/leasehold-webhook --timeout=180s
# The webhook's own certificates are made at start; wait until the API server can call it.
for _ in $(seq 1 60); do
  if kubectl -n default run webhook-probe --image=leasehold.local/example-app:dev --restart=Never \
      --annotations=leasehold.io/locks=probe --dry-run=server -o jsonpath='{.metadata.annotations.leasehold\.io/status}' 2>/dev/null |
      grep -q injected; then break; fi
  sleep 1
done

step "4/5 Deploying the example app: kubectl apply -k examples/"
kubectl apply -k examples
for d in workers scheduler api; do
  kubectl -n leasehold-demo rollout status "deployment/$d" --timeout=180s
done
kubectl -n leasehold-demo get pods -o wide

step "5/5 Locks changing hands (kubectl leasehold -n leasehold-demo, every second for ${DEMO_SECONDS:-20}s)"
end=$((SECONDS + ${DEMO_SECONDS:-20}))
while [ $SECONDS -lt $end ]; do
  printf '\n--- %s\n' "$(date +%T.%3N)"
  kubectl leasehold -n leasehold-demo
  sleep 1
done

step "What the replicas saw (critical sections with their fencing tokens)"
kubectl -n leasehold-demo logs -l app=workers -c worker --prefix --tail=4
kubectl -n leasehold-demo logs -l app=api -c migrate --prefix
kubectl -n leasehold-demo logs -l app=scheduler -c scheduler --prefix --tail=1

cat <<MSG

The cluster is still running. Look around:
  eval "\$(hack/cluster.sh env)"; export PATH=$REPO/bin:\$PATH
  kubectl leasehold -n leasehold-demo --watch       # locks as they change hands
  kubectl -n leasehold-demo logs -f deploy/workers -c worker   # critical sections and tokens
  kubectl -n leasehold-demo get pod -o yaml          # the injected agent sidecar
  kubectl leasehold -n leasehold-demo release shared-counter   # force-release (asks first)
  # an agent's Prometheus metrics, on its Pod's IP (the host reaches Pods on lh0):
  curl -s "http://\$(kubectl -n leasehold-demo get pod -l app=workers -o jsonpath='{.items[0].status.podIP}'):9090/metrics" | grep '^leasehold_lock'
  hack/prometheus.sh start   # a Prometheus scraping them all (http://127.0.0.1:19090; stop: hack/prometheus.sh stop)
Tear it down:
  make demo-down        (hack/cluster.sh down)
MSG
