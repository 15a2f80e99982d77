"""``python -m infergate_batch [celery worker options]``: a batch worker."""

from __future__ import annotations

import sys

from .worker import app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    app.worker_main(["worker", "--loglevel=INFO", *args])


if __name__ == "__main__":
    main()
