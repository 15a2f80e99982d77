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

{{/* infergate.image: "<repository>:<tag>", the tag defaulting to the chart's appVersion (dict root, image).
With global.imageRegistry the repository's own registry (ghcr.io, docker.io, a first part with a dot, a colon
or localhost) is replaced by it: a mirror holds the images under the same paths. */}}
{{- define "infergate.image" -}}
{{- $repository := .image.repository }}
{{- with dig "imageRegistry" "" (.root.Values.global | default dict) }}
{{- $parts := splitList "/" $repository }}
{{- if and (gt (len $parts) 1) (or (contains "." (first $parts)) (contains ":" (first $parts)) (eq (first $parts) "localhost")) }}
{{- $parts = rest $parts }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (join "/" $parts) }}
{{- end }}
{{- printf "%s:%s" $repository (toString (default .root.Chart.AppVersion .image.tag)) }}
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

{{/* infergate.runtimeKey: the `runtimes` entry a model runs with: huggingface, tabular, or vllm for auto and vllm. */}}
{{- define "infergate.runtimeKey" -}}
{{- $runtime := default "auto" .runtime }}
{{- if has $runtime (list "huggingface" "tabular") }}{{ $runtime }}{{ else }}vllm{{ end }}
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

{{/* infergate.imagePullSecrets: the imagePullSecrets block of a pod, from global.imagePullSecrets and imagePullSecrets (names or {name} entries). */}}
{{- define "infergate.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat (dig "imagePullSecrets" list (.Values.global | default dict)) (.Values.imagePullSecrets | default list) }}
{{- if kindIs "string" . }}
{{- $secrets = append $secrets (dict "name" .) }}
{{- else }}
{{- $secrets = append $secrets . }}
{{- end }}
{{- end }}
{{- with $secrets | uniq }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* infergate.gpuCount: the nvidia.com/gpu a resources object asks for (limits, else requests), 0 when none. */}}
{{- define "infergate.gpuCount" -}}
{{- $limits := .limits | default dict }}
{{- $requests := .requests | default dict }}
{{- int (get $limits "nvidia.com/gpu" | default (get $requests "nvidia.com/gpu") | default 0) }}
{{- end }}

{{/* infergate.workerPod: a model's pod settings merged over its runtime's defaults, as YAML (dict root, name, model).
Maps (resources, nodeSelector, affinity, podAnnotations, env, cache) merge key by key, the model winning, so a
model that sets only memory keeps the runtime's GPU; lists (tolerations, extraEnv, extraVolumes,
extraVolumeMounts, initContainers) are the runtime's followed by the model's. */}}
{{- define "infergate.workerPod" -}}
{{- $model := .model }}
{{- $runtime := get .root.Values.runtimes (include "infergate.runtimeKey" $model) }}
{{- $merged := dict }}
{{- range $key := list "resources" "nodeSelector" "affinity" "podAnnotations" "env" "cache" }}
{{- $_ := set $merged $key (mustMergeOverwrite (deepCopy (get $runtime $key | default dict)) (deepCopy (get $model $key | default dict))) }}
{{- end }}
{{- range $key := list "tolerations" "extraEnv" "extraVolumes" "extraVolumeMounts" "initContainers" }}
{{- $_ := set $merged $key (concat (get $runtime $key | default list) (get $model $key | default list) | uniq) }}
{{- end }}
{{- range $key := list "shmSize" "runtimeClassName" "priorityClassName" "drainSeconds" }}
{{- $_ := set $merged $key (ternary (get $model $key) (get $runtime $key) (hasKey $model $key)) }}
{{- end }}
{{- $_ := set $merged "drainSeconds" (int ($merged.drainSeconds | default 60)) }}
{{- $cache := $merged.cache }}
{{- $_ := set $cache "type" ($cache.type | default "emptyDir") }}
{{- /* An emptyDir cache counts against the node's ephemeral storage: ask for it, so the pod lands where it fits. */}}
{{- if eq $cache.type "emptyDir" }}
{{- $requests := $merged.resources.requests | default dict }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" $cache.size }}
{{- end }}
{{- $_ := set $merged.resources "requests" $requests }}
{{- end }}
{{- $gpus := include "infergate.gpuCount" $merged.resources | int }}
{{- $_ := set $merged "gpus" $gpus }}
{{- /* A model that asks for a GPU pulls the runtime's CUDA build (worker-hf: the "-cuda" tag). */}}
{{- $image := deepCopy $runtime.image }}
{{- if and $gpus $image.gpuTagSuffix }}
{{- $_ := set $image "tag" (printf "%s%s" (toString (default .root.Chart.AppVersion $image.tag)) $image.gpuTagSuffix) }}
{{- end }}
{{- $_ := unset $image "gpuTagSuffix" }}
{{- $_ := set $merged "image" $image }}
{{- if $model.strategy }}
{{- $_ := set $merged "strategy" $model.strategy }}
{{- else if $gpus }}
{{- $_ := set $merged "strategy" (dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 0 "maxUnavailable" 1)) }}
{{- end }}
{{- toYaml $merged }}
{{- end }}

{{/* infergate.storageUri: how a model's storageUri is reached, as YAML {kind, download, claim, subPath} (dict root, name, model):
s3://, gs://, hf://, https:// are downloaded by the storage initializer; pvc://<claim>/<path> is mounted. */}}
{{- define "infergate.storageUri" -}}
{{- with .model.storageUri }}
{{- $scheme := regexFind "^[a-z0-9]+://" . | trimSuffix "://" }}
{{- if eq $scheme "pvc" }}
{{- $rest := trimPrefix "pvc://" . }}
{{- $parts := splitList "/" $rest }}
kind: pvc
download: false
claim: {{ first $parts | quote }}
subPath: {{ rest $parts | join "/" | quote }}
{{- else if has $scheme (list "s3" "gs" "hf" "https" "http") }}
kind: {{ $scheme }}
download: true
{{- else }}
{{- fail (printf "models.%s.storageUri %q: the scheme must be s3://, gs://, hf://, https:// or pvc://" $.name .) }}
{{- end }}
{{- else }}
kind: ""
download: false
{{- end }}
{{- end }}
