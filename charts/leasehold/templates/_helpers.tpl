{{/* Labels of every object: those manifests/base/kustomization.yaml adds. */}}
{{- define "leasehold.labels" -}}
app.kubernetes.io/part-of: leasehold
{{- end }}

{{/* The project image. */}}
{{- define "leasehold.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* Whether the webhook makes its own certificates; fails on an unknown mode. */}}
{{- define "leasehold.selfManaged" -}}
{{- if eq .Values.certificates.mode "self-managed" -}}
true
{{- else if ne .Values.certificates.mode "cert-manager" -}}
{{- fail (printf "certificates.mode is %q: want self-managed (the webhook makes its own) or cert-manager" .Values.certificates.mode) -}}
{{- end -}}
{{- end }}
