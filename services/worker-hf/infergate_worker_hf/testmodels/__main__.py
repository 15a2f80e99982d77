"""``python -m infergate_worker_hf.testmodels --out DIR [--bench]``: build
every small test model (skipping those that exist) and print the folders."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from .encoders import build_encoders


def build_all(out: Path, bench: bool = False) -> list[Path]:
    folders = build_encoders(out, bench=bench)
    try:
        generative = importlib.import_module("infergate_worker_hf.testmodels.generative")
    except ModuleNotFoundError as exc:
        if exc.name != "infergate_worker_hf.testmodels.generative":
            raise
    else:
        folders.extend(generative.build_generative(out))
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate_worker_hf.testmodels")
    parser.add_argument("--out", type=Path, required=True, help="folder to build the models in")
    parser.add_argument(
        "--bench", action="store_true", help="also build the MiniLM-sized benchmark classifier"
    )
    args = parser.parse_args(argv)
    for folder in build_all(args.out, bench=args.bench):
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
