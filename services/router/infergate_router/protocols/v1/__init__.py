"""KServe's v1 protocol under ``/v1/models``."""
