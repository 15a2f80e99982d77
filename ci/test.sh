#!/usr/bin/env bash
# The tests, after installing what is missing.
#   ci/test.sh        `make test`: lint, then every suite without the slow checks
#   ci/test.sh slow   `make test-slow`: the slow checks (pytest marker `slow`):
#                     vLLM on the CPU, whole local stacks (`make run`, the
#                     chart's commands), the 60 s soak
#   ci/test.sh all    both (.ci/run runs both, the slow part when time allows)
# Each service's tests run in their own pytest process (their conftest files
# are independent); the vLLM suites run in the worker-vllm environment.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
SCOPE=${1:-fast}
case "$SCOPE" in fast | slow | all) ;; *) echo "usage: ci/test.sh [fast|slow|all]" >&2; exit 2 ;; esac
bash ci/setup.sh
bash ci/setup_vllm.sh

PYTEST=("$PY" -m pytest -q -p no:cacheprovider --timeout=600)
if [ -n "${PYTEST_ARGS:-}" ]; then read -r -a extra <<<"$PYTEST_ARGS"; PYTEST+=("${extra[@]}"); fi
VPY="$ROOT/.venv-vllm/bin/python"

run_suite() {
    local name=$1; shift
    say "tests: $name"
    set +e
    "$@"
    local rc=$?
    set -e
    # exit 5: the suite collected no test. Only a PYTEST_ARGS selection
    # (e.g. -k over a suite it does not match) may leave a suite empty.
    if [ $rc -eq 5 ] && [ -n "${PYTEST_ARGS:-}" ]; then
        echo "test suite '$name': nothing selected by PYTEST_ARGS" >&2
        return 0
    fi
    if [ $rc -ne 0 ]; then
        echo "test suite '$name' failed (exit $rc)" >&2
        exit $rc
    fi
}

if [ "$SCOPE" != slow ]; then
    bash ci/lint.sh
    run_suite common "${PYTEST[@]}" services/common/tests
    run_suite registry "${PYTEST[@]}" services/registry/tests
    run_suite router "${PYTEST[@]}" services/router/tests
    run_suite worker-hf "${PYTEST[@]}" services/worker-hf/tests
    run_suite batch "${PYTEST[@]}" services/batch/tests
    run_suite worker-tabular "${PYTEST[@]}" services/worker-tabular/tests
    run_suite bench "${PYTEST[@]}" bench/tests
    run_suite integration "${PYTEST[@]}" -m "not slow" tests
    say "chart"
    bash ci/chart.sh
    run_suite worker-vllm "$VPY" -m pytest -q -p no:cacheprovider --timeout=900 services/worker-vllm/tests
fi
if [ "$SCOPE" != fast ]; then
    run_suite integration-slow "${PYTEST[@]}" -m "slow and not vllm" tests
    run_suite vllm-integration "${PYTEST[@]}" -m "vllm and not isolated" tests
    # Timing tests that need the machine to themselves: one session each.
    run_suite vllm-isolated "${PYTEST[@]}" -m "vllm and isolated" tests
fi
say "all $SCOPE tests passed"
