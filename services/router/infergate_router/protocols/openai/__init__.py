"""The OpenAI API under ``/openai/v1``."""
