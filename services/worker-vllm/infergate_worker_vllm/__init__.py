"""infergate worker-vllm: vLLM engine behind the internal worker API, and the backend-choosing launcher."""
