"""The bare forward-pass ceiling of an encoder: batches of ``--batch``
inputs, tokenised once, run back to back in ``torch.inference_mode()`` with
``--threads`` torch threads, no server. Prints one JSON line per slice:
rows per second, milliseconds per batch, the time measured.

With ``--slices``, one process measures many slices: it loads the model,
warms up, prints ``ready``, then runs one slice for each number of seconds
read from stdin (a line each). The batching scenario runs it so, the same
thread count as the worker, in slices alternated with slices of the served
throughput: like the worker, the process is long-lived, so a slice never
pays a process's start. On the virtual machines measured here, a new
process's first second or two of compute ran at about half speed now and
then (``docs/performance.md``, twelfth round), and when every slice was a
new process that fell on the ceiling alone.

    python -m bench.forward_ceiling --model var/models/minilm-classifier --batch 32 --threads 2
    python -m bench.forward_ceiling --model DIR --slices   # then "2.0" lines on stdin
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

# Warm-up before the first slice: the model's first passes, then passes for
# this long, so that a slice starts on a process already at full speed.
WARMUP_S = 1.0
# Passes not counted at the start of every slice, as the served side leaves
# out its first requests (one batch of the 32 clients): the process sat idle
# between slices, and its first passes after that ran up to twice as slow.
SLICE_WARMUP_PASSES = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--slices", action="store_true", help="one slice per number of seconds on stdin")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .scenarios.batching import sentence

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    inputs = tokenizer([sentence(i) for i in range(args.batch)], padding=True, return_tensors="pt")

    def measure(seconds: float) -> dict[str, Any]:
        with torch.inference_mode():
            for _ in range(SLICE_WARMUP_PASSES):
                model(**inputs).logits.argmax(dim=-1).tolist()
            batches = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                model(**inputs).logits.argmax(dim=-1).tolist()
                batches += 1
            wall = time.perf_counter() - started
        return {
            "batch": args.batch,
            "threads": args.threads,
            "batches": batches,
            "rows_per_s": round(batches * args.batch / wall, 1),
            "ms_per_batch": round(1000 * wall / batches, 3),
            "wall_s": round(wall, 4),
        }

    with torch.inference_mode():
        for _ in range(3):
            model(**inputs)
    measure(WARMUP_S)
    if not args.slices:
        print(json.dumps(measure(args.seconds)), flush=True)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(measure(float(line))), flush=True)


if __name__ == "__main__":
    main()
