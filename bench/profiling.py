"""Sampling profiles of a router worker process with py-spy, saved next to
the results, and the functions that took the most samples."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def py_spy_record(
    pid: int, out: Path, rate: int = 250, subprocesses: bool = False
) -> Iterator[dict[str, Any]]:
    """Record ``pid`` while the block runs; the dict gets ``path`` (collapsed
    stacks, one ``frame;frame;... count`` line each, gzipped next to
    ``out``) and ``top`` (the functions with the most samples, self and
    total), or ``error``."""
    info: dict[str, Any] = {}
    binary = _py_spy()
    if binary is None:
        info["error"] = "py-spy is not installed (ci/requirements.txt pins it)"
        yield info
        return
    log = out.with_suffix(".log")
    with open(log, "wb") as log_file:
        cmd = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
               "--nonblocking", "--output", str(out)]  # fmt: skip
        if subprocesses:
            cmd.append("--subprocesses")
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            yield info
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if out.exists():
        info["top"] = top_functions(out)
        packed = out.with_name(out.name + ".gz")
        with open(out, "rb") as raw, gzip.open(packed, "wb") as gz:
            shutil.copyfileobj(raw, gz)
        out.unlink()
        info["path"] = packed.name
        log.unlink(missing_ok=True)
    else:
        info["error"] = log.read_text(errors="replace")[-500:]


def top_functions(collapsed: Path, limit: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Share of samples per function: ``self`` (the innermost frame),
    ``total`` (anywhere on the stack) and ``ours`` (the innermost infergate
    function, with the library code it called: where our code spends)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
        # py-spy's --subprocesses adds a root frame per process, named after its command line.
        code = [f for f in frames if not f.startswith("process ")]
        ours[next((f for f in reversed(code) if "infergate_" in f), "(outside infergate code)")] += count
    if not samples:
        return {"self": [], "total": [], "ours": []}

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / samples, 1)) for name, n in counter.most_common(limit)]

    return {"self": shares(own), "total": shares(anywhere), "ours": shares(ours)}
