"""What one request measured, and the summary of a run of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """Times are seconds on the monotonic clock; ``start`` counts from the
    beginning of the run. ``relay_s`` holds, for stamped tokens, the time from
    the worker's write to Redis to this client's receipt."""

    kind: str
    start: float = 0.0
    latency_s: float = 0.0
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    relay_s: list[float] = field(default_factory=list)
    tokens: int = 0
    status: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.error

    def compact(self) -> dict[str, Any]:
        """The record without its per-token lists, for raw dumps."""
        return {
            "kind": self.kind,
            "start": round(self.start, 6),
            "latency_s": round(self.latency_s, 6),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
            "tokens": self.tokens,
            "status": self.status,
            "error": self.error,
        }


def percentiles_ms(values: list[float] | np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99, mean and max in milliseconds (``None`` for no values)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return {**{f"p{p}": None for p in PERCENTILES}, "mean": None, "max": None}
    out: dict[str, float | None] = {
        f"p{p}": round(float(np.percentile(array, p)) * 1000, 4) for p in PERCENTILES
    }
    out["mean"] = round(float(array.mean()) * 1000, 4)
    out["max"] = round(float(array.max()) * 1000, 4)
    return out


def cdf_points(values: list[float] | np.ndarray, points: int = 101) -> list[float]:
    """Quantiles 0..100 in milliseconds, for plotting a distribution."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return []
    return [round(float(v) * 1000, 4) for v in np.percentile(array, np.linspace(0, 100, points))]


@dataclass
class RunResult:
    """One load run: its settings, records and wall time."""

    label: str
    concurrency: int
    wall_s: float
    records: list[RequestRecord]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_records(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    def summary(self) -> dict[str, Any]:
        ok = self.ok_records
        errors = len(self.records) - len(ok)
        tokens = sum(r.tokens for r in ok)
        gaps = [g for r in ok for g in r.gaps_s]
        relay = [x for r in ok for x in r.relay_s]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        statuses: dict[str, int] = {}
        for record in self.records:
            if not record.ok:
                key = str(record.status or record.error.split(":")[0] or "error")
                statuses[key] = statuses.get(key, 0) + 1
        out: dict[str, Any] = {
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": len(self.records),
            "errors": errors,
            "error_kinds": statuses,
            "first_error": next((r.error or str(r.status) for r in self.records if not r.ok), ""),
            "wall_s": round(self.wall_s, 4),
            "requests_per_s": round(len(ok) / self.wall_s, 2) if self.wall_s else 0.0,
            "tokens": tokens,
            "tokens_per_s": round(tokens / self.wall_s, 1) if self.wall_s else 0.0,
            "latency_ms": percentiles_ms([r.latency_s for r in ok]),
            "latency_cdf_ms": cdf_points([r.latency_s for r in ok]),
        }
        if ttft:
            out["ttft_ms"] = percentiles_ms(ttft)
        if gaps:
            out["itl_ms"] = percentiles_ms(gaps)
        if relay:
            out["relay_ms"] = percentiles_ms(relay)
            out["relay_cdf_ms"] = cdf_points(relay)
            out["relay_samples"] = len(relay)
        out.update(self.extra)
        return out
