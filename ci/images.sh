#!/usr/bin/env bash
# `make images`: build every image the chart pulls, from the repository root,
# with the tags the chart pulls, and push them when PUSH=1.
#
#   make images                                   # ghcr.io/infergate/*:<appVersion>
#   make images REGISTRY=registry.corp:5000 PUSH=1
#   helm install ... --set global.imageRegistry=registry.corp:5000
#
# REGISTRY (default ghcr.io) holds the images under infergate/<name>, the paths
# the chart's global.imageRegistry expects; TAG defaults to the chart's
# appVersion. Uses docker, or podman when docker is missing
# (CONTAINER_ENGINE= chooses). DRY_RUN=1 prints the commands instead.
# worker-vllm's image is large (vLLM's CUDA base, about 10 GB): ONLY="router
# registry" builds a subset.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

REGISTRY="${REGISTRY:-ghcr.io}"
REGISTRY="${REGISTRY%/}"
TAG="${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/infergate/Chart.yaml)}"
[ -n "$TAG" ] || { echo "images: no appVersion in charts/infergate/Chart.yaml" >&2; exit 1; }

engine="${CONTAINER_ENGINE:-}"
if [ -z "$engine" ]; then
    if command -v docker >/dev/null; then engine=docker
    elif command -v podman >/dev/null; then engine=podman
    fi
fi
if [ -z "$engine" ] && [ -z "${DRY_RUN:-}" ]; then
    echo "images: neither docker nor podman is installed (CONTAINER_ENGINE= names another)" >&2
    exit 1
fi
engine="${engine:-docker}"

# name | Dockerfile | tag suffix | build args: one line per image the chart can pull.
IMAGES=(
    "router|services/router/Dockerfile||"
    "registry|services/registry/Dockerfile||"
    "worker-hf|services/worker-hf/Dockerfile||TORCH=cpu"
    "worker-hf|services/worker-hf/Dockerfile|-cuda|TORCH=cuda"
    "worker-vllm|services/worker-vllm/Dockerfile||"
)
# Images of services added later (a batch worker, ...): services/<name>/Dockerfile.
for dockerfile in services/*/Dockerfile; do
    name="$(basename "$(dirname "$dockerfile")")"
    case " router registry worker-hf worker-vllm " in *" $name "*) continue ;; esac
    IMAGES+=("$name|$dockerfile||")
done

run() {
    if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi
}

built=()
for entry in "${IMAGES[@]}"; do
    IFS='|' read -r name dockerfile suffix build_args <<<"$entry"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    image="$REGISTRY/infergate/$name:$TAG$suffix"
    args=()
    for arg in $build_args; do args+=(--build-arg "$arg"); done
    say "images: $image ($dockerfile${build_args:+, $build_args})"
    run "$engine" build -f "$dockerfile" "${args[@]}" -t "$image" .
    built+=("$image")
done
if [ -n "${PUSH:-}" ]; then
    for image in "${built[@]}"; do
        say "images: push $image"
        run "$engine" push "$image"
    done
fi
