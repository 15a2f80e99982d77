"""The settings of a worker-tabular process: KServe's tabular server
arguments (``--model_name``, ``--model_dir``, ``--nthread``) on top of what
every worker needs."""

from __future__ import annotations

from pydantic import Field

from infergate_common.worker_runner import WorkerServerSettings


class TabularWorkerSettings(WorkerServerSettings):
    model_name: str = "model"
    # A local folder; wins over model_dir (as worker-hf's --model_id).
    model_id: str | None = None
    model_dir: str = "/mnt/models"
    # Threads one prediction uses (KServe's --nthread, and its default: 1). More
    # helps large batches on cores of their own; OpenMP threads that share busy
    # cores with the HTTP threads wait on each other, so raise it with care.
    nthread: int = Field(1, ge=1)
    # scikit-learn: answer predict_proba instead of predict unless a request says otherwise
    # (KServe's PREDICT_PROBA).
    predict_proba: bool = False
    # The most requests one prediction call takes (1 turns cross-request batching off).
    max_batch_size: int = Field(64, ge=1)
    # The most rows one prediction call takes (a larger single request still runs alone).
    max_batch_rows: int = Field(8192, ge=1)
    # How long a batch that is not full waits for more requests; 0: a batch
    # runs as soon as the model is free (requests gather only while one runs).
    max_batch_wait_ms: float = Field(0.0, ge=0)

    def model_path(self) -> str:
        return self.model_id or self.model_dir
