{{/*
The chart's name, or nameOverride.
*/}}
{{- define "spec-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource names: `<release>-<chart>`, or the release name alone when it already contains the chart name. Cut to
63 characters, the limit of a DNS label.
*/}}
{{- define "spec-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
`<chart>-<version>` for the helm.sh/chart label.
*/}}
{{- define "spec-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "spec-exporter.labels" -}}
helm.sh/chart: {{ include "spec-exporter.chart" . }}
{{ include "spec-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the pods; immutable in a Deployment, so nothing here may depend on values.
*/}}
{{- define "spec-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spec-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The service account the pods run as.
*/}}
{{- define "spec-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spec-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The exporter image: a digest wins over a tag; the tag defaults to the chart's appVersion.
*/}}
{{- define "spec-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when this release runs vLLM in the pod (sidecar mode), else empty.
*/}}
{{- define "spec-exporter.sidecar" -}}
{{- if eq .Values.mode "sidecar" }}true{{ end }}
{{- end }}

{{/*
"true" when the tap sits in the request path: sidecar mode with tap.enabled.
*/}}
{{- define "spec-exporter.tap" -}}
{{- if and (eq .Values.mode "sidecar") .Values.tap.enabled }}true{{ end }}
{{- end }}

{{/*
The name of the local vLLM target in sidecar mode: it becomes the `target` label of the exporter's series.
*/}}
{{- define "spec-exporter.localTarget" -}}vllm{{- end }}

{{/*
The exporter's configuration file: exporter.config, plus the local vLLM target and the tap's address in sidecar
mode. Rendered once here so that the ConfigMap and the pod's checksum annotation agree.
*/}}
{{- define "spec-exporter.config" -}}
{{- $config := omit (deepCopy .Values.exporter.config) "targets" "tap" }}
{{- $targets := list }}
{{- if include "spec-exporter.sidecar" . }}
{{- $targets = append $targets (dict "name" (include "spec-exporter.localTarget" .) "url" (printf "http://127.0.0.1:%v" .Values.vllm.port)) }}
{{- end }}
{{- $targets = concat $targets (.Values.exporter.config.targets | default list) }}
{{- $_ := set $config "targets" $targets }}
{{- if include "spec-exporter.tap" . }}
{{- $tap := deepCopy (.Values.exporter.config.tap | default dict) }}
{{- $_ := set $tap "listen_address" (printf ":%v" .Values.tap.port) }}
{{- $_ := set $tap "target" (include "spec-exporter.localTarget" .) }}
{{- $_ := set $config "tap" $tap }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Interval and timeout shared by the ServiceMonitor's and PodMonitor's endpoints.
*/}}
{{- define "spec-exporter.scrapeSettings" -}}
{{- with .Values.monitor.interval }}
interval: {{ . }}
{{- end }}
{{- with .Values.monitor.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- end }}

{{/*
vLLM's series get their own `job`, so that the exporter-down alert (which matches the exporter's job) does not
fire when only vLLM is down.
*/}}
{{- define "spec-exporter.vllmJob" -}}
relabelings:
  - action: replace
    targetLabel: job
    replacement: {{ .Values.monitor.vllm.job }}
{{- end }}
