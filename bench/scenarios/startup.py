"""Start-up time to ready (process start to the first 200 from /readyz)
and peak resident memory (VmHWM of the worker's process tree) of worker-hf
for each test model, and the real all-MiniLM-L6-v2 when installed."""

from __future__ import annotations

import time

import requests

from ..context import Context, ScenarioResult
from ..models import ensure_test_models, real_minilm, worker_hf
from ..procstat import children, peak_rss_kb
from ..stacks import BenchStack, Process, ProcessFailed, free_port

NAME = "startup"
MODELS = (
    "tiny-bert-classifier",
    "tiny-bert-ner",
    "tiny-bert-mlm",
    "tiny-bert-encoder",
    "tiny-st",
    "tiny-llama",
    "tiny-gpt2",
    "tiny-t5",
    "minilm-classifier",
)

QUICK_MODELS = ("tiny-bert-classifier", "tiny-llama", "minilm-classifier")


def _tree_peak_kb(pid: int) -> int:
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += peak_rss_kb(current)
        except (OSError, KeyError):
            continue
        pending.extend(children(current))
    return total


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(
        NAME,
        "Worker start-up and memory",
        "worker-hf per model: seconds from process start to the first 200 of /readyz, and peak "
        "resident memory at ready (VmHWM, process tree).",
    )
    assert ctx.models_dir is not None
    models = ensure_test_models(ctx.models_dir)
    names = ctx.pick(QUICK_MODELS, MODELS)
    folders = [(name, models / name) for name in names if (models / name / "config.json").exists()]
    minilm = real_minilm()
    if minilm is not None:
        folders.append(("all-MiniLM-L6-v2", minilm))
    with BenchStack(ctx.scenario_dir(NAME), log_level=ctx.log_level).start(with_router=False) as stack:
        for name, folder in folders:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            process = Process(
                f"startup-{name}",
                [*worker_hf(name, folder), *stack.stack.worker_args(port)],
                stack.logs / f"startup-{name}.log",
                env={**stack.stack._service_env()},
            )
            row: dict[str, object] = {"model": name}
            try:
                process.wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, 300, "ready")  # noqa: B023
                row["ready_s"] = round(time.monotonic() - started, 2)
                row["peak_rss_mb"] = round(_tree_peak_kb(process.pid) / 1024, 1)
                info = requests.get(f"{url}/info", timeout=5).json()
                row["task"] = info.get("task")
                row["architecture"] = info.get("architecture")
            except ProcessFailed as exc:
                row["error"] = str(exc).splitlines()[0][:200]
            finally:
                process.stop()
            result.rows.append(row)
    result.notes.append(
        "Each worker starts alone, OMP_NUM_THREADS=1, on the CPU; models read from local disk."
    )
    return result
