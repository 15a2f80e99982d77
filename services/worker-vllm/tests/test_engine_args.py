from __future__ import annotations

from pathlib import Path

import pytest

from infergate_common.errors import StartupError
from infergate_worker_vllm.engine_args import (
    CPU_MEMORY_UTILIZATION,
    default_tensor_parallel_size,
    parse_engine_flags,
    resolve_engine_args,
)
from infergate_worker_vllm.settings import VllmWorkerSettings

pytestmark = pytest.mark.vllm


def test_engine_flags_pass_through_with_vllm_types() -> None:
    flags = parse_engine_flags(
        [
            "--gpu-memory-utilization", "0.5",
            "--enforce-eager",
            "--tensor_parallel_size=2",
            "--quantization", "fp8",
            "--max-num-batched-tokens", "4096",
        ]
    )  # fmt: skip
    assert flags == {
        "gpu_memory_utilization": 0.5,
        "enforce_eager": True,
        "tensor_parallel_size": 2,
        "quantization": "fp8",
        "max_num_batched_tokens": 4096,
    }


def test_no_engine_flags() -> None:
    assert parse_engine_flags([]) == {}


def test_unknown_flag_is_a_startup_error_naming_it() -> None:
    with pytest.raises(StartupError, match="--no-such-flag"):
        parse_engine_flags(["--enforce-eager", "--no-such-flag", "3"])


def test_bad_value_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="gpu-memory-utilization"):
        parse_engine_flags(["--gpu-memory-utilization", "most"])


def test_model_is_a_worker_argument_not_an_engine_flag() -> None:
    with pytest.raises(StartupError, match="--model_id"):
        parse_engine_flags(["--model", "/somewhere"])


@pytest.mark.parametrize(("gpus", "size"), [(0, 1), (1, 1), (4, 4)])
def test_tensor_parallel_default_is_visible_gpus_and_never_zero(gpus: int, size: int) -> None:
    assert default_tensor_parallel_size(gpus) == size


@pytest.fixture(scope="module")
def llama(test_models: Path) -> str:
    return str(test_models / "tiny-llama")


def test_cpu_defaults(llama: str) -> None:
    settings = VllmWorkerSettings(model_id=llama, model_name="llama", max_model_len=256)
    args = resolve_engine_args(settings, gpus=0)
    assert args.model == llama
    assert args.served_model_name == "llama"
    assert args.tensor_parallel_size == 1
    assert args.dtype == "float32"
    assert args.enforce_eager is True
    assert args.gpu_memory_utilization == CPU_MEMORY_UTILIZATION
    assert args.max_model_len == 256


def test_gpu_defaults_use_every_gpu_and_the_model_dtype(llama: str) -> None:
    args = resolve_engine_args(VllmWorkerSettings(model_id=llama), gpus=4)
    assert args.tensor_parallel_size == 4
    assert args.dtype == "auto"
    assert args.enforce_eager is False


def test_given_flags_and_kserve_arguments_win(llama: str) -> None:
    settings = VllmWorkerSettings(
        model_id=llama,
        dtype="bfloat16",
        max_num_seqs=8,
        engine_flags={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5},
    )
    args = resolve_engine_args(settings, gpus=0)
    assert args.tensor_parallel_size == 2
    assert args.gpu_memory_utilization == 0.5
    assert args.dtype == "bfloat16"
    assert args.max_num_seqs == 8


def test_max_num_seqs_left_to_vllm_unless_given(llama: str) -> None:
    assert resolve_engine_args(VllmWorkerSettings(model_id=llama), gpus=0).max_num_seqs is None


def test_tensor_parallel_zero_is_refused(llama: str) -> None:
    settings = VllmWorkerSettings(model_id=llama, engine_flags={"tensor_parallel_size": 0})
    with pytest.raises(StartupError, match="at least 1"):
        resolve_engine_args(settings, gpus=0)
