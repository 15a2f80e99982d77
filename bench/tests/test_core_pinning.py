"""The core layout of the vLLM comparison on real processes: a process
titled like vLLM's engine goes to the engine's cores, the rest of the tree
and the benchmark itself to the serving core, a process that appears later
is caught by the next pass, and closing gives every CPU back."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bench.core_pinning import PASS_INTERVAL_S, CorePinner, serving_processes, split_cpus


def affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in out.stdout.split()]


def test_engine_processes_get_their_own_cores() -> None:
    split = split_cpus()
    if split is None:
        pytest.fail("the comparison's layout needs 2 CPUs; this machine allows one")
    engine, serving = split
    everything = affinity(0)
    root = subprocess.Popen(
        # vLLM's engine core, another process, and one that takes an engine
        # title a second later (vLLM spawns its model worker after the core).
        [
            "bash",
            "-c",
            'exec -a "VLLM::EngineCore" sleep 60 & sleep 60 & '
            '(sleep 1; exec -a "VLLM::Worker" sleep 60) & wait',
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while len(children_of(root.pid)) < 3:
            assert time.monotonic() < deadline, "the test's processes did not start"
            time.sleep(0.02)
        with CorePinner([root.pid], engine, serving) as pinner:
            (engine_pid,) = pinner.engine_processes
            others = [pid for pid in children_of(root.pid) if pid != engine_pid]
            assert affinity(engine_pid) == engine
            assert [affinity(pid) for pid in [root.pid, *others]] == [serving] * 3
            assert affinity(0) == serving, "the load generator runs on the serving core"
            deadline = time.monotonic() + 1 + 10 * PASS_INTERVAL_S
            while len(pinner.engine_processes) < 2:
                assert time.monotonic() < deadline, "a process that became an engine was never moved"
                time.sleep(0.05)
            (late,) = pinner.engine_processes - {engine_pid}
            assert affinity(late) == engine
        assert affinity(engine_pid) == everything
        assert affinity(root.pid) == everything
        assert affinity(0) == everything
    finally:
        os.killpg(root.pid, 9)
        root.wait()


def test_the_serving_side_is_the_tree_without_the_engine() -> None:
    """What the comparison charges to the serving side's CPU per token."""
    root = subprocess.Popen(
        ["bash", "-c", 'exec -a "VLLM::EngineCore" sleep 60 & sleep 60 & wait'], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while len(children_of(root.pid)) < 2:
            assert time.monotonic() < deadline, "the test's processes did not start"
            time.sleep(0.02)
        engine = [
            pid
            for pid in children_of(root.pid)
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::")
        ]
        assert len(engine) == 1
        serving = serving_processes([root.pid])
        assert sorted(serving) == sorted(
            [root.pid, *(pid for pid in children_of(root.pid) if pid not in engine)]
        )
        assert engine[0] not in serving
    finally:
        os.killpg(root.pid, 9)
        root.wait()
