"""infergate worker-hf: any Hugging Face model with transformers and torch."""
