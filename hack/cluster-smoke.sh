#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted commands expand inside the container
# cluster-smoke.sh: prove that the local cluster (hack/cluster.sh up) runs real Pods with
# what Leasehold relies on. Needs only the cluster and the local images; no Leasehold code.
#
#   hack/cluster.sh up              (once; pushes the images to the node's registry)
#   hack/cluster-smoke.sh            exit 0 when every check passes
#
# Checks, each printed as ok/FAIL:
#   1. a Pod with a native sidecar (initContainers entry with restartPolicy: Always and an
#      exec startupProbe) becomes Running/Ready, and the app container starts only after the
#      sidecar is started (it finds the sidecar's file in the shared emptyDir);
#   2. downward API env (POD_NAME, POD_NAMESPACE, POD_UID) matches the Pod;
#   3. runAsNonRoot with UID/GID 65532 (id -u / id -g in the container);
#   4. the projected ServiceAccount tokens: the automounted one authenticates to the API as
#      system:serviceaccount:<ns>:<sa>; one with a custom audience carries that audience;
#   5. the Pod reaches the API server through the kubernetes Service (10.96.0.1:443, via
#      kube-proxy's iptables rules) and a Service of its own (hairpin); the host reaches that
#      Service, and the API server reaches the Pod behind it (the path webhook calls take);
#   6. deleting the Pod sends SIGTERM: the app container, then the sidecar, log the signal.
set -euo pipefail

cd "$(dirname "$0")/.."
eval "$(hack/cluster.sh env)"
NS=leasehold-smoke
failures=0
ok() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
check() { local desc=$1; shift; if "$@"; then ok "$desc"; else fail "$desc"; fi; }

kubectl get node -o name >/dev/null || { echo "cluster not up: run hack/cluster.sh up" >&2; exit 1; }
kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" create serviceaccount smoke >/dev/null
# The namespace's ServiceAccount admission needs the SA to exist; also wait for the CA map.
for _ in $(seq 1 50); do kubectl -n "$NS" get configmap kube-root-ca.crt >/dev/null 2>&1 && break; sleep 0.2; done

echo "== Pod with a native sidecar"
start=$(date +%s.%N)
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: leasehold-smoke
  labels: {app: smoke}
spec:
  serviceAccountName: smoke
  terminationGracePeriodSeconds: 20
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  volumes:
  - name: shared
    emptyDir: {}
  - name: aud-token
    projected:
      sources:
      - serviceAccountToken: {path: token, audience: leasehold-smoke, expirationSeconds: 3600}
  initContainers:
  - name: sidecar
    image: leasehold.local/example-app:dev
    imagePullPolicy: Never
    restartPolicy: Always
    command:
    - sh
    - -c
    - |
      mkdir -p /shared/www && echo "hello from $POD_NAME" > /shared/www/index.html
      httpd -p 8080 -h /shared/www
      trap 'echo "sidecar: got SIGTERM"; sleep 1; exit 0' TERM
      echo started > /shared/sidecar-started
      while true; do sleep 0.2; done
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    startupProbe:
      exec: {command: [test, -f, /shared/sidecar-started]}
      periodSeconds: 1
      failureThreshold: 30
    volumeMounts:
    - {name: shared, mountPath: /shared}
    securityContext: &sc
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
  containers:
  - name: app
    image: leasehold.local/example-app:dev
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      if [ -f /shared/sidecar-started ]; then echo "app: sidecar was started first"; else echo "app: sidecar NOT started"; fi
      trap 'echo "app: got SIGTERM"; sleep 1; exit 0' TERM
      while true; do sleep 0.2; done
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: aud-token, mountPath: /var/run/secrets/tokens, readOnly: true}
    securityContext: *sc
---
apiVersion: v1
kind: Service
metadata: {name: smoke, namespace: leasehold-smoke}
spec:
  selector: {app: smoke}
  ports: [{port: 80, targetPort: 8080}]
EOF
if kubectl -n "$NS" wait --for=condition=Ready pod/smoke --timeout=90s >/dev/null; then
  ok "Pod Ready in $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | awk '{print $1 - $3}')")s"
