"""Free TCP ports, chosen at run time: several test runs share the machine.

A port is chosen some time before its service binds it (a router's metrics
port, for one, is bound only once gunicorn's master is up). A port from the
kernel's ephemeral range (``bind(0)``) can meanwhile become the source port
of any outgoing connection on the machine, and the service then fails with
"Address already in use". So ports are drawn below that range, where the
kernel never picks source ports, each checked free by binding it, and never
handed out twice by this process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000
TRIES = 500
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    start = _ephemeral_start()
    if start - LOWEST >= 1_000:
        for _ in range(TRIES):
            port = random.randrange(LOWEST, start)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    # No room below the ephemeral range: the kernel's choice.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port
