"""Run the benchmarks and write bench/results/<name>-<date>.{json,md,png}.

python -m bench                      # the quick set (a few minutes)
python -m bench --full               # everything (FULL=1 in make bench)
python -m bench --only relay,memory  # some scenarios
python -m bench --profile            # also py-spy profiles of the router
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from . import procstat
from .context import Context, ScenarioResult
from .report import write_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Scenario modules in the order they run; (module, runs in the quick set).
SCENARIOS: dict[str, tuple[str, bool]] = {
    "overhead": ("bench.scenarios.overhead", True),
    "auth": ("bench.scenarios.auth", True),
    "relay": ("bench.scenarios.relay", True),
    "memory": ("bench.scenarios.memory", True),
    "routing": ("bench.scenarios.routing", True),
    "batching": ("bench.scenarios.batching", True),
    "startup": ("bench.scenarios.startup", True),
    "batch": ("bench.scenarios.batch", False),
    "tabular": ("bench.scenarios.tabular", True),
    "structured": ("bench.scenarios.structured", True),
    "vllm": ("bench.scenarios.vllm_compare", False),
}

log = logging.getLogger("bench")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": _git_commit(),
        "load_average_before": procstat.load_average(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", default=os.environ.get("FULL") == "1")
    parser.add_argument("--only", default="", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--name", default="", help="results name (default quick or full)")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of the router per scenario")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--models", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--log_level", default="WARNING", help="the router's INFERGATE_LOG_LEVEL")
    parser.add_argument(
        "--worker_threads", type=int, default=2, help="torch threads of worker-hf in the batching scenario"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (process logs)")
    return parser.parse_args(argv)


def chosen(args: argparse.Namespace) -> list[str]:
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(unknown)} (know {', '.join(SCENARIOS)})")
        return names
    return [name for name, (_, quick) in SCENARIOS.items() if args.full or quick]


def run_scenario(name: str, ctx: Context) -> ScenarioResult:
    module: ModuleType = importlib.import_module(SCENARIOS[name][0])
    started = time.monotonic()
    try:
        result: ScenarioResult = module.run(ctx)
    except Exception as exc:
        log.error("scenario %s failed: %s", name, exc)
        result = ScenarioResult(name, name, "", skipped=f"failed: {type(exc).__name__}: {exc}"[:2000])
        result.trace = traceback.format_exc()[-5000:]
    result.notes.append(f"scenario took {time.monotonic() - started:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    names = chosen(args)
    mode = "full" if args.full else "quick"
    name = args.name or mode
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    args.results.mkdir(parents=True, exist_ok=True)
    if any(args.results.glob(f"{name}-{stamp}*")):
        # Two runs started in one minute: the second never writes over the first.
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="infergate-bench-"))
    ctx = Context(
        full=args.full,
        workdir=workdir,
        results=args.results,
        prefix=f"{name}-{stamp}",
        profile=args.profile,
        log_level=args.log_level,
        models_dir=args.models,
        worker_threads=args.worker_threads,
    )
    results = []
    try:
        for scenario in names:
            log.info("scenario %s (%s)", scenario, mode)
            results.append(run_scenario(scenario, ctx))
            log.info("scenario %s done", scenario)
    finally:
        info["load_average_after"] = procstat.load_average()
        paths = write_report(ctx, mode, info, results)
        for path in paths:
            print(path)
        if args.keep:
            print(f"process logs kept in {workdir}")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
