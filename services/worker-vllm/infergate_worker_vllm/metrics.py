"""worker-vllm's metrics: vLLM's own Prometheus series (``vllm:*``, from its
``PrometheusStatLogger``, into the default registry that the worker's
metrics port serves) plus infergate's worker series, fed from the same
scheduler statistics, so that dashboards and the KEDA ``waiting`` trigger
read ``infergate_worker_requests_waiting`` whatever the backend.

vLLM calls :meth:`InfergateStatLogger.record` after each engine step with the
scheduler's counts and the step's finished requests.
"""

from __future__ import annotations

from typing import Any

from infergate_common import worker_metrics


def stat_logger_factories(model: str) -> list[Any]:
    """The ``stat_loggers`` to give ``AsyncLLM``: vLLM's Prometheus logger and ours."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerBase

    class InfergateStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index
            worker_metrics.RUNNING.labels(model=model).set(0)
            worker_metrics.WAITING.labels(model=model).set(0)

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                running = int(scheduler_stats.num_running_reqs)
                worker_metrics.RUNNING.labels(model=model).set(running)
                worker_metrics.WAITING.labels(model=model).set(int(scheduler_stats.num_waiting_reqs))
                if running:
                    worker_metrics.observe_batch(model, "decode", running)
            if iteration_stats is not None:
                for finished in getattr(iteration_stats, "finished_requests", ()):
                    worker_metrics.observe_queue_time(model, float(finished.queued_time))

        def log_engine_initialized(self) -> None:
            return None

    return [PrometheusStatLogger, InfergateStatLogger]
