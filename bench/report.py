"""The three files of a run: JSON (everything), Markdown (the summary) and a
PNG (latency distributions, throughput against concurrency)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .context import Context, ScenarioResult

RUN_COLUMNS = (
    ("label", "run"),
    ("concurrency", "c"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("requests_per_s", "req/s"),
    ("tokens_per_s", "tokens/s"),
    ("latency_ms.p50", "p50 ms"),
    ("latency_ms.p99", "p99 ms"),
    ("ttft_ms.p50", "TTFT p50"),
    ("ttft_ms.p99", "TTFT p99"),
    ("itl_ms.p50", "ITL p50"),
    ("itl_ms.p99", "ITL p99"),
    ("relay_ms.p50", "relay p50"),
    ("relay_ms.p99", "relay p99"),
)


def _get(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def command_line(ctx: Context) -> str:
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"python -m bench {args}".strip()


def markdown(ctx: Context, mode: str, machine: dict[str, Any], results: list[ScenarioResult]) -> str:
    out = [
        f"# infergate benchmarks: {ctx.prefix}",
        "",
        f"Mode **{mode}**, commit `{machine.get('commit')}`, {machine.get('cpus')} CPUs, "
        f"Python {machine.get('python')}, load average before {machine.get('load_average_before')} "
        f"and after {machine.get('load_average_after')}.",
        f"Command: `{command_line(ctx)}` (`make bench{' FULL=1' if mode == 'full' else ''}`).",
        "Every figure is a difference or ratio against a baseline measured in the same run. "
        "Load generator, router, workers and redis-server share the machine's cores.",
        "",
        "## Targets",
        "",
    ]
    target_rows = []
    for result in results:
        for target in result.targets:
            met = {True: "met", False: "**missed**", None: "not measured"}[target.met]
            target_rows.append([result.title, target.what, target.target, target.measured, target.unit, met])
    out += _table(["scenario", "what", "target", "measured", "unit", ""], target_rows) if target_rows else []
    for result in results:
        out += ["", f"## {result.title}", ""]
        if result.measures:
            out += [result.measures, ""]
        if result.skipped:
            out += [f"Not measured: {result.skipped.splitlines()[0]}", ""]
        if result.rows:
            header = list(dict.fromkeys(k for row in result.rows for k in row))
            out += [*_table(header, [[row.get(k) for k in header] for row in result.rows]), ""]
        if result.runs:
            out += ["<details><summary>every run</summary>", ""]
            out += _table(
                [title for _, title in RUN_COLUMNS],
                [[_get(run, key) for key, _ in RUN_COLUMNS] for run in result.runs],
            )
            errors = [
                f"- {run['label']}: {run['first_error']}" for run in result.runs if run.get("first_error")
            ]
            out += [
                "",
                *(["First error of runs with errors:", *errors, ""] if errors else []),
                "</details>",
                "",
            ]
        if result.profile:
            out += _profile(result.profile)
        for process, profile in result.profiles.items():
            out += _profile(profile, process)
        out += [f"- {note}" for note in result.notes]
    return "\n".join(out).rstrip() + "\n"


def _profile(profile: dict[str, Any], process: str = "router") -> list[str]:
    if "error" in profile:
        return [f"Profile of the {process} failed: {profile['error']}", ""]
    lines = [f"Profile of the {process} (py-spy, `{profile.get('path')}`), share of samples:", ""]
    top = profile.get("top") or {}
    rows = [[name, share] for name, share in (top.get("ours") or [])[:12]]
    if rows:
        lines += [*_table(["infergate function (with what it calls)", "%"], rows), ""]
    rows = [[name, share] for name, share in (top.get("self") or [])[:12]]
    lines += [*_table(["function (self)", "%"], rows), ""]
    rows = [[name, share] for name, share in (top.get("total") or [])[:12]]
    lines += [*_table(["function (on stack)", "%"], rows), ""]
    return lines


# ------------------------------------------------------------------ plot


def _cdf(ax: Any, run: dict[str, Any], key: str, label: str) -> bool:
    points = run.get(key) or []
    if not points:
        return False
    ys = [100 * i / (len(points) - 1) for i in range(len(points))]
    ax.plot([max(p, 1e-3) for p in points], ys, label=label)
    return True


def plot(results: list[ScenarioResult], path: Path, title: str) -> bool:
    panels: list[tuple[str, Any]] = []
    by_name = {r.name: r for r in results}
    overhead = by_name.get("overhead")
    if overhead and overhead.runs:
        panels.append(("overhead_cdf", overhead))
        panels.append(("overhead_rps", overhead))
    relay = by_name.get("relay")
    if relay and any(r.get("relay_cdf_ms") for r in relay.runs):
        panels.append(("relay_cdf", relay))
        panels.append(("relay_tps", relay))
    batching = by_name.get("batching")
    if batching and batching.rows:
        panels += [("batching:requests/s", batching), ("batching:tokens/s", batching)]
    if by_name.get("vllm") and by_name["vllm"].rows:
        panels.append(("vllm", by_name["vllm"]))
    if not panels:
        return False
    cols = 2
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(13, 4.2 * rows), squeeze=False)
    for ax, (kind, result) in zip(axes.flat, panels, strict=False):
        _panel(ax, kind, result)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _panel(ax: Any, kind: str, result: ScenarioResult) -> None:
    runs = [r for r in result.runs if r.get("group") != "protocols"]
    if kind == "overhead_cdf":
        for run in runs:
            _cdf(ax, run, "latency_cdf_ms", f"{run['label'].split()[0]} c={run['concurrency']}")
        ax.set(xscale="log", xlabel="latency (ms, log)", ylabel="percentile", title="Non-streaming latency")
    elif kind == "overhead_rps":
        for path in ("worker", "router"):
            pts = sorted((r["concurrency"], r["requests_per_s"]) for r in runs if r["label"].startswith(path))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=path)
        ax.set(
            xscale="log", xlabel="concurrency", ylabel="requests/s", title="Throughput against concurrency"
        )
    elif kind == "relay_cdf":
        for run in runs:
            unpaced = "" if run.get("paced", True) else " unpaced"
            _cdf(ax, run, "relay_cdf_ms", f"{run['label'].split()[0]} {run['concurrency']} streams{unpaced}")
        ax.set(xscale="log", xlabel="worker XADD to client receipt (ms, log)", ylabel="percentile",
               title="Per-token relay latency")  # fmt: skip
    elif kind == "relay_tps":
        for path in ("redis", "router"):
            pts = sorted(
                (r["concurrency"], r["tokens_per_s"])
                for r in runs
                if r["label"].startswith(path) and r.get("paced", True)
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=path)
        ax.set(xscale="log", xlabel="concurrent streams", ylabel="tokens/s", title="Tokens/s against streams")
    elif kind == "vllm":
        for key, name in (
            ("vllm_tokens_per_s", "vLLM server"),
            ("ours_tokens_per_s", "router + worker-vllm"),
        ):
            pts = [(row["concurrency"], row[key]) for row in result.rows]
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set(xscale="log", xlabel="concurrent streams", ylabel="output tokens/s", title=result.title)
    elif kind.startswith("batching:"):
        unit = kind.partition(":")[2]
        rows = [row for row in result.rows if row.get("unit") == unit]
        ax.barh([str(row["case"]) for row in rows], [row.get("throughput") or 0 for row in rows])
        ax.set(xlabel=unit, title=f"{result.title}: {unit}")
        ax.invert_yaxis()
        return
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


# ----------------------------------------------------------------- write


def write_report(
    ctx: Context, mode: str, machine: dict[str, Any], results: list[ScenarioResult]
) -> list[Path]:
    base = ctx.results / ctx.prefix
    data = {
        "name": ctx.prefix,
        "mode": mode,
        "command": command_line(ctx),
        "machine": machine,
        "scenarios": [r.as_dict() for r in results],
    }
    paths = [base.with_suffix(".json"), base.with_suffix(".md")]
    paths[0].write_text(json.dumps(data, indent=1) + "\n")
    paths[1].write_text(markdown(ctx, mode, machine, results))
    png = base.with_suffix(".png")
    if plot(results, png, f"infergate benchmarks {ctx.prefix}"):
        paths.append(png)
    return paths
