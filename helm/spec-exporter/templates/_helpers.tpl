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
{{- /* fail, not required: `helm lint` reports a required value as a warning only. */}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is not set: no spec-exporter image is published yet. Build it from the repository's Dockerfile (docker build -t REGISTRY/spec-exporter:TAG .), push it to a registry your cluster pulls from, and set image.repository (and image.tag) to it; docs/deploy.md shows how" }}
{{- end }}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when this release runs vLLM in the pod (sidecar mode), else empty.
*/}}
{{- define "spec-exporter.sidecar" -}}
{{- if eq .Values.mode "sidecar" }}true{{ end }}
{{- end }}

{{/*
"true" when the proxy tap sits in the request path: sidecar mode with tap.mode proxy. Fails on the old
tap.enabled switch, which tap.mode replaced, with what to set instead.
*/}}
{{- define "spec-exporter.tap" -}}
{{- if hasKey .Values.tap "enabled" }}
{{- fail "tap.enabled was replaced by tap.mode: set tap.mode to middleware (the default: inside vLLM, no extra hop), proxy (the former tap.enabled=true) or off (the former tap.enabled=false)" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (eq (include "spec-exporter.tapMode" .) "proxy") }}true{{ end }}
{{- end }}

{{/*
tap.mode, with the `false` that YAML 1.1 (Helm's) makes of an unquoted `mode: off` read as off.
*/}}
{{- define "spec-exporter.tapMode" -}}
{{- if kindIs "bool" .Values.tap.mode }}off{{ else }}{{ .Values.tap.mode }}{{ end }}
{{- end }}

{{/*
"true" when the tap runs as a middleware inside vLLM's API server: sidecar mode with tap.mode middleware.
*/}}
{{- define "spec-exporter.middleware" -}}
{{- if and (eq .Values.mode "sidecar") (eq (include "spec-exporter.tapMode" .) "middleware") }}true{{ end }}
{{- end }}

{{/*
The middleware's import path and the directory the init container copies the spec_exporter package into; the
vLLM container finds it there through PYTHONPATH.
*/}}
{{- define "spec-exporter.middlewareClass" -}}spec_exporter.middleware.SpecDecodeMiddleware{{- end }}
{{- define "spec-exporter.middlewarePath" -}}/opt/spec-exporter/python{{- end }}

{{/*
A size as the exporter's configuration writes it (8MiB, 16 MB, 1024) in bytes, for the middleware's environment.
*/}}
{{- define "spec-exporter.bytes" -}}
{{- $text := toString . }}
{{- $units := dict "" 1 "B" 1 "KiB" 1024 "MiB" 1048576 "GiB" 1073741824 "KB" 1000 "MB" 1000000 "GB" 1000000000 }}
{{- $number := regexFind "^[0-9]+" $text }}
{{- $unit := regexReplaceAll "^[0-9]+ ?" $text "" }}
{{- if or (not $number) (not (hasKey $units $unit)) }}
{{- fail (printf "%q is not a size (use e.g. 8MiB or a number of bytes)" $text) }}
{{- end }}
{{- mul (atoi $number) (get $units $unit) }}
{{- end }}

{{/*
The vLLM arguments the user already gives (command and vllm.extraArgs) as a JSON list, with vLLM's `_` spelling
of flag names read as `-`, so that the chart does not add a flag twice.
*/}}
{{- define "spec-exporter.userVllmArgs" -}}
{{- $args := list }}
{{- range concat (.Values.vllm.command | default list) (.Values.vllm.extraArgs | default list) }}
{{- $arg := toString . }}
{{- if hasPrefix "--" $arg }}
{{- $parts := splitn "=" 2 $arg }}
{{- $arg = printf "%s%s" (replace "_" "-" $parts._0) (ternary (printf "=%s" $parts._1) "" (contains "=" $arg)) }}
{{- end }}
{{- $args = append $args $arg }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/*
The name of the local vLLM target in sidecar mode: it becomes the `target` label of the exporter's series. The pod's
own name, which the exporter reads from POD_NAME (the downward API) when it loads its configuration.
*/}}
{{- define "spec-exporter.localTarget" -}}${POD_NAME}{{- end }}

{{/*
The exporter's configuration file: exporter.config, plus the local vLLM target in sidecar mode and the proxy tap's
address with tap.mode proxy. Rendered once here so that the ConfigMap and the pod's checksum annotation agree.
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
{{- else if include "spec-exporter.middleware" . }}
{{- /* The same bands as the middleware's environment, and no listener: the exporter reads the middleware's series
from vLLM's /metrics. */}}
{{- $_ := set $config "tap" (deepCopy (.Values.exporter.config.tap | default dict)) }}
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
The `job` of the exporter's series: set by the monitor rather than left to the operator's default (the Service's
name for a ServiceMonitor, namespace/name for a PodMonitor), so that the rules can select it exactly whatever
fullnameOverride says.
*/}}
{{- define "spec-exporter.exporterJob" -}}
{{- include "spec-exporter.fullname" . }}
{{- end }}