else
  fail "Pod not Ready"; kubectl -n "$NS" describe pod smoke | tail -20
fi
x() { kubectl -n "$NS" exec smoke -c app -- "$@"; }

check "sidecar is a native sidecar (init container, restartPolicy Always, started)" \
  test "$(kubectl -n "$NS" get pod smoke -o jsonpath='{.status.initContainerStatuses[0].started}')" = true
check "app container started after the sidecar" \
  grep -q "sidecar was started first" <(kubectl -n "$NS" logs smoke -c app)

echo "== downward API, user, tokens"
uid=$(kubectl -n "$NS" get pod smoke -o jsonpath='{.metadata.uid}')
check "downward API env POD_NAME/POD_NAMESPACE/POD_UID" \
  test "$(x sh -c 'echo $POD_NAME/$POD_NAMESPACE/$POD_UID')" = "smoke/$NS/$uid"
check "runs as 65532:65532 (runAsNonRoot)" test "$(x sh -c 'echo $(id -u):$(id -g)')" = 65532:65532
check "shared emptyDir written by the sidecar, readable by the app" x test -f /shared/www/index.html
token=$(x cat /var/run/secrets/kubernetes.io/serviceaccount/token)
api=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')
who=$(kubectl --kubeconfig=/dev/null --server "$api" --certificate-authority "$ca" --token "$token" \
  auth whoami -o jsonpath='{.status.userInfo.username}' 2>&1 || true)
check "automounted ServiceAccount token authenticates as system:serviceaccount:$NS:smoke ($who)" \
  test "$who" = "system:serviceaccount:$NS:smoke"
payload=$(x cat /var/run/secrets/tokens/token | cut -d. -f2 | tr '_-' '/+')
while [ $(( ${#payload} % 4 )) -ne 0 ]; do payload+="="; done
check "projected token with audience leasehold-smoke" grep -q '"aud":\["leasehold-smoke"\]' <(echo "$payload" | base64 -d 2>/dev/null)

echo "== network"
check "Pod reaches the API server at 10.96.0.1:443 (kube-proxy)" x sh -c 'echo | nc -w 3 10.96.0.1 443 >/dev/null'
svc=$(kubectl -n "$NS" get service smoke -o jsonpath='{.spec.clusterIP}')
for _ in $(seq 1 50); do iptables-save -t nat | grep -q -- "-d $svc/32" && break; sleep 0.2; done
check "Pod reaches its own Service $svc:80 (hairpin)" \
  grep -q "hello from smoke" <(x sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $svc 80")
check "host reaches the Service $svc:80" grep -q "hello from smoke" <(curl -s -m 3 "http://$svc/")
# The API server calls admission webhooks through their Service's endpoints
# (--enable-aggregator-routing); its service proxy takes the same path.
check "API server reaches the Pod behind Service smoke (webhook path)" \
  grep -q "hello from smoke" <(kubectl get --raw "/api/v1/namespaces/$NS/services/smoke:80/proxy/" 2>&1)

echo "== SIGTERM on Pod deletion"
logs=$(mktemp -d)
kubectl -n "$NS" logs -f smoke -c app >"$logs/app" 2>&1 &
p1=$!
kubectl -n "$NS" logs -f smoke -c sidecar >"$logs/sidecar" 2>&1 &
p2=$!
sleep 1
start=$(date +%s.%N)
kubectl -n "$NS" delete pod smoke --wait=true --timeout=60s >/dev/null
took=$(echo "$(date +%s.%N) - $start" | awk '{printf "%.1f", $1 - $3}')
wait "$p1" "$p2" 2>/dev/null || true
check "app container got SIGTERM" grep -q "app: got SIGTERM" "$logs/app"
check "sidecar got SIGTERM" grep -q "sidecar: got SIGTERM" "$logs/sidecar"
echo "  (Pod deleted in ${took}s)"
rm -rf "$logs"

kubectl delete namespace "$NS" --wait=false >/dev/null
if [ "$failures" -gt 0 ]; then echo "smoke: $failures check(s) failed"; exit 1; fi
echo "smoke: all checks passed"
