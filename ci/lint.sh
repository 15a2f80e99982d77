#!/usr/bin/env bash
# ruff (lint + import order + format check) and mypy over the Python code.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
say "ruff"
"$VENV/bin/ruff" check services tests bench
"$VENV/bin/ruff" format --check services tests bench
say "mypy"
for pkg in services/common/infergate_common services/router/infergate_router \
    services/registry/infergate_registry services/worker-hf/infergate_worker_hf \
    services/batch/infergate_batch services/worker-tabular/infergate_worker_tabular; do
    "$VENV/bin/mypy" "$pkg"
done
if [ -x "$ROOT/.venv-vllm/bin/python" ]; then
    "$VENV/bin/mypy" --python-executable "$ROOT/.venv-vllm/bin/python" services/worker-vllm/infergate_worker_vllm
else
    "$VENV/bin/mypy" services/worker-vllm/infergate_worker_vllm
fi
