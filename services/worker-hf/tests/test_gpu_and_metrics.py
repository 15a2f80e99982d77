"""A GPU given to the pod but unusable (here: NVIDIA_VISIBLE_DEVICES set on a
machine without CUDA, exactly what a CPU image on a GPU node sees) is
reported loudly at start and in /info, and is a start-up error with
``--device cuda``; the worker's Prometheus metrics on their own port."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import requests
from conftest import WORKER_ENV
from harness.ports import free_port
from harness.processes import Process
from harness.redis_server import RedisServer
from hf_worker_process import worker_command
from prometheus_client.parser import text_string_to_metric_families

from infergate_common.gpu_check import unusable_gpu_reason


def test_reason_only_when_a_gpu_was_given_and_cuda_is_unusable() -> None:
    no_files: Callable[[], list[str]] = list
    assert unusable_gpu_reason(False, environ={}, device_files=no_files) == ""
    assert unusable_gpu_reason(False, environ={"NVIDIA_VISIBLE_DEVICES": "void"}, device_files=no_files) == ""
    assert unusable_gpu_reason(True, environ={"NVIDIA_VISIBLE_DEVICES": "0"}, device_files=no_files) == ""
    reason = unusable_gpu_reason(
        False, "no driver", environ={"NVIDIA_VISIBLE_DEVICES": "GPU-1"}, device_files=no_files
    )
    assert "NVIDIA_VISIBLE_DEVICES=gpu-1" in reason and "no driver" in reason and "--device cuda" in reason
    from_files = unusable_gpu_reason(False, environ={}, device_files=lambda: ["/dev/nvidia0"])
    assert "/dev/nvidia0" in from_files


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_unusable_gpu_is_reported_and_metrics_are_served(
    models: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    model = models / "tiny-bert-classifier"
    port, metrics_port = free_port(), free_port()
    flags = ("--metrics_bind", f"127.0.0.1:{metrics_port}", "--max_batch_wait_ms", "50")
    process = Process(
        "worker-gpu-given",
        worker_command(model, port, redis_server.url, *flags),
        tmp_path / "worker.log",
        env={**WORKER_ENV, "NVIDIA_VISIBLE_DEVICES": "0"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http_ok(f"{url}/readyz", timeout_s=120)
        info = requests.get(f"{url}/info", timeout=10).json()
        assert info["device"] == "cpu"
        assert "NVIDIA_VISIBLE_DEVICES=0" in info["extra"]["gpu_unusable"]
        log = (tmp_path / "worker.log").read_text()
        assert log.count("GPU UNUSABLE") == 1, log[-3000:]

        def encode(index: int) -> None:
            body = {"request_id": f"m{index}", "inputs": ["a b c", "d e"]}
            assert requests.post(f"{url}/encode", json=body, timeout=60).status_code == 200

        threads = [threading.Thread(target=encode, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert metrics.status_code == 200
        got = samples(metrics.text)
        name = (("model", model.name),)
        assert got[("infergate_worker_gpu_unusable", name)] == 1.0
        assert got[("infergate_worker_requests_waiting", name)] == 0.0
        assert got[("infergate_worker_requests_running", name)] == 0.0
        # One queue time per request, 12 rows over the encode batches.
        assert got[("infergate_worker_queue_time_seconds_count", name)] == 6.0
        batches = (("model", model.name), ("phase", "encode"))
        assert got[("infergate_worker_batch_size_sum", batches)] == 12.0
        # Batched across requests: fewer batches than requests.
        assert got[("infergate_worker_batch_size_count", batches)] < 6
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 404
    finally:
        process.stop()


def test_device_cuda_without_a_usable_gpu_is_a_startup_error(
    models: Path, run_worker_hf: Callable[..., object], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "0")
    result = run_worker_hf(models / "tiny-bert-classifier", "--device", "cuda", timeout_s=120)
    assert result.returncode == 2  # type: ignore[attr-defined]
    error = result.stderr  # type: ignore[attr-defined]
    assert "--device cuda asked but CUDA is not available" in error
    assert "NVIDIA_VISIBLE_DEVICES=0" in error
