"""Start-up: context length, flags and their errors, device and dtype,
readiness; through the real ``python -m infergate_worker_hf``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_worker_process import HFWorker
from transformers import BertConfig, GPT2Config, PretrainedConfig

from infergate_common.errors import StartupError
from infergate_worker_hf.cli import parse_settings
from infergate_worker_hf.loading import derive_max_model_len, resolve_dtype
from infergate_worker_hf.settings import HFWorkerSettings

# ------------------------------------------------------------ context length


def test_context_length_from_max_position_embeddings() -> None:
    assert derive_max_model_len(BertConfig(max_position_embeddings=128), None) == 128


def test_context_length_from_n_positions() -> None:
    assert derive_max_model_len(GPT2Config(n_positions=64), None) == 64


def test_smallest_context_key_wins() -> None:
    config = BertConfig(max_position_embeddings=512)
    config.seq_length = 256
    assert derive_max_model_len(config, None) == 256


def test_tokenizer_and_sentence_transformers_limits_lower_the_default() -> None:
    config = BertConfig(max_position_embeddings=512)
    assert derive_max_model_len(config, None, tokenizer_max=128) == 128
    assert derive_max_model_len(config, None, encoder_max=256) == 256
    # A tokenizer without a declared limit reports a huge sentinel.
    assert derive_max_model_len(config, None, tokenizer_max=int(1e30)) == 512


def test_requested_context_length_at_or_below_the_model_is_kept() -> None:
    assert derive_max_model_len(BertConfig(max_position_embeddings=128), 64) == 64
    assert derive_max_model_len(BertConfig(max_position_embeddings=128), 128) == 128


def test_requested_context_length_above_the_model_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    with pytest.raises(StartupError, match="greater than the model's context length"):
        derive_max_model_len(BertConfig(max_position_embeddings=128), 1000)
    monkeypatch.setenv("ALLOW_LONG_MAX_MODEL_LEN", "1")
    assert derive_max_model_len(BertConfig(max_position_embeddings=128), 1000) == 1000


def test_config_model_max_length_allows_a_longer_request() -> None:
    config = BertConfig(max_position_embeddings=128)
    config.model_max_length = 256
    assert derive_max_model_len(config, None) == 128
    assert derive_max_model_len(config, 200) == 200
    with pytest.raises(StartupError):
        derive_max_model_len(config, 300)


def test_config_without_a_length_defaults_to_2048() -> None:
    assert derive_max_model_len(PretrainedConfig(), None) == 2048
    # Without a limit in the config, the requested length is taken as is.
    assert derive_max_model_len(PretrainedConfig(), 10_000) == 10_000


# --------------------------------------------------------------- settings


def test_dtype_auto_is_float32_on_cpu_and_float16_on_gpu() -> None:
    settings = HFWorkerSettings(dtype="auto")
    assert resolve_dtype(settings, torch.device("cpu")) is torch.float32
    assert resolve_dtype(settings, torch.device("cuda")) is torch.float16
    assert resolve_dtype(HFWorkerSettings(dtype="bfloat16"), torch.device("cpu")) is torch.bfloat16


def test_cli_uses_kserve_names_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERGATE_PORT", "9100")
    monkeypatch.setenv("INFERGATE_MAX_BATCH_SIZE", "8")
    settings = parse_settings(
        [
            "--model_id", "some/model", "--max_length", "64", "--task", "fill-mask",
            "--tensor_input_names", "input_ids,attention_mask", "--return_probabilities",
            "--disable_lower_case", "--max-batch-size", "4", "--gpu-memory-utilization", "0.3",
        ]
    )  # fmt: skip
    assert settings.model_path() == "some/model"
    assert settings.max_model_len == 64
    assert settings.task is not None and settings.task.value == "fill_mask"
    assert settings.tensor_input_names == ["input_ids", "attention_mask"]
    assert settings.return_probabilities and settings.disable_lower_case
    assert settings.port == 9100  # from the environment
    assert settings.max_batch_size == 4  # the flag wins over the environment


def test_cli_rejects_exclusive_output_flags() -> None:
    with pytest.raises(StartupError, match="mutually exclusive"):
        parse_settings(["--return_probabilities", "--return_raw_logits"])


def test_model_id_wins_over_model_dir() -> None:
    assert HFWorkerSettings(model_dir="/models/a", model_id="/models/b").model_path() == "/models/b"
    assert HFWorkerSettings(model_dir="/models/a").model_path() == "/models/a"


# ------------------------------------------------- the real process, failing

RunWorker = Callable[..., subprocess.CompletedProcess[str]]
StartWorker = Callable[..., HFWorker]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("worker-hf: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_max_model_len_above_the_model_exits_with_the_message(run_worker_hf: RunWorker, models: Path) -> None:
    result = run_worker_hf(models / "tiny-bert-classifier", "--max_model_len", "4096")
    assert result.returncode != 0
    line = _one_error_line(result.stderr)
    assert "--max_model_len 4096 is greater than the model's context length" in line
    assert "max_position_embeddings=128" in line


def test_exclusive_flags_exit_with_the_message(run_worker_hf: RunWorker, models: Path) -> None:
    result = run_worker_hf(models / "tiny-bert-classifier", "--return_probabilities", "--return_raw_logits")
    assert result.returncode != 0
    assert "mutually exclusive" in _one_error_line(result.stderr)


def test_unknown_task_exits_with_kserve_message(run_worker_hf: RunWorker, models: Path) -> None:
    result = run_worker_hf(models / "tiny-bert-classifier", "--task", "question_answering")
    assert result.returncode != 0
    assert "Task question_answering is not supported. Currently supported tasks are:" in _one_error_line(
        result.stderr
    )


def test_uninferable_architecture_exits_with_kserve_message(run_worker_hf: RunWorker, tmp_path: Path) -> None:
    config = BertConfig(architectures=["FancyNewThing"]).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_worker_hf(tmp_path)
    assert result.returncode != 0
    assert _one_error_line(result.stderr).endswith(
        "Task couldn't be inferred from FancyNewThing. Please manually set task option."
    )


def test_missing_model_folder_exits_with_the_message(run_worker_hf: RunWorker, tmp_path: Path) -> None:
    result = run_worker_hf(tmp_path / "nothing-here")
    assert result.returncode != 0
    assert "cannot load the model config" in _one_error_line(result.stderr)


# ------------------------------------------------ the real process, serving


def test_info_reports_what_is_served(hf_worker: StartWorker, models: Path) -> None:
    worker = hf_worker(models / "tiny-bert-classifier", "--max_model_len", "64")
    info = worker.info()
    assert info["task"] == "sequence_classification"
    assert info["backend"] == "huggingface"
    assert info["architecture"] == "BertForSequenceClassification"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["max_model_len"] == 64
    assert info["extra"]["labels"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert worker.get("/readyz").json() == {"ready": True}


def test_backend_vllm_given_to_worker_hf_still_serves(hf_worker: StartWorker, models: Path) -> None:
    worker = hf_worker(models / "tiny-bert-encoder", "--backend", "vllm")
    info = worker.info()
    assert info["backend"] == "huggingface"
    assert "--backend vllm" in info["backend_reason"]


def test_tokenize_and_detokenize(hf_worker: StartWorker, models: Path) -> None:
    worker = hf_worker(models / "tiny-bert-classifier", "--max_model_len", "64")
    tokens = worker.post("/tokenize", {"prompt": "hello dog"}).json()
    assert tokens["count"] == len(tokens["tokens"]) == 4  # [CLS] hello dog [SEP]
    assert tokens["max_model_len"] == 64
    bare = worker.post("/tokenize", {"prompt": "hello dog", "add_special_tokens": False}).json()
    assert bare["tokens"] == tokens["tokens"][1:-1]
    text = worker.post("/detokenize", {"tokens": bare["tokens"]}).json()
    assert text == {"prompt": "hello dog"}
    bad = worker.post("/detokenize", {"tokens": [10**9]})
    assert bad.status_code == 400
    # An encoder has no chat template: a clear 400.
    chat = worker.post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "chat template" in chat.json()["error"]["message"]


def test_engine_is_not_ready_until_loaded(models: Path) -> None:
    from infergate_common.worker_api import Task
    from infergate_worker_hf.encoders import SequenceClassificationEngine

    settings = HFWorkerSettings(model_id=str(models / "tiny-bert-classifier"), model_name="cls")
    engine = SequenceClassificationEngine(settings, Task.SEQUENCE_CLASSIFICATION, None)
    assert engine.ready() == (False, "loading")
    before = engine.info()
    assert before.name == "cls" and before.max_model_len is None and before.backend.value == "huggingface"
    engine.load()
    try:
        assert engine.ready() == (True, "")
        assert engine.info().max_model_len == 128
    finally:
        engine.shutdown()
    assert engine.ready() == (False, "shutting down")


def test_backend_reason_names_who_chose() -> None:
    from infergate_worker_hf.base_engine import backend_reason

    assert "huggingface asked" in backend_reason(HFWorkerSettings(backend="huggingface"))
    assert backend_reason(HFWorkerSettings(backend_reason="vLLM lacks BertModel")) == "vLLM lacks BertModel"
