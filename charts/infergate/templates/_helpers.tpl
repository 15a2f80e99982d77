{{/*
Helpers of the infergate chart. Every name is prefixed with the chart name.
Helpers that need more than the root context take a dict:
  (dict "root" $ "component" "router")              labels, selectors
  (dict "root" $ "name" $name "model" $model)       worker helpers
*/}}

{{/* infergate.name: the chart name, or nameOverride. */}}
{{- define "infergate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* infergate.fullname: "<release>-<chart>" (or the release name when it already holds the chart name), at most 40 characters so that suffixed names stay valid. */}}
{{- define "infergate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* infergate.chart: "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "infergate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* infergate.selectorLabels: the labels a component's selectors match (dict root, component, optional model). */}}
{{- define "infergate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infergate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .model }}
infergate.io/model: {{ .model }}
{{- end }}
{{- end }}

{{/* infergate.labels: the recommended app.kubernetes.io labels plus component (dict root, component, optional model). */}}
{{- define "infergate.labels" -}}
{{ include "infergate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "infergate.name" .root }}
helm.sh/chart: {{ include "infergate.chart" .root }}
{{- end }}

{{/* infergate.image: "<repository>:<tag>", the tag defaulting to the chart's appVersion (dict root, image). */}}
{{- define "infergate.image" -}}
{{- printf "%s:%s" .image.repository (toString (default .root.Chart.AppVersion .image.tag)) }}
{{- end }}

{{/* infergate.serviceAccountName: the account every pod runs as. */}}
{{- define "infergate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "infergate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* infergate.routerName: the router's Deployment and Service name. */}}
{{- define "infergate.routerName" -}}
{{- printf "%s-router" (include "infergate.fullname" .) }}
{{- end }}

{{/* infergate.registryName: the registry's Deployment and Service name. */}}
{{- define "infergate.registryName" -}}
{{- printf "%s-registry" (include "infergate.fullname" .) }}
{{- end }}

{{/* infergate.redisName: the bundled Redis StatefulSet and Service name. */}}
{{- define "infergate.redisName" -}}
{{- printf "%s-redis" (include "infergate.fullname" .) }}
{{- end }}

{{/* infergate.registryUrl: the registry as the router and the workers reach it. */}}
{{- define "infergate.registryUrl" -}}
{{- printf "http://%s:%d" (include "infergate.registryName" .) (int .Values.registry.port) }}
{{- end }}

{{/* infergate.internalSecretName: the Secret the chart generates (internal token, admin token, Redis password). */}}
{{- define "infergate.internalSecretName" -}}
{{- printf "%s-internal" (include "infergate.fullname" .) }}
{{- end }}

{{/* infergate.internalTokenEnv: INFERGATE_INTERNAL_TOKEN, the credential the services present to each other. */}}
{{- define "infergate.internalTokenEnv" -}}
- name: INFERGATE_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "infergate.internalSecretName" . }}
      key: internal-token
{{- end }}

{{/* infergate.checkAuth: fails the rendering when the router is published without API keys (unless allowAnonymous). */}}
{{- define "infergate.checkAuth" -}}
{{- $published := or .Values.router.ingress.enabled .Values.router.httpRoute.enabled }}
{{- $auth := .Values.router.auth }}
{{- $keys := or .Values.router.apiKeys .Values.router.apiKeysSecret.name $auth.keys $auth.existingSecret $auth.adminKeys }}
{{- if and $published (not $keys) (not $auth.allowAnonymous) }}
{{- fail "the router is published (router.ingress or router.httpRoute) without API keys: set router.auth.keys, router.auth.existingSecret or router.auth.adminKeys, or router.auth.allowAnonymous=true to publish it open on purpose" }}
{{- end }}
{{- end }}

{{/* infergate.redisUrlEnv: the INFERGATE_REDIS_URL env entry, from the bundled Redis (with its generated password), the external URL or its secret. */}}
{{- define "infergate.redisUrlEnv" -}}
{{- if .Values.redis.enabled }}
- name: INFERGATE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "infergate.internalSecretName" . }}
      key: redis-password
{{- end }}
- name: INFERGATE_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://:$(INFERGATE_REDIS_PASSWORD)@%s:6379/0" (include "infergate.redisName" .) | quote }}
{{- else if .Values.redis.external.urlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.urlSecret.name }}
      key: {{ .Values.redis.external.urlSecret.key }}
{{- else }}
  value: {{ required "redis.external.url (or redis.external.urlSecret.name) is required when redis.enabled is false" .Values.redis.external.url | quote }}
{{- end }}
{{- end }}

{{/* infergate.workerName: the Deployment and Service name of a model's workers (dict root, name). */}}
{{- define "infergate.workerName" -}}
{{- printf "%s-worker-%s" (include "infergate.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* infergate.runtimeKey: the `runtimes` entry a model runs with: huggingface, or vllm for auto and vllm. */}}
{{- define "infergate.runtimeKey" -}}
{{- if eq (default "auto" .runtime) "huggingface" }}huggingface{{ else }}vllm{{ end }}
{{- end }}

{{/* infergate.modelDomains: the global domains plus the model's own, as a JSON list (dict root, model). */}}
{{- define "infergate.modelDomains" -}}
{{- concat (.root.Values.domains | default list) (.model.domains | default list) | uniq | toJson }}
{{- end }}

{{/* infergate.modelHosts: every host name of a model, <name>.<domain> for each domain plus its own hosts, as a JSON list (dict root, name, model). */}}
{{- define "infergate.modelHosts" -}}
{{- $hosts := list }}
{{- range (include "infergate.modelDomains" . | fromJsonArray) }}
{{- $hosts = append $hosts (printf "%s.%s" $.name .) }}
{{- end }}
{{- concat $hosts (.model.hosts | default list) | uniq | toJson }}
{{- end }}

{{/* infergate.publicHosts: the router's own host (when set) and every model's hosts, as a JSON list. */}}
{{- define "infergate.publicHosts" -}}
{{- $hosts := list }}
{{- with .Values.router.ingress.host }}
{{- $hosts = append $hosts . }}
{{- end }}
{{- range $name, $model := .Values.models }}
{{- $hosts = concat $hosts (include "infergate.modelHosts" (dict "root" $ "name" $name "model" $model) | fromJsonArray) }}
{{- end }}
{{- $hosts | uniq | toJson }}
{{- end }}

{{/* infergate.gatewayApi: "true" when the HTTPRoute replaces the Ingress. */}}
{{- define "infergate.gatewayApi" -}}
{{- if and .Values.router.httpRoute.enabled (.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1") }}true{{ end }}
{{- end }}

{{/* infergate.autoscaled: "true" when a HorizontalPodAutoscaler or a ScaledObject owns the model's replica count (dict root, model). */}}
{{- define "infergate.autoscaled" -}}
{{- $hpa := and (dig "autoscaling" "enabled" false .model) (.root.Capabilities.APIVersions.Has "autoscaling/v2") }}
{{- $keda := and (dig "keda" "enabled" false .model) (.root.Capabilities.APIVersions.Has "keda.sh/v1alpha1") }}
{{- if or $hpa $keda }}true{{ end }}
{{- end }}

{{/* infergate.routerConfigEnv: router.config as INFERGATE_<UPPER_SNAKE> keys. */}}
{{- define "infergate.routerConfigEnv" -}}
{{- range $key, $value := .Values.router.config }}
{{- /* YAML numbers arrive as floats: 8388608 would print as 8.388608e+06. */}}
{{- $text := toString $value }}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $text = int64 $value | toString }}
{{- end }}
{{ printf "INFERGATE_%s" ($key | snakecase | upper) }}: {{ $text | quote }}
{{- end }}
{{- end }}

{{/* infergate.notesCurl: the curl commands and OpenAI base_url of NOTES.txt (dict root, base). */}}
{{- define "infergate.notesCurl" -}}
{{- $auth := "" }}
{{- if or .root.Values.router.apiKeys .root.Values.router.apiKeysSecret.name }}
{{- $auth = " -H \"Authorization: Bearer $INFERGATE_API_KEY\"" }}
{{- $secret := .root.Values.router.apiKeysSecret.name | default (include "infergate.routerName" .root) }}

The router wants an API key:

  export INFERGATE_API_KEY=$(kubectl get secret -n {{ .root.Release.Namespace }} {{ $secret }} -o jsonpath='{.data.{{ .root.Values.router.apiKeysSecret.key }}}' | base64 -d | cut -d, -f1)
{{- else if not .root.Values.router.auth.allowAnonymous }}
{{- $auth = " -H \"Authorization: Bearer $INFERGATE_API_KEY\"" }}

The router wants an API key (docs/security.md). Make one with the registry's admin API:

  export INFERGATE_API_KEY=$(kubectl exec -n {{ .root.Release.Namespace }} deploy/{{ include "infergate.routerName" .root }} -- \
    env INFERGATE_ADMIN_TOKEN="$(kubectl get secret -n {{ .root.Release.Namespace }} {{ include "infergate.internalSecretName" .root }} -o jsonpath='{.data.admin-token}' | base64 -d)" \
    python -m infergate_router.keys --registry_url {{ include "infergate.registryUrl" .root }} create --name me | head -1)
{{- end }}

  curl{{ $auth }} {{ .base }}/openai/v1/models
{{- range $name, $model := .root.Values.models }}
{{- if eq $name (first (keys $.root.Values.models | sortAlpha)) }}
  curl{{ $auth }} {{ $.base }}/v1/models/{{ $name }}

A chat model answers the OpenAI API:

  curl{{ $auth }} {{ $.base }}/openai/v1/chat/completions -H "Content-Type: application/json" \
    -d '{"model": "{{ $name }}", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'
{{- end }}
{{- end }}

OpenAI SDK, LangChain ChatOpenAI, LlamaIndex OpenAILike:

  base_url="{{ .base }}/openai/v1"
{{- end }}
