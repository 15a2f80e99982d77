"""infergate's benchmarks: a purpose-built async load generator, the stacks
it drives (real redis-server, registry, router under gunicorn+gevent,
workers) and one module per measured scenario. ``python -m bench --help``."""

import sys
from pathlib import Path

# The benchmarks reuse the integration tests' harness (tests/harness).
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
