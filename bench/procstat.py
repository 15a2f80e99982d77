"""Resident memory and CPU time of processes, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

# Direct children of a process; the harness reads them for its own pinning.
from harness.core_pinning import children as children

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    return status_kb(pid, "VmHWM")


def tree_rss_kb(pid: int) -> int:
    """RSS of a process and all its descendants (a worker's engine subprocesses)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += rss_kb(current)
        except (OSError, KeyError):
            continue
        pending.extend(children(current))
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuMeter:
    """CPU seconds used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = 0.0
        self.used = 0.0

    def _total(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                total += cpu_seconds(pid)
            except OSError:
                continue
        return total

    def start(self) -> CpuMeter:
        self.before = self._total()
        return self

    def stop(self) -> float:
        self.used = self._total() - self.before
        return self.used


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
