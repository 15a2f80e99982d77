"""KServe's v2 (Open Inference) protocol under ``/v2``."""
