"""The benchmark engine's prefix cache model and load meter, and the CPU
count the router's process count defaults to."""

from __future__ import annotations

import os
import time
from pathlib import Path

from infergate_common.cpus import available_cpus
from infergate_common.null_prefix_cache import LoadMeter, PrefixCacheModel

SYSTEM = " ".join(f"s{i}" for i in range(64))


def test_the_second_prompt_with_a_shared_prefix_pays_only_for_its_own_part() -> None:
    cache = PrefixCacheModel(capacity_blocks=100, block_tokens=16, ms_per_token=0.0)
    cache.prefill(SYSTEM + " user one asks")
    cache.prefill(SYSTEM + " user two asks something else")
    stats = cache.stats()
    assert stats["prefills"] == 2
    assert stats["cached_tokens"] == 64  # the four full blocks of the shared system prompt
    assert stats["prompt_tokens"] == 67 + 69


def test_time_grows_with_the_uncached_part() -> None:
    cache = PrefixCacheModel(capacity_blocks=100, block_tokens=16, ms_per_token=0.5)
    started = time.monotonic()
    cold = cache.prefill(SYSTEM)
    cold_s = time.monotonic() - started
    started = time.monotonic()
    warm = cache.prefill(SYSTEM)
    warm_s = time.monotonic() - started
    assert cold == 64 * 0.0005 and warm == 0.0
    assert cold_s >= 0.03 > warm_s


def test_the_cache_is_bounded_least_recently_used_out() -> None:
    cache = PrefixCacheModel(capacity_blocks=4, block_tokens=16, ms_per_token=0.0)
    other = " ".join(f"o{i}" for i in range(64))
    cache.prefill(SYSTEM)
    cache.prefill(other)  # evicts all of SYSTEM's four blocks
    assert cache.stats()["cached_blocks"] == 4
    cache.prefill(SYSTEM)
    assert cache.stats()["cached_tokens"] == 0


def test_the_load_meter_integrates_requests_in_flight() -> None:
    meter = LoadMeter()
    meter.enter()
    meter.enter()
    time.sleep(0.05)
    meter.leave()
    meter.leave()
    stats = meter.stats()
    assert stats["in_flight"] == 0 and stats["requests"] == 2
    assert 0.09 <= stats["in_flight_seconds"] < 0.5


def test_available_cpus_follows_the_cgroup_quota(tmp_path: Path) -> None:
    allowed = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(2, allowed)  # 1.5 CPUs: two processes
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == allowed
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    # cgroup v1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
