"""One module per measured scenario; each has ``NAME`` and ``run(ctx)``."""
