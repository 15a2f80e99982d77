"""infergate router: the public OpenAI and KServe v1/v2 surface."""
