{{- define "pbxbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pbxbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "pbxbridge.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "pbxbridge.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "pbxbridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pbxbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pbxbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pbxbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pbxbridge.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/* The bundled NATS chart's client Service, unless natsUrl says otherwise. */}}
{{- define "pbxbridge.natsUrl" -}}
{{- if .Values.natsUrl -}}
{{ .Values.natsUrl }}
{{- else if contains "nats" .Release.Name -}}
nats://{{ .Release.Name }}:4222
{{- else -}}
nats://{{ .Release.Name }}-nats:4222
{{- end -}}
{{- end }}

{{/* Environment of a pbxbridge container: (dict "ctx" $ "user" "<nats user>") */}}
{{- define "pbxbridge.env" -}}
- name: PBX_NATS_URL
  value: {{ include "pbxbridge.natsUrl" .ctx | quote }}
- name: PBX_NATS_USER
  value: {{ .user | quote }}
- name: PBX_NATS_PASSWORD_FILE
  value: /var/run/pbx-nats/password
- name: PBX_CONFIG
  value: /etc/pbxbridge/pbxbridge.toml
- name: PBX_DATA_DIR
  value: /tmp/pbxbridge
- name: PBX_HEALTH_PORT
  value: {{ .ctx.Values.healthPort | quote }}
{{- range $name, $value := .ctx.Values.settings }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
