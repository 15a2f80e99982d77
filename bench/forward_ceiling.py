"""The bare forward-pass ceiling of an encoder: batches of ``--batch``
inputs, tokenised once, run back to back in ``torch.inference_mode()`` with
``--threads`` torch threads, no server. Prints one JSON line: rows per
second, milliseconds per batch, the time measured. The batching scenario
runs it in its own process (the same thread count as the worker), in
slices alternated with slices of the served throughput.

    python -m bench.forward_ceiling --model var/models/minilm-classifier --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .scenarios.batching import sentence

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    inputs = tokenizer([sentence(i) for i in range(args.batch)], padding=True, return_tensors="pt")
    with torch.inference_mode():
        for _ in range(3):
            model(**inputs)
        batches = 0
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            model(**inputs).logits.argmax(dim=-1).tolist()
            batches += 1
        wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "batch": args.batch,
                "threads": args.threads,
                "batches": batches,
                "rows_per_s": round(batches * args.batch / wall, 1),
                "ms_per_batch": round(1000 * wall / batches, 3),
                "wall_s": round(wall, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
