"""``socket_send.sendall``: every byte arrives, in order, whether the kernel
takes the write at once or only part of it (the rest then waits for room
through gevent's ``sendall``), on gevent's sockets and the standard
library's; a peer that is gone is an ``OSError``, as with ``sendall``."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest
from environ_echo_app import known_bytes

from infergate_router import socket_send


def _room(a: gevent.socket.socket, b: gevent.socket.socket) -> int:
    """What the kernel holds for the pair at most: a's send buffer and b's receive buffer."""
    return int(
        a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + b.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    )


def _read_exactly(sock: gevent.socket.socket, n: int) -> bytes:
    received = bytearray()
    while len(received) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return bytes(received)


def test_a_small_write_arrives_whole_on_a_gevent_socket() -> None:
    a, b = gevent.socket.socketpair()
    with a, b:
        socket_send.sendall(a, b"one token's chunk")
        assert _read_exactly(b, 17) == b"one token's chunk"


def test_a_write_larger_than_the_socket_takes_waits_for_room_and_arrives_in_order() -> None:
    a, b = gevent.socket.socketpair()
    with a, b:
        # More than the kernel can hold for this pair at once: the first
        # offer is cut short, the rest goes through gevent's sendall.
        data = known_bytes(4 * _room(a, b))
        a.settimeout(10)
        reader = gevent.spawn(_read_exactly, b, len(data))
        socket_send.sendall(a, bytearray(data))
        assert reader.get(timeout=10) == data


def test_a_write_that_cannot_finish_in_time_times_out() -> None:
    a, b = gevent.socket.socketpair()
    with a, b:
        a.settimeout(0.2)
        # Nobody reads b: the part the kernel did not take waits, then times out.
        with pytest.raises(TimeoutError):
            socket_send.sendall(a, known_bytes(4 * _room(a, b)))


def test_a_standard_library_socket_takes_its_own_sendall() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(10)
        socket_send.sendall(a, b"plain")
        assert b.recv(16) == b"plain"


def test_writing_to_a_closed_peer_is_an_os_error() -> None:
    a, b = gevent.socket.socketpair()
    with a:
        b.close()
        with pytest.raises(OSError):
            # The first write may still be taken; the next finds the peer gone.
            for _ in range(3):
                socket_send.sendall(a, b"x" * 1024)
