"""Shared by every service's test suite: the integration tests' harness
(``tests/harness``) is importable, so the suites draw their ports as the
harness does (``harness.ports.free_port``: below the kernel's ephemeral
range, so no outgoing connection takes one before its service binds it)."""

from __future__ import annotations

import sys
from pathlib import Path

_HARNESS = str(Path(__file__).resolve().parents[1] / "tests")
if _HARNESS not in sys.path:
    sys.path.append(_HARNESS)
