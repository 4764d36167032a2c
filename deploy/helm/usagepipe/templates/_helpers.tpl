{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "usagepipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release already has the chart name. */}}
{{- define "usagepipe.fullname" -}}
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

{{- define "usagepipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "usagepipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "usagepipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "usagepipe.labels" -}}
helm.sh/chart: {{ include "usagepipe.chart" . }}
{{ include "usagepipe.selectorLabels" . }}
app.kubernetes.io/version: {{ include "usagepipe.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: pipeline
{{- end }}

{{- define "usagepipe.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "usagepipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "usagepipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where secrets are mounted. Only these paths reach the process (as *_FILE settings). */}}
{{- define "usagepipe.secretDir" -}}/etc/usagepipe{{- end }}

{{/*
Fails the render on combinations that would start a pipeline that cannot
connect, instead of letting it crash-loop.
*/}}
{{- define "usagepipe.validate" -}}
{{- $sasl := .Values.kafka.sasl }}
{{- if $sasl.mechanism }}
{{- if not (has $sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) }}
{{- fail (printf "kafka.sasl.mechanism: %q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" $sasl.mechanism) }}
{{- end }}
{{- if not $sasl.user }}
{{- fail "kafka.sasl.user is required when kafka.sasl.mechanism is set" }}
{{- end }}
{{- if not $sasl.passwordSecret.name }}
{{- fail "kafka.sasl.passwordSecret.name is required when kafka.sasl.mechanism is set" }}
{{- end }}
{{- if and (eq $sasl.mechanism "PLAIN") (not .Values.kafka.tls.enabled) }}
{{- fail "kafka.sasl.mechanism PLAIN sends the password in clear text: enable kafka.tls" }}
{{- end }}
{{- end }}
{{- $tls := .Values.kafka.tls }}
{{- if or $tls.certKey $tls.keyKey }}
{{- if not (and $tls.certKey $tls.keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS needs both)" }}
{{- end }}
{{- if not $tls.secretName }}
{{- fail "kafka.tls.secretName is required for a client certificate (kafka.tls.certKey)" }}
{{- end }}
{{- end }}
{{- if and .Values.clickhouse.tls.caSecretName (not .Values.clickhouse.tls.enabled) }}
{{- fail "clickhouse.tls.caSecretName is set but clickhouse.tls.enabled is false" }}
{{- end }}
{{- if and $tls.secretName (not $tls.enabled) }}
{{- fail "kafka.tls.secretName is set but kafka.tls.enabled is false" }}
{{- end }}
{{- end }}
