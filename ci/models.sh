#!/usr/bin/env bash
# Build the small random-weight test models (offline, idempotent).
source "$(dirname "$0")/lib.sh"
bash "$ROOT/ci/setup.sh"
"$PY" -m infergate_worker_hf.testmodels --out "$ROOT/var/models" "$@"
