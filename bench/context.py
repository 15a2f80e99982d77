"""What every scenario is given: the run's mode, folders and options, and
the shapes of what it gives back."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Context:
    full: bool
    workdir: Path
    results: Path
    prefix: str
    profile: bool = False
    log_level: str = "WARNING"
    models_dir: Path | None = None
    # torch threads of the worker-hf processes in the batching scenario.
    worker_threads: int = 2

    def pick(self, quick: T, full: T) -> T:
        return full if self.full else quick

    def profile_path(self, scenario: str, process: str = "router") -> Path:
        suffix = "" if process == "router" else f"-{process}"
        return self.results / f"{self.prefix}-{scenario}{suffix}.pyspy.txt"

    def scenario_dir(self, scenario: str) -> Path:
        path = self.workdir / scenario
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Target:
    what: str
    target: str
    measured: float | None
    unit: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "target": self.target,
            "measured": self.measured,
            "unit": self.unit,
            "met": self.met,
        }


def below(what: str, value: float | None, limit: float, unit: str) -> Target:
    met = None if value is None else value < limit
    return Target(what, f"< {limit:g} {unit}", None if value is None else round(value, 3), unit, met)


def at_least(what: str, value: float | None, limit: float, unit: str) -> Target:
    met = None if value is None else value >= limit
    return Target(what, f">= {limit:g} {unit}", None if value is None else round(value, 3), unit, met)


@dataclass
class ScenarioResult:
    name: str
    title: str
    measures: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    # Profiles of other processes (a worker), by process name.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str = ""
    trace: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "measures": self.measures,
            "skipped": self.skipped,
            "rows": self.rows,
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            "profile": self.profile,
            "profiles": self.profiles,
            "runs": self.runs,
            "trace": self.trace,
        }


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def ms(summary: dict[str, Any], metric: str, pct: str) -> float | None:
    value = (summary.get(metric) or {}).get(pct)
    return None if value is None else float(value)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)
