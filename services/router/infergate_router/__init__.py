"""infergate router: the public OpenAI and KServe v1/v2 surface."""

__version__ = "0.1.0"
