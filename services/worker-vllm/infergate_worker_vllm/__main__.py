"""``python -m infergate_worker_vllm --backend auto|vllm|huggingface ...``
(see :mod:`infergate_worker_vllm.cli`). The guard matters: vLLM starts its
engine in spawned processes, which import this module again."""

from infergate_worker_vllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
