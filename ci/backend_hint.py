"""Would ``BACKEND=auto`` serve a model on vLLM? For ``make run`` (ci/run.sh),
before .venv-vllm exists: prints one line, ``vllm: <why>`` or
``huggingface: <why>``.

    .venv/bin/python ci/backend_hint.py MODEL_ID

It reads the model's config with transformers and infers the task with
worker-hf's own rules; vLLM serves text generation here (worker-vllm's
``backend_choice``, which makes the final choice once vLLM is installed and
checks the architecture against vLLM's registry).
"""

from __future__ import annotations

import sys


def hint(model_id: str) -> str:
    from infergate_worker_hf.loading import load_config
    from infergate_worker_hf.settings import HFWorkerSettings
    from infergate_worker_hf.task_inference import infer_task

    try:
        settings = HFWorkerSettings(model_id=model_id, model_name="m")
        config = load_config(settings)
        task = infer_task(config, settings.model_path(), None)
    except Exception as exc:  # unreadable config, unknown task: the launcher would say the same
        message = getattr(exc, "message", None) or str(exc)
        return f"huggingface: its config cannot be read here ({message.splitlines()[0][:200]})"
    architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architecture"
    if task.value != "text_generation":
        return f"huggingface: its task is {task.value}, and vLLM serves text generation here"
    return f"vllm: {architectures} is a text generation model"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(hint(sys.argv[1]))
