{{/*
The label app.kubernetes.io/name, the ConfigMap's name and the prefix of the
roles: custom-metrics-adapter, as in manifests/adapter.
*/}}
{{- define "custom-metrics-adapter.name" -}}
{{- default "custom-metrics-adapter" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Deployment's, Service's, ServiceAccount's, PDB's and Secret's name:
custom-metrics-apiserver, as in manifests/adapter. It does not depend on the
release name: the APIServices are cluster-wide singletons anyway.
*/}}
{{- define "custom-metrics-adapter.fullname" -}}
{{- default "custom-metrics-apiserver" .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "custom-metrics-adapter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "custom-metrics-adapter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The role bindings' subjects: the adapter's ServiceAccount. */}}
{{- define "custom-metrics-adapter.subjects" }}
- kind: ServiceAccount
  name: {{ include "custom-metrics-adapter.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* The serving certificate's Secret. */}}
{{- define "custom-metrics-adapter.tlsSecretName" -}}
{{- include "custom-metrics-adapter.fullname" . }}-tls
{{- end }}

{{- define "custom-metrics-adapter.configMapName" -}}
{{- .Values.rules.existing | default (printf "%s-config" (include "custom-metrics-adapter.name" .)) }}
{{- end }}

{{/* Labels on every object: Helm's own (none of them in manifests/adapter). */}}
{{- define "custom-metrics-adapter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The pods' labels and the Deployment's, Service's and PDB's selector. */}}
{{- define "custom-metrics-adapter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "custom-metrics-adapter.name" . }}
{{- end }}

{{/* --prometheus-url: url (templated), :port when set, path. */}}
{{- define "custom-metrics-adapter.prometheusURL" -}}
{{- $url := tpl (required "prometheus.url is required" .Values.prometheus.url) . | trimSuffix "/" }}
{{- if .Values.prometheus.port }}
{{- $url = printf "%s:%v" $url .Values.prometheus.port }}
{{- end }}
{{- printf "%s%s" $url (.Values.prometheus.path | default "") }}
{{- end }}

{{/*
Whether an API is on: "true" or "". custom: apiServices.custom.enabled.
external, resource: apiServices.<api>.enabled, or when it is empty (null)
whether rules.<api> is set, as prometheus-adapter's chart decides.
Call with (list . "external").
*/}}
{{- define "custom-metrics-adapter.apiEnabled" -}}
{{- $root := index . 0 }}
{{- $api := index . 1 }}
{{- $enabled := (index $root.Values.apiServices $api).enabled }}
{{- if kindIs "invalid" $enabled }}
{{- if and (ne $api "custom") (not $root.Values.rules.existing) (index $root.Values.rules $api) }}true{{ end }}
{{- else if $enabled }}true
{{- end }}
{{- end }}

{{/* An APIService's labels and, with cert-manager, its CA injection. */}}
{{- define "custom-metrics-adapter.apiServiceMetadata" -}}
labels:
  {{- include "custom-metrics-adapter.labels" . | nindent 2 }}
{{- if .Values.certManager.enabled }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "custom-metrics-adapter.tlsSecretName" .) }}
{{- end }}
{{- end }}

{{/*
The rules file. With rules.default alone it is files/config.yaml as it is
(comments and all); otherwise the sections are merged: rules.custom appended
to rules, rules.external to externalRules, rules.resource replacing
resourceRules.
*/}}
{{- define "custom-metrics-adapter.config" -}}
{{- $r := .Values.rules }}
{{- $builtIn := .Files.Get "files/config.yaml" }}
{{- if and $r.default (not $r.custom) (not $r.external) (not $r.resource) (not $r.backends) }}
{{- $builtIn }}
{{- else }}
{{- $cfg := dict }}
{{- if $r.default }}
{{- $cfg = $builtIn | fromYaml }}
{{- end }}
{{- $out := dict }}
{{- if $r.backends }}{{ $_ := set $out "backends" $r.backends }}{{ end }}
{{- $rules := concat ($cfg.rules | default list) ($r.custom | default list) }}
{{- if $rules }}{{ $_ := set $out "rules" $rules }}{{ end }}
{{- $external := concat ($cfg.externalRules | default list) ($r.external | default list) }}
{{- if $external }}{{ $_ := set $out "externalRules" $external }}{{ end }}
{{- $resource := $r.resource | default $cfg.resourceRules }}
{{- if $resource }}{{ $_ := set $out "resourceRules" $resource }}{{ end }}
{{- if not (omit $out "backends") }}
{{- fail "rules: no rules at all: set rules.default, rules.custom, rules.external or rules.resource, or rules.existing" }}
{{- end }}
{{- toYaml $out }}
{{- end }}
{{- end }}

{{/* Settings that contradict each other fail the render. */}}
{{- define "custom-metrics-adapter.validate" -}}
{{- if and .Values.tls.enable .Values.certManager.enabled }}
{{- fail "tls.enable and certManager.enabled exclude each other: one of them provides the serving certificate" }}
{{- end }}
{{- if .Values.tls.enable }}
{{- range $k := list "ca" "certificate" "key" }}
{{- if not (index $.Values.tls $k) }}
{{- fail (printf "tls.enable needs tls.%s (PEM)" $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (or (include "custom-metrics-adapter.apiEnabled" (list . "custom")) (include "custom-metrics-adapter.apiEnabled" (list . "external")) (include "custom-metrics-adapter.apiEnabled" (list . "resource"))) }}
{{- fail "apiServices: custom, external and resource are all off: the adapter would serve nothing" }}
{{- end }}
{{- end }}
