"""``python -m infergate_worker_hf --model_id DIR_OR_ID [KServe flags] --port P``."""

from __future__ import annotations

import logging
import sys

import redis

from infergate_common.errors import StartupError
from infergate_common.logs import configure_logging
from infergate_common.worker_runner import run_worker

from .cli import parse_settings
from .loading import check_max_model_len, load_config, resolve_device
from .task_inference import infer_task

log = logging.getLogger("infergate_worker_hf")


def main(argv: list[str] | None = None) -> int:
    configure_logging("worker-hf")
    try:
        settings = parse_settings(argv)
        config = load_config(settings)
        task = infer_task(config, settings.model_path(), settings.task)
        check_max_model_len(settings, config)
        # A GPU asked for (--device cuda) and unusable stops here; one given to the
        # pod but unusable is logged now, before the model loads on the CPU.
        resolve_device(settings)
        from .engines import ENGINES

        engine_cls = ENGINES.get(task)
        if engine_cls is None:
            raise StartupError(f"Task {task.value} has no engine in this build of worker-hf.")
    except StartupError as exc:
        print(f"worker-hf: error: {exc.message}", file=sys.stderr)
        return 2
    log.info("serving", extra={"task": task.value, "model": settings.model_path()})
    engine = engine_cls(settings, task, redis.Redis.from_url(settings.redis_url))
    return run_worker(engine, settings)


if __name__ == "__main__":
    raise SystemExit(main())
