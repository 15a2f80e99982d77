"""vLLM's engine on cores of its own, the rest of the stack on the others.

On the CPU, vLLM runs its model in a separate worker process, and each side
of the shared-memory queue between that process and the engine core spins
in ``sched_yield`` while it waits, so a generation keeps two cores busy. On
a 2-core machine that is every core, and the kernel of the machines the
tests run on then lets the two hold them for whole seconds while Redis, the
router and the worker's own event loop wait to run: a probe sleeping 0.2 s
woke up to 5.4 s late, and Redis writes that take a millisecond timed out
after 2 s. A cluster never lays them out like that (the engine has its GPU
pod's cores, Redis and the router have CPU requests of their own).

So the stack pins every process titled ``VLLM::`` (the engine core and its
model worker) of a worker it starts to every allowed CPU but the last
(:func:`pin_engines`), and leaves the other processes where they are: they
keep the last CPU to themselves and share the others. The vLLM comparison
(``bench/core_pinning.py``) uses the same pieces.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ENGINE_TITLE = b"VLLM::"


def split_cpus() -> tuple[set[int], set[int]] | None:
    """``(engine, serving)``: every allowed CPU but the last, and the last;
    None with fewer than 2."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of any of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(child) for child in (task / "children").read_text().split())
    return sorted(found)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for child in children(pid):
        found.extend(tree(child))
    return found


def is_engine(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(ENGINE_TITLE)
    return False


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads it starts later inherit them)."""
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                if os.sched_getaffinity(int(task)) != cpus:
                    os.sched_setaffinity(int(task), cpus)


def pin_engines(root: int) -> list[int]:
    """Pin the engine processes under ``root`` to the engine's CPUs; return
    them (none on a 1-CPU machine, where there is nothing to split)."""
    split = split_cpus()
    if split is None:
        return []
    engines = [pid for pid in tree(root) if is_engine(pid)]
    for pid in engines:
        pin(pid, split[0])
    return engines
