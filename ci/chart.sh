#!/usr/bin/env bash
# `make chart` (and part of `make test`): lint charts/infergate, render the
# defaults and every example through kubernetes-validate --strict, check that
# the schema rejects bad values, dry-run an install, then the pytest checks of
# the rendered manifests. Offline: helm comes from ci/helm.sh.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# kubernetes-validate and pytest live in .venv (ci/requirements.txt).
bash "$ROOT/ci/setup.sh"
CHART="$ROOT/charts/infergate"
HELM="$(bash "$ROOT/ci/helm.sh")"
VALIDATE="$VENV/bin/kubernetes-validate"
say "chart: $("$HELM" version --short)"

# The optional resources render only when the cluster has their API; this
# set turns all of them on, as a cluster with every add-on would.
ALL_APIS=(--api-versions monitoring.coreos.com/v1 --api-versions keda.sh/v1alpha1
    --api-versions gateway.networking.k8s.io/v1)
EVERYTHING=(--set networkPolicy.enabled=true --set router.httpRoute.enabled=true
    --set "router.httpRoute.parentRefs[0].name=gateway")

# The defaults publish the router through an Ingress, which needs API keys:
# rendered here with keys made through the admin API (and refused without, below).
DEFAULT_KEYS=(--set router.auth.adminKeys=true)
values_sets=("defaults:")
for example in "$CHART"/examples/*.yaml; do
    values_sets+=("$(basename "$example" .yaml):$example")
done

RENDERED="$(mktemp -d)"
trap 'rm -rf "$RENDERED"' EXIT
for entry in "${values_sets[@]}"; do
    name="${entry%%:*}"
    file="${entry#*:}"
    args=("${DEFAULT_KEYS[@]}")
    [ -n "$file" ] && args=(-f "$file")
    say "chart: lint + render $name"
    "$HELM" lint --strict --quiet "$CHART" "${args[@]}"
    "$HELM" template infergate "$CHART" "${args[@]}" >"$RENDERED/$name.yaml"
    "$HELM" template infergate "$CHART" "${args[@]}" "${ALL_APIS[@]}" "${EVERYTHING[@]}" \
        >"$RENDERED/$name-all-apis.yaml"
done
# Every add-on resource at once: a model autoscaled by KEDA on each metric,
# Ingress domain groups, a cache claim, a storageUri download.
say "chart: render every add-on"
"$HELM" template infergate "$CHART" "${ALL_APIS[@]}" "${EVERYTHING[@]}" -f "$CHART/examples/kserve-llama2.yaml" \
    --set models.llama2.keda.enabled=true --set models.llama2.keda.maxReplicaCount=4 \
    --set models.llama2.keda.prometheusAddress=http://prometheus:9090 \
    --set models.bert.runtime=huggingface --set models.bert.storageUri=s3://bucket/bert \
    --set models.bert.cache.type=pvc --set models.bert.keda.enabled=true --set models.bert.keda.metric=waiting \
    --set models.bert.keda.maxReplicaCount=2 --set models.bert.keda.prometheusAddress=http://prometheus:9090 \
    --set 'domains={example.com,internal.corp}' --set 'router.ingress.domainGroups.internal.domains={internal.corp}' \
    --set router.ingress.domainGroups.internal.className=internal >"$RENDERED/addons-all-apis.yaml"

# kubernetes-validate knows only the built-in kinds (it skips the add-ons'
# resources); ci/validate_addons.py checks those against their CRDs' own
# schemas, vendored in tests/crd_schemas/, as strictly.
# Against the newest schemas and the oldest Kubernetes the chart supports (kubeVersion).
say "chart: kubernetes-validate --strict"
"$VALIDATE" --strict --quiet --no-warn "$RENDERED"/*.yaml
"$VALIDATE" --strict --quiet --no-warn --kubernetes-version 1.25.0 "$RENDERED"/*.yaml
"$PY" "$ROOT/ci/validate_addons.py" "$RENDERED"/*-all-apis.yaml

# Each of these must be refused, by the schema or by a template's `required`.
reject() {
    local why=$1; shift
    if "$HELM" template infergate "$CHART" "$@" >/dev/null 2>&1; then
        echo "chart: accepted bad values ($why): $*" >&2
        exit 1
    fi
    if "$HELM" lint --strict --quiet "$CHART" "$@" >/dev/null 2>&1; then
        echo "chart: helm lint accepted bad values ($why): $*" >&2
        exit 1
    fi
}
say "chart: bad values are rejected"
reject "replicas not a number" --set-string router.replicas=two
reject "unknown runtime" --set models.m.runtime=tgi --set models.m.modelId=org/m
reject "model without modelId or volume" --set models.m.runtime=vllm
reject "misspelt model field" --set models.m.modelID=org/m
reject "model name not a DNS label" --set models.M_1.modelId=org/m
reject "HPA and KEDA together" --set models.m.modelId=org/m \
    --set models.m.autoscaling.enabled=true --set models.m.autoscaling.maxReplicas=2 \
    --set models.m.keda.enabled=true --set models.m.keda.maxReplicaCount=2
reject "external Redis without URL" --set redis.enabled=false
reject "HTTPRoute without a Gateway" --set router.httpRoute.enabled=true "${DEFAULT_KEYS[@]}"
reject "KEDA scale to zero" --set models.m.modelId=org/m --set models.m.keda.enabled=true \
    --set models.m.keda.maxReplicaCount=2 --set models.m.keda.minReplicaCount=0 \
    --set models.m.keda.prometheusAddress=http://p:9090 --api-versions keda.sh/v1alpha1 "${DEFAULT_KEYS[@]}"
reject "unknown storageUri scheme" --set models.m.storageUri=ftp://host/m "${DEFAULT_KEYS[@]}"
reject "preStop longer than the grace margin" --set preStopSleepSeconds=30 "${DEFAULT_KEYS[@]}"
reject "unknown cache type" --set models.m.modelId=org/m --set models.m.cache.type=hostPath "${DEFAULT_KEYS[@]}"
# A template's `fail` only logs under `helm lint`: these are checked by rendering.
refuse_render() {
    local why=$1; shift
    if "$HELM" template infergate "$CHART" "$@" >/dev/null 2>&1; then
        echo "chart: rendered bad values ($why): $*" >&2
        exit 1
    fi
}
refuse_render "Ingress without API keys"
refuse_render "HTTPRoute without API keys" --set router.ingress.enabled=false \
    --set router.httpRoute.enabled=true --set "router.httpRoute.parentRefs[0].name=gateway"
reject "API key without its digest" --set router.auth.keys.team-a.models[0]=m

say "chart: install --dry-run=client"
for entry in "${values_sets[@]}"; do
    file="${entry#*:}"
    args=("${DEFAULT_KEYS[@]}")
    [ -n "$file" ] && args=(-f "$file")
    "$HELM" install infergate "$CHART" --dry-run=client "${args[@]}" >/dev/null
done

say "chart: rendered manifests (pytest)"
INFERGATE_HELM="$HELM" "$PY" -m pytest -q -p no:cacheprovider tests/test_chart_render.py tests/test_chart_images.py \
    tests/test_chart_batch.py tests/test_chart_pods.py tests/test_images.py tests/test_chart_security.py
