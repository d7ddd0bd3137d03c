#!/usr/bin/env bash
# deploy-kustomization.sh: print a kustomization that installs manifests/base with the
# project image replaced by IMAGE (make deploy renders it with kubectl kustomize). The
# image transformer sets the webhook container's image, and a replacement copies that
# into the webhook's --agent-image, so the injected agents run the same image.
#
#   hack/deploy-kustomization.sh IMAGE [BASE]     e.g. registry.example/leasehold:v1.2.3
set -euo pipefail

image=${1:?usage: deploy-kustomization.sh IMAGE [BASE]  (IMAGE: repository[:tag] or repository@sha256:...)}
base=${2:-../../manifests/base}
case "$image" in
  *@*) name=${image%%@*} pin="  digest: ${image#*@}" ;;
  *:*) if [[ ${image##*:} == */* ]]; then name=$image pin="  newTag: latest"; else name=${image%:*} pin="  newTag: ${image##*:}"; fi ;;
  *) name=$image pin="  newTag: latest" ;;
esac
cat <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $base
images:
- name: leasehold.local/leasehold
  newName: $name
$pin
replacements:
- source:
    kind: Deployment
    name: leasehold-webhook
    fieldPath: spec.template.spec.containers.[name=webhook].image
  targets:
  - select:
      kind: Deployment
      name: leasehold-webhook
    fieldPaths:
    - spec.template.spec.containers.[name=webhook].args.[=--agent-image=leasehold.local/leasehold:dev]
    options:
      delimiter: "="
      index: 1
YAML
