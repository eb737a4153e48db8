{{/*
Chart name, truncated to the 63 characters Kubernetes allows in a label value.
*/}}
{{- define "openfinance-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart, or just the release name when it already holds the
chart name.
*/}}
{{- define "openfinance-exporter.fullname" -}}
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

{{- define "openfinance-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "openfinance-exporter.labels" -}}
helm.sh/chart: {{ include "openfinance-exporter.chart" . }}
{{ include "openfinance-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openfinance-exporter
{{- end }}

{{/*
Selector labels: stable for the life of a release.
*/}}
{{- define "openfinance-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openfinance-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openfinance-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "openfinance-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "openfinance-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the credentials, or "" when there is none. */}}
{{- define "openfinance-exporter.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.credentials }}
{{- include "openfinance-exporter.fullname" . }}
{{- end }}
{{- end }}

{{/* Mount points inside the container. */}}
{{- define "openfinance-exporter.configDir" -}}/etc/openfinance-exporter{{- end }}
{{- define "openfinance-exporter.secretDir" -}}/var/run/secrets/openfinance-exporter{{- end }}
{{- define "openfinance-exporter.stateDir" -}}/var/lib/openfinance-exporter{{- end }}

{{/* Secret fields by provider (exporter/config.py: secret_fields()). */}}
{{- define "openfinance-exporter.secretFields" -}}
{"finicity": ["app_key", "partner_secret"], "mx": ["api_key"]}
{{- end }}

{{/*
The agent's config.yml: .Values.config plus the paths the chart owns (state file, listen
address) and, for every secret the chart mounts, the matching `<field>_file`.
*/}}
{{- define "openfinance-exporter.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $fields := include "openfinance-exporter.secretFields" . | fromJson }}
{{- $state := $cfg.state | default dict }}
{{- $_ := set $state "path" (printf "%s/state.db" (include "openfinance-exporter.stateDir" .)) }}
{{- $_ := set $cfg "state" $state }}
{{- $web := $cfg.web | default dict }}
{{- $_ := set $web "listen_address" (printf ":%d" (int .Values.service.port)) }}
{{- $_ := set $cfg "web" $web }}
{{- if .Values.webhooks.enabled }}
{{- $hooks := $cfg.webhooks | default dict }}
{{- $_ := set $hooks "listen_address" (printf ":%d" (int .Values.webhooks.port)) }}
{{- $_ := set $cfg "webhooks" $hooks }}
{{- else }}
{{- $_ := unset $cfg "webhooks" }}
{{- end }}
{{- $names := list }}
{{- range $src := $cfg.sources | default list }}
{{- $names = append $names $src.name }}
{{- $given := dict }}
{{- if not $.Values.existingSecret }}
{{- $given = index $.Values.credentials $src.name | default dict }}
{{- end }}
{{- range $field := index $fields $src.provider }}
{{- if or $.Values.existingSecret (hasKey $given $field) }}
{{- if not (hasKey $src (printf "%s_file" $field)) }}
{{- $_ := set $src (printf "%s_file" $field) (printf "%s/%s.%s" (include "openfinance-exporter.secretDir" $) $src.name $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $field, $_ := $given }}
{{- if not (has $field (index $fields $src.provider)) }}
{{- fail (printf "credentials.%s.%s: a %s source takes only %s" $src.name $field $src.provider (join ", " (index $fields $src.provider))) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- range $name, $_ := .Values.credentials }}
{{- if not (has $name $names) }}
{{- fail (printf "credentials.%s: no source named %q in config.sources" $name $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Path of the metrics endpoint. */}}
{{- define "openfinance-exporter.telemetryPath" -}}
{{- $web := .Values.config.web | default dict }}
{{- $web.telemetry_path | default "/metrics" }}
{{- end }}