{{/*
Label matchers of the exporter's own scrape, for the exporter-down alert: prometheusRule.exporterJobSelector; else
the job and namespace this release's monitor gives it; else, with no monitor of this release's, the mixin's
selector, which any job with spec-exporter in its name matches.
*/}}
{{- define "spec-exporter.exporterJobSelector" -}}
{{- if .Values.prometheusRule.exporterJobSelector }}
{{- .Values.prometheusRule.exporterJobSelector }}
{{- else if .Values.monitor.enabled }}
{{- printf "job=%q,namespace=%q" (include "spec-exporter.exporterJob" .) .Release.Namespace }}
{{- else }}
{{- include "spec-exporter.mixinExporterJobSelector" . }}
{{- end }}
{{- end }}

{{/*
The exporter endpoint's relabelings: its `job` first, then the user's monitor.relabelings.
*/}}
{{- define "spec-exporter.exporterRelabelings" -}}
relabelings:
  - action: replace
    targetLabel: job
    replacement: {{ include "spec-exporter.exporterJob" . }}
  {{- with .Values.monitor.relabelings }}
  {{- toYaml . | nindent 2 }}
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

{{/*
The vLLM container's environment with tap.mode middleware: PYTHONPATH with the middleware's directory first (a
PYTHONPATH `value` in vllm.env keeps its entries after it), and the middleware's settings from exporter.config.tap
(the proxy tap's settings, with the same defaults), unless vllm.env sets them itself. A YAML EnvVar list.
*/}}
{{- define "spec-exporter.middlewareEnv" -}}
{{- $user := dict }}
{{- range .Values.vllm.env }}
{{- $_ := set $user .name . }}
{{- end }}
{{- $path := include "spec-exporter.middlewarePath" . }}
{{- with get $user "PYTHONPATH" }}
{{- if not (hasKey . "value") }}
{{- fail "vllm.env: PYTHONPATH must be a plain value with tap.mode middleware (the chart puts the middleware's directory in front of it); valueFrom cannot be extended" }}
{{- end }}
{{- if .value }}
{{- $path = printf "%s:%s" $path .value }}
{{- end }}
{{- end }}
{{- /* Only what the values set: every default lives in TapSettings, read by the middleware itself. */}}
{{- $tap := .Values.exporter.config.tap | default dict }}
{{- $settings := dict }}
{{- range $key, $value := $tap }}
{{- if not (has $key (list "listen_address" "target" "upstream_url")) }}
{{- $env := printf "SPEC_EXPORTER_TAP_%s" (upper $key) }}
{{- if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}{{ $items = append $items (toString .) }}{{ end }}
{{- $_ := set $settings $env (join "," $items) }}
{{- else if eq $key "max_inspect_bytes" }}
{{- $_ := set $settings $env (include "spec-exporter.bytes" $value) }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $settings $env (toString $value) }}
{{- end }}
{{- end }}
{{- end }}
- name: PYTHONPATH
  value: {{ $path | quote }}
{{- range $name := keys $settings | sortAlpha }}
{{- if not (hasKey $user $name) }}
- name: {{ $name }}
  value: {{ get $settings $name | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A lifecycle with a preStop that runs `command` when it has seconds to wait, else nothing; (list seconds command).
An exec sleep, not the kubelet's sleep action, which Kubernetes before 1.30 does not have.
*/}}
{{- define "spec-exporter.preStop" -}}
{{- if gt (int (index . 0)) 0 }}
preStop:
  exec:
    command: {{ index . 1 | toJson }}
{{- end }}
{{- end }}

{{/*
An exporter probe as exporter.webConfig needs it. With TLS the kubelet's HTTP check uses HTTPS (it
does not verify certificates). With basic authentication it has no password to send: /healthz, which the exporter
serves without authentication, stays an HTTP check; any other becomes a TCP check of the exporter's port (of the
proxy tap's, for readiness with tap.mode proxy).
(list . probe readiness)
*/}}
{{- define "spec-exporter.exporterProbe" -}}
{{- $root := index . 0 }}
{{- $probe := deepCopy (index . 1) }}
{{- $readiness := index . 2 }}
{{- $web := $root.Values.exporter.webConfig }}
{{- if and $web.secretName $probe.httpGet }}
{{- if and $web.basicAuth (ne $probe.httpGet.path "/healthz") }}
{{- /* Readiness then checks what the pod serves through the exporter: the proxy tap's port. */}}
{{- $port := ternary "tap" $probe.httpGet.port (and $readiness (eq (include "spec-exporter.tap" $root) "true")) }}
{{- $_ := set $probe "tcpSocket" (dict "port" $port) }}
{{- $_ := unset $probe "httpGet" }}
{{- else if $web.tls }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
How the exporter's endpoint is scraped when exporter.webConfig protects it: scheme, TLS settings and basic-auth
credentials, shared by the ServiceMonitor and the PodMonitor. vLLM's own endpoint is not affected.
*/}}
{{- define "spec-exporter.exporterScrapeAuth" -}}
{{- $web := .Values.exporter.webConfig }}
{{- $scheme := .Values.monitor.scheme | default (ternary "https" "http" (and (not (empty $web.secretName)) $web.tls)) }}
{{- if eq $scheme "https" }}
scheme: https
{{- end }}
{{- with .Values.monitor.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.monitor.basicAuth }}
basicAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
