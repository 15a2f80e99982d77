"""vLLM's engine on cores of its own, the serving path on the rest, as a
cluster lays them out (the engine in the GPU worker's pod, the router and
Redis in pods with their own CPU requests).

On the CPU, vLLM runs its model in a separate worker process, and each side
of the shared-memory queue between that process and the engine core spins
in ``sched_yield`` while it waits. Sharing two cores with that spinning,
the processes that carry tokens to the client (vLLM's own API server, or
our router, Redis and worker-vllm's loop) get CPU in slices, and tokens
reach the client in bursts on whichever side the kernel starves. The
comparison then measures the scheduler. :class:`CorePinner` gives both
servers the same layout: every process whose title starts with ``VLLM::``
(the engine core and its model worker) on the engine's cores, every other
process of the comparison, the load generator included, on the serving
core. Processes and threads that appear later are pinned on the next pass.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from . import procstat

ENGINE_TITLE = b"VLLM::"
PASS_INTERVAL_S = 0.5


def split_cpus() -> tuple[set[int], set[int]] | None:
    """``(engine, serving)``: every allowed CPU but the last, and the last;
    None with fewer than 2."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


def _threads(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    return []


def _pin(pid: int, cpus: set[int]) -> None:
    for tid in _threads(pid):
        with contextlib.suppress(OSError):
            if os.sched_getaffinity(tid) != cpus:
                os.sched_setaffinity(tid, cpus)


def is_engine(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(ENGINE_TITLE)
    return False


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for child in procstat.children(pid):
        found.extend(tree(child))
    return found


def serving_processes(roots: Iterable[int]) -> list[int]:
    """The processes of ``roots``' trees that are not vLLM's engine."""
    return [pid for root in roots for pid in tree(root) if not is_engine(pid)]


class CorePinner:
    """While open, pins the process trees of ``roots`` and this process:
    engine processes to ``engine``, the others to ``serving``. On close,
    every process it pinned that is still running gets back the CPUs this
    process had."""

    def __init__(self, roots: Iterable[int], engine: set[int], serving: set[int]) -> None:
        self.roots = list(roots)
        self.engine = engine
        self.serving = serving
        self.everything = os.sched_getaffinity(0)
        self.pinned: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="core-pinner", daemon=True)
        self.engine_processes: set[int] = set()

    def pin_once(self) -> None:
        for pid in [os.getpid(), *(p for root in self.roots for p in tree(root))]:
            engine = is_engine(pid)
            if engine:
                self.engine_processes.add(pid)
            _pin(pid, self.engine if engine else self.serving)
            self.pinned.add(pid)

    def _run(self) -> None:
        while not self._stop.wait(PASS_INTERVAL_S):
            self.pin_once()

    def __enter__(self) -> CorePinner:
        self.pin_once()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self.pinned:
            _pin(pid, self.everything)
