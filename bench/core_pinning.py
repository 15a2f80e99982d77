"""vLLM's engine on cores of its own, the serving path on the rest, as a
cluster lays them out (the engine in the GPU worker's pod, the router and
Redis in pods with their own CPU requests).

Sharing two cores with vLLM's spinning engine (``tests/harness/core_pinning.py``
says why it spins and what the kernel then does), the processes that carry
tokens to the client (vLLM's own API server, or our router, Redis and
worker-vllm's loop) get CPU in slices, and tokens reach the client in bursts
on whichever side the kernel starves. The comparison then measures the
scheduler. :class:`CorePinner` gives both servers the same layout: every
process whose title starts with ``VLLM::`` (the engine core and its model
worker) on the engine's cores, every other process of the comparison, the
load generator included, on the serving core. Processes and threads that
appear later are pinned on the next pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from harness.core_pinning import ENGINE_TITLE, is_engine, pin, split_cpus, tree

__all__ = ["ENGINE_TITLE", "PASS_INTERVAL_S", "CorePinner", "serving_processes", "split_cpus"]

PASS_INTERVAL_S = 0.5


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
            pin(pid, self.engine if engine else self.serving)
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
            pin(pid, self.everything)
