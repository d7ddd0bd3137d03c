{{/* Labels of every object: those manifests/base/kustomization.yaml adds. */}}
{{- define "leasehold.labels" -}}
app.kubernetes.io/part-of: leasehold
{{- end }}

{{/* The project image: by digest when image.digest is set, else by tag. */}}
{{- define "leasehold.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}
{{- end }}

{{/*
Refuses what the cluster's Kubernetes cannot run: the policies need
ValidatingAdmissionPolicy v1 (1.30), native sidecars need 1.29.
*/}}
{{- define "leasehold.checkKubeVersion" -}}
{{- $v := .Capabilities.KubeVersion.Version -}}
{{- $p := .Values.policies -}}
{{- if and (semverCompare "<1.30.0-0" $v) (or $p.leaseHolder.enabled $p.leaseCreate.enabled $p.podAnnotations.enabled $p.webhookConfig.enabled $p.priorityClass.enabled) -}}
{{- fail (printf "Kubernetes %s has no ValidatingAdmissionPolicy v1 (1.30 or later): set policies.leaseHolder.enabled, policies.leaseCreate.enabled, policies.podAnnotations.enabled, policies.webhookConfig.enabled and policies.priorityClass.enabled to false (and lose what they guarantee, manifests/README.md), or upgrade the cluster" $v) -}}
{{- end -}}
{{- if and (semverCompare "<1.29.0-0" $v) (not .Values.agent.plainContainer) -}}
{{- fail (printf "Kubernetes %s has no native sidecars (1.29 or later): set agent.plainContainer=true, or upgrade the cluster" $v) -}}
{{- end -}}
{{- end }}

{{/* Whether the webhook makes its own certificates; fails on an unknown mode. */}}
{{- define "leasehold.selfManaged" -}}
{{- if eq .Values.certificates.mode "self-managed" -}}
true
{{- else if ne .Values.certificates.mode "cert-manager" -}}
{{- fail (printf "certificates.mode is %q: want self-managed (the webhook makes its own) or cert-manager" .Values.certificates.mode) -}}
{{- end -}}
{{- end }}
