"""Text generation and text2text generation with transformers: continuous
batching for decoder-only models, wave batching for encoder-decoder ones."""
