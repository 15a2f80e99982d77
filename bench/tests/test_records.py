from __future__ import annotations

from pathlib import Path

from bench.client import STAMP, _content_tokens
from bench.profiling import top_functions
from bench.records import RequestRecord, RunResult, percentiles_ms


def test_percentiles_are_in_milliseconds() -> None:
    out = percentiles_ms([0.001 * i for i in range(1, 101)])
    assert out["p50"] == 50.5
    assert out["max"] == 100.0
    assert percentiles_ms([])["p50"] is None


def test_summary_counts_only_successful_requests() -> None:
    good = RequestRecord("k", latency_s=0.01, ttft_s=0.002, gaps_s=[0.001, 0.003], tokens=3, status=200)
    bad = RequestRecord("k", latency_s=5.0, status=503, error="busy")
    summary = RunResult("run", 2, 1.0, [good, bad]).summary()
    assert summary["requests"] == 2
    assert summary["errors"] == 1
    assert summary["error_kinds"] == {"503": 1}
    assert summary["tokens"] == 3
    assert summary["latency_ms"]["p50"] == 10.0
    assert summary["itl_ms"]["max"] == 3.0


def test_stamped_tokens_and_openai_chunks_are_read() -> None:
    line = b'{"choices":[{"index":0,"text":"tok3@123456789012 ","finish_reason":null}]}'
    assert [int(s) for s in STAMP.findall(line)] == [123456789012]
    chat = {"choices": [{"delta": {"content": "hi"}}], "usage": None}
    assert _content_tokens(chat) == (1, None, "")
    assert _content_tokens({"choices": [], "usage": {"completion_tokens": 7}}) == (0, 7, "")
    assert _content_tokens({"error": {"message": "boom"}}) == (0, None, "boom")


def test_profile_shares_count_self_and_stack(tmp_path: Path) -> None:
    collapsed = tmp_path / "p.txt"
    collapsed.write_text("main;handle;send 3\nmain;handle 1\n")
    top = top_functions(collapsed)
    assert top["self"][0] == ("send", 75.0)
    assert ("main", 100.0) in top["total"]
