"""``python -m infergate_worker_tabular --model_dir DIR [--nthread N] --port P``."""

from __future__ import annotations

import logging
import sys

from infergate_common.errors import StartupError
from infergate_common.logs import configure_logging
from infergate_common.worker_runner import run_worker

from .cli import parse_settings
from .engine import TabularEngine
from .frameworks import find_model_file

log = logging.getLogger("infergate_worker_tabular")


def main(argv: list[str] | None = None) -> int:
    configure_logging("worker-tabular")
    try:
        settings = parse_settings(argv)
        model_file = find_model_file(settings.model_path())
    except StartupError as exc:
        print(f"worker-tabular: error: {exc.message}", file=sys.stderr)
        return 2
    log.info("serving", extra={"framework": model_file.framework.value, "model": model_file.path})
    return run_worker(TabularEngine(settings, model_file), settings)


if __name__ == "__main__":
    raise SystemExit(main())
