#!/usr/bin/env bash
# `make run`: install what is missing, build the small models, start the local stack.
source "$(dirname "$0")/lib.sh"
bash "$ROOT/ci/setup.sh"
if [ "${BACKEND:-}" = "vllm" ]; then bash "$ROOT/ci/setup_vllm.sh"; fi
exec bash "$ROOT/ci/stack.sh"
