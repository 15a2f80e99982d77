"""infergate batch: OpenAI's Batch API (files and batches) on Celery."""

__version__ = "0.1.0"
