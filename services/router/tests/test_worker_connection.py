"""The router's keep-alive connections to a worker, against a real socket
server that answers each request with a scripted byte string: the request
as it goes out, every way an answer's body can be delimited, reuse and
non-reuse of a connection, and answers that are not HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from infergate_router.worker_connection import ConnectFailed, InvalidResponse, WorkerConnections


class ScriptedServer:
    """Reads each request (head and ``Content-Length`` body) and answers it
    with the next scripted answer; ``close_after`` closes the connection
    after that answer. Keeps every request and counts connections."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.answers: list[tuple[bytes, bool]] = []
        self.requests: list[bytes] = []
        self.connections = 0
        self.open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def answer(self, raw: bytes, close_after: bool = False) -> None:
        with self._lock:
            self.answers.append((raw, close_after))

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._answer_each(conn)
        except OSError:
            pass  # closed by the test's end (or the client's)
        finally:
            conn.close()

    def _answer_each(self, conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            while len(data) < length:
                data += conn.recv(65536)
            with self._lock:
                self.requests.append(head + b"\r\n\r\n" + data[:length])
                raw, close_after = self.answers.pop(0)
            data = data[length:]
            conn.sendall(raw)
            if close_after:
                return

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for conn in self.open:
                conn.close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def _pool(server: ScriptedServer) -> WorkerConnections:
    return WorkerConnections("127.0.0.1", server.port, 2.0, 8, {"Content-Type": "application/json"})


def _ok(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def test_a_request_goes_out_whole_and_its_connection_is_reused(server: ScriptedServer) -> None:
    pool = _pool(server)
    for i in range(3):
        server.answer(_ok(b'{"n": %d}' % i, b"Content-Type: application/json", b"Server: waitress"))
    assert pool.post("/generate", b'{"a": 1}', 2.0) == (200, b'{"n": 0}')
    assert pool.post("/generate", b"", 2.0) == (200, b'{"n": 1}')
    assert pool.post("/cancel/x", b"xyz", 2.0) == (200, b'{"n": 2}')
    assert server.connections == 1
    host = f"Host: 127.0.0.1:{server.port}".encode()
    assert server.requests == [
        b"POST /generate HTTP/1.1\r\n" + host + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 8\r\n\r\n" + b'{"a": 1}',
        b"POST /generate HTTP/1.1\r\n" + host + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"POST /cancel/x HTTP/1.1\r\n" + host + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\n\r\nxyz",
    ]
    pool.close()


def test_a_body_larger_than_one_read_arrives_whole(server: ScriptedServer) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, more than one recv
    server.answer(_ok(body))
    assert _pool(server).post("/encode", b"{}", 5.0) == (200, body)


def test_a_chunked_body_with_extensions_and_trailers(server: ScriptedServer) -> None:
    pool = _pool(server)
    server.answer(
        b"HTTP/1.1 400 BAD REQUEST\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server.answer(_ok(b"next"))
    assert pool.post("/generate", b"{}", 2.0) == (400, b"hello 0123456789")
    # The chunked answer ended where it said: the connection is reused.
    assert pool.post("/generate", b"{}", 2.0) == (200, b"next")
    assert server.connections == 1


def test_answers_that_end_the_connection_are_not_reused(server: ScriptedServer) -> None:
    pool = _pool(server)
    # HTTP/1.0 without a length: the body runs to the end of the connection.
    server.answer(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", close_after=True)
    assert pool.post("/generate", b"{}", 2.0) == (200, b"to the end")
    server.answer(_ok(b"closing", b"Connection: close"), close_after=True)
    assert pool.post("/generate", b"{}", 2.0) == (200, b"closing")
    server.answer(_ok(b"kept", b"Connection: keep-alive").replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert pool.post("/generate", b"{}", 2.0) == (200, b"kept")
    server.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert pool.post("/cancel/a", b"", 2.0) == (204, b"")
    assert server.connections == 3  # one each for the first two, one for the last two


def test_bytes_past_the_body_are_never_read_as_the_next_answer(server: ScriptedServer) -> None:
    pool = _pool(server)
    server.answer(_ok(b"one") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
    server.answer(_ok(b"two"))
    assert pool.post("/generate", b"{}", 2.0) == (200, b"one")
    assert pool.post("/generate", b"{}", 2.0) == (200, b"two")
    assert server.connections == 2


def test_an_idle_connection_the_worker_closed_is_replaced(server: ScriptedServer) -> None:
    pool = _pool(server)
    server.answer(_ok(b"first"))
    assert pool.post("/generate", b"{}", 2.0) == (200, b"first")
    with server._lock:
        for conn in server.open:
            conn.shutdown(socket.SHUT_RDWR)
    server.answer(_ok(b"second"))
    assert pool.post("/generate", b"{}", 2.0) == (200, b"second")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP/1.x"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "in the middle of its answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "before it answered"),
    ],
)
def test_an_answer_that_is_not_http_fails_and_is_not_reused(
    server: ScriptedServer, raw: bytes, message: str
) -> None:
    pool = _pool(server)
    server.answer(raw, close_after=True)
    with pytest.raises(InvalidResponse, match=message):
        pool.post("/generate", b"{}", 2.0)
    server.answer(_ok(b"fine"))
    assert pool.post("/generate", b"{}", 2.0) == (200, b"fine")
    assert server.connections == 2


def test_a_worker_that_does_not_answer_in_time_is_a_timeout(server: ScriptedServer) -> None:
    pool = _pool(server)
    server.answer(b"")  # the server sends nothing and keeps the connection
    with pytest.raises(TimeoutError):
        pool.post("/generate", b"{}", 0.2)


def test_a_closed_port_fails_to_connect_with_nothing_sent() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    pool = WorkerConnections("127.0.0.1", port, 1.0, 8, {})
    with pytest.raises(ConnectFailed) as caught:
        pool.post("/generate", b"{}", 1.0)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
