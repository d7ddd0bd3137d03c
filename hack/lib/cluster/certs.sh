# shellcheck shell=bash
# certs.sh: the cluster's certificates (openssl, in $PKI) and the kubeconfigs of its
# components. Sourced by hack/cluster.sh, which sets $PKI, $STATE and the addresses.

make_certs() {
  log "making certificates"
  mkdir -p "$PKI"
  cd "$PKI" || die "cannot enter $PKI"
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
  cd - >/dev/null || die "cannot return to the directory make_certs started in"
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
