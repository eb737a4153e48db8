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
{{- if and (include "openfinance-exporter.forwards" .) (not (hasKey $hooks "peers")) }}
{{- /* Every pod's webhook listener by ordinal, through the headless Service: an event for another shard's owner is forwarded to its pod. */}}
{{- $peers := list }}
{{- $name := include "openfinance-exporter.fullname" . }}
{{- range $i := until (int .Values.replicaCount) }}
{{- $peers = append $peers (printf "http://%s-%d.%s.%s.svc:%d" $name $i (include "openfinance-exporter.headlessName" $) $.Release.Namespace (int $.Values.webhooks.port)) }}
{{- end }}
{{- $_ := set $hooks "peers" $peers }}
{{- end }}
{{- $_ := set $cfg "webhooks" $hooks }}
{{- else }}
{{- $_ := unset $cfg "webhooks" }}
{{- end }}
{{- /* The agent's health thresholds are the rules' parameters: set them once, in prometheusRule.params. */}}
{{- $ruleParams := merge (deepCopy (.Values.prometheusRule.params | default dict)) (.Files.Get "files/params.yml" | fromYaml) }}
{{- $health := $cfg.health | default dict }}
{{- $shared := dict "min_accounts" "health_min_accounts" "degraded_below" "health_degraded_below" "down_below" "health_down_below" "refresh_delayed_after" "refresh_delayed_after_seconds" "refresh_stopped_after" "refresh_stopped_after_seconds" }}
{{- range $key, $param := $shared }}
{{- $value := index $ruleParams $param }}
{{- if and (hasKey $health $key) (ne (toString (index $health $key)) (toString $value)) }}
{{- fail (printf "config.health.%s (%v) differs from prometheusRule.params.%s (%v): set it once, in prometheusRule.params (the chart copies it into the agent's config)" $key (index $health $key) $param $value) }}
{{- end }}
{{- $_ := set $health $key $value }}
{{- end }}
{{- $_ := set $cfg "health" $health }}
{{- $names := list }}
{{- $sharded := include "openfinance-exporter.sharded" . }}
{{- range $i, $src := $cfg.sources | default list }}
{{- $names = append $names $src.name }}
{{- if $sharded }}
{{- if hasKey $src "shard" }}
{{- fail (printf "config.sources[%d].shard: leave it out with shard.index: auto (the chart sets it for every source)" $i) }}
{{- end }}
{{- $_ := set $src "shard" (dict "index" "auto" "count" (int $.Values.replicaCount)) }}
{{- end }}
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

{{/* "true" when the pods shard the fleet by their StatefulSet ordinal, else "". */}}
{{- define "openfinance-exporter.sharded" -}}
{{- if eq (toString .Values.shard.index) "auto" }}
{{- $count := int .Values.shard.count }}
{{- if and $count (ne $count (int .Values.replicaCount)) }}
{{- fail (printf "shard.count (%d) must equal replicaCount (%d), or be 0: each pod is one shard" $count (int .Values.replicaCount)) }}
{{- end }}
{{- if lt (int .Values.replicaCount) 1 }}
{{- fail "shard.index: auto needs replicaCount >= 1" }}
{{- end }}
{{- print "true" }}
{{- end }}
{{- end }}

{{/* "true" when the pods forward webhooks to each other (sharded, more than one pod, webhooks on). */}}
{{- define "openfinance-exporter.forwards" -}}
{{- if and .Values.webhooks.enabled (include "openfinance-exporter.sharded" .) (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The headless Service that gives a sharded StatefulSet's pods their DNS names
(<fullname>-<ordinal>.<this>.<namespace>.svc): its serviceName. */}}
{{- define "openfinance-exporter.headlessName" -}}
{{- include "openfinance-exporter.fullname" . }}-headless
{{- end }}

{{/* A StatefulSet (persistence or sharding: stable pod names and per-pod claims) or a Deployment. */}}
{{- define "openfinance-exporter.kind" -}}
{{- if or .Values.persistence.enabled (include "openfinance-exporter.sharded" .) }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/* The web config: its Secret's name ("" when there is none) and where it is mounted. */}}
{{- define "openfinance-exporter.webConfigSecret" -}}
{{- if and .Values.webConfig.existingSecret .Values.webConfig.config }}
{{- fail "webConfig: set config or existingSecret, not both" }}
{{- end }}
{{- if .Values.webConfig.existingSecret }}
{{- .Values.webConfig.existingSecret }}
{{- else if .Values.webConfig.config }}
{{- printf "%s-web-config" (include "openfinance-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- define "openfinance-exporter.webDir" -}}/etc/openfinance-exporter/web{{- end }}

{{/* http or https: webConfig.scheme, else https when the web config in values sets up TLS. */}}
{{- define "openfinance-exporter.scheme" -}}
{{- if .Values.webConfig.scheme }}
{{- .Values.webConfig.scheme }}
{{- else if and (not .Values.webConfig.existingSecret) .Values.webConfig.config.tls_server_config }}
{{- print "https" }}
{{- else }}
{{- print "http" }}
{{- end }}
{{- end }}

{{/* The client_auth_type of the web config in values ("" when none). */}}
{{- define "openfinance-exporter.clientAuth" -}}
{{- $tls := .Values.webConfig.config.tls_server_config | default dict }}
{{- if not .Values.webConfig.existingSecret }}{{ $tls.client_auth_type | default "" }}{{ end }}
{{- end }}

{{/* httpGet or tcpSocket probes. */}}
{{- define "openfinance-exporter.probeType" -}}
{{- if .Values.webConfig.probeType }}
{{- .Values.webConfig.probeType }}
{{- else if has (include "openfinance-exporter.clientAuth" .) (list "RequireAnyClientCert" "RequireClientCert" "RequireAndVerifyClientCert") }}
{{- print "tcpSocket" }}
{{- else }}
{{- print "httpGet" }}
{{- end }}
{{- end }}

{{/* The probe handler for `path`: (dict "root" $ "path" "/-/ready"). */}}
{{- define "openfinance-exporter.probeHandler" -}}
{{- if eq (include "openfinance-exporter.probeType" .root) "tcpSocket" }}
tcpSocket:
  port: http
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
  {{- if eq (include "openfinance-exporter.scheme" .root) "https" }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}
