#!/usr/bin/env bash
# `make bench`: the quick benchmarks (a few minutes); `make bench FULL=1`: all
# of them, the vLLM comparison included. Results go to bench/results/.
# Extra arguments for `python -m bench` in BENCH_ARGS (e.g. "--profile" or
# "--only overhead,relay").
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
bash ci/setup.sh
if [ "${FULL:-}" = 1 ]; then
    bash ci/setup_vllm.sh
fi
say "test models (var/models, with the MiniLM-sized benchmark classifier)"
OMP_NUM_THREADS=1 "$PY" -m infergate_worker_hf.testmodels --out "$ROOT/var/models" --bench >/dev/null
args=()
if [ "${FULL:-}" = 1 ]; then args+=(--full); fi
if [ -n "${BENCH_ARGS:-}" ]; then read -r -a extra <<<"$BENCH_ARGS"; args+=("${extra[@]}"); fi
say "benchmarks${FULL:+ (FULL)}"
"$PY" -m bench "${args[@]}"
