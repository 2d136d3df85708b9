{{/* Names and labels shared by the templates. */}}

{{- define "sailplane.name" -}}sailplane{{- end -}}

{{- define "sailplane.fullname" -}}
{{- if eq .Release.Name "sailplane" -}}sailplane{{- else -}}{{ printf "%s-sailplane" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "sailplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}{{ .Values.serviceAccount.name }}{{- else -}}{{ include "sailplane.fullname" . }}{{- end -}}
{{- end -}}

{{- define "sailplane.labels" -}}
app.kubernetes.io/name: sailplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sailplane.selectorLabels" -}}
app.kubernetes.io/name: sailplane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sailplane.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sailplane.proxyImage" -}}
{{ .Values.proxy.image | default (include "sailplane.image" .) }}
{{- end -}}

{{/* The host injected proxies and API-server webhook calls use. */}}
{{- define "sailplane.serviceHost" -}}
{{ .Values.service.name }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "sailplane.webhookSecret" -}}
{{- if .Values.webhooks.certSecret -}}{{ .Values.webhooks.certSecret }}{{- else -}}{{ include "sailplane.fullname" . }}-webhook-tls{{- end -}}
{{- end -}}
