"""The router's gunicorn worker class (``infergate_router.http_server``):
request headers read without the e-mail parser must give exactly what
gevent's own reading gives, and the access log must still work when it is
switched on."""

from __future__ import annotations

import http.client
import io
import json
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from environ_echo_app import APP_DATE, known_bytes
from gevent import pywsgi
from router_processes import Process, free_port

from infergate_router import http_server

HERE = Path(__file__).parent

# (header block, read without the e-mail parser?)
BLOCKS = [
    (b"Host: a\r\nX-A:  b c \r\nContent-Length: 3\r\n\r\n", True),
    (b"Host: a\nX: y\n\n", True),
    (b"X:\r\n\r\n", True),
    (b"X: 1\r\nX: 2\r\n\r\n", True),
    (b"x-y:\tz\t\r\n\r\n", True),
    (b"x-y: \t \r\n\r\n", True),
    (b"A: 1\r\nB:2\n\r\n", True),
    (b"\r\n", True),
    (b"X: a\r\n b\r\n\r\n", False),  # a folded line
    (b"Bad Name: x\r\nY: z\r\n\r\n", False),  # the e-mail parser takes it for the body
    (b"X: caf\xe9\r\n\r\n", False),  # latin-1
    (b"X: a\rb\r\n\r\n", False),  # a bare CR splits the line there
    (b"From x\r\nY: 1\r\n\r\n", False),  # a Unix "From " line
    (b": v\r\n\r\n", False),  # an empty name
    (b"X\t: a\r\n\r\n", False),
    (b"X: a\x0bb\r\n\r\n", False),
    (b"X: 1\r\n", False),  # the connection ended inside the block
    (b"", False),
]


def _what_gevent_reads(message: Any) -> tuple[Any, ...]:
    return (
        message._headers,
        message._payload,
        message.status,
        [type(defect) for defect in message.defects],
        message._unixfrom,
        message.get("content-type"),
        message.getheader("content-length"),
        list(message.headers),
    )


@pytest.mark.parametrize(("block", "plain"), BLOCKS, ids=[repr(b[:24]) for b, _ in BLOCKS])
def test_headers_read_as_gevent_reads_them(block: bytes, plain: bool) -> None:
    ours = http_server.read_headers(io.BytesIO(block + b"BODY"))
    theirs = pywsgi.headers_factory(io.BytesIO(block + b"BODY"))
    assert _what_gevent_reads(ours) == _what_gevent_reads(theirs)
    # Both ways are exercised: the plain blocks skip the e-mail parser.
    assert (http_server._plain_fields(http_server._read_lines(io.BytesIO(block))) is not None) is plain


def test_the_header_block_is_read_up_to_its_end_only() -> None:
    rfile = io.BytesIO(b"Host: a\r\nContent-Length: 4\r\n\r\nBODY")
    http_server.read_headers(rfile)
    assert rfile.read() == b"BODY"


def test_too_many_headers_fail_as_in_the_standard_library() -> None:
    block = b"".join(b"X-%d: v\r\n" % i for i in range(http_server.MAX_HEADERS + 1)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
        http_server.read_headers(io.BytesIO(block))
    with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
        http.client.parse_headers(io.BytesIO(block))


def test_the_date_is_formatted_as_gevent_formats_it_and_moves_on() -> None:
    first = time.time()
    value = http_server.http_date()
    assert value in {pywsgi.format_date_time(int(first)), pywsgi.format_date_time(int(time.time()))}
    # Once a second has passed, the next value is a new one.
    deadline = time.monotonic() + 5
    while int(time.time()) == int(first) and time.monotonic() < deadline:
        time.sleep(0.01)
    before = time.time()
    later = http_server.http_date()
    assert later != value
    assert later in {pywsgi.format_date_time(int(before)), pywsgi.format_date_time(int(time.time()))}


def test_an_over_long_line_gets_gevents_status() -> None:
    block = b"X: " + b"a" * http_server.MAX_LINE + b"\r\n\r\n"
    ours = http_server.read_headers(io.BytesIO(block))
    assert ours.status == pywsgi.headers_factory(io.BytesIO(block)).status == "Line too long"


# ----------------------------------------------------------- under gunicorn

RAW_REQUESTS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\nConnection: close\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
    b'Authorization: Bearer sk-1\r\nConnection: close\r\n\r\n{"a":1}',
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX_Underscore: dropped\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n"
    b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]


def _serve(worker_class: str, workdir: Path, *extra: str) -> Iterator[tuple[Process, int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--worker-class", worker_class, "--workers", "1",
           "--bind", f"127.0.0.1:{port}", "--chdir", str(HERE), *extra, "environ_echo_app:app"]  # fmt: skip
    name = worker_class.rsplit(".", 1)[-1]
    process = Process(f"echo-{name}", cmd, workdir / f"echo-{name}.log")
    try:
        process.wait_until(lambda: _answers(port), "answering")
        yield process, port
    finally:
        process.stop()


def _answers(port: int) -> bool:
    try:
        return _send(port, RAW_REQUESTS[0])[0] == 200
    except OSError:
        return False


def _send(port: int, raw: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def echo_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    workdir = tmp_path_factory.mktemp("http-server")
    access_log = workdir / "access.log"
    ours = _serve("infergate_router.http_server.RouterWorker", workdir, "--access-logfile", str(access_log))
    stock = _serve("gevent_pywsgi", workdir)
    (_, our_port), (_, stock_port) = next(ours), next(stock)
    yield our_port, stock_port, access_log
    for server in (ours, stock):
        next(server, None)


@pytest.mark.parametrize("raw", RAW_REQUESTS, ids=range(len(RAW_REQUESTS)))
def test_the_app_sees_the_same_environ_as_under_gevents_worker(
    echo_servers: tuple[int, int, Path], raw: bytes
) -> None:
    our_port, stock_port, _ = echo_servers
    ours, theirs = _send(our_port, raw), _send(stock_port, raw)
    assert ours[0] == theirs[0] == 200
    assert json.loads(ours[1]) == json.loads(theirs[1])


def test_the_access_log_is_written_when_switched_on(echo_servers: tuple[int, int, Path]) -> None:
    our_port, _, access_log = echo_servers
    _send(our_port, b"GET /logged-path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if access_log.exists() and "/logged-path" in access_log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for /logged-path in {access_log}")


def _head(port: int, path: str) -> list[tuple[str, str]]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    lines = received.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]


def test_the_date_header_is_now_or_the_apps_own(echo_servers: tuple[int, int, Path]) -> None:
    our_port, stock_port, _ = echo_servers
    ours, theirs = _head(our_port, "/a"), _head(stock_port, "/a")
    assert [name for name, _ in ours] == [name for name, _ in theirs]
    dates = [parsedate_to_datetime(value) for name, value in ours + theirs if name == "Date"]
    assert len(dates) == 2
    assert abs(dates[0] - dates[1]) <= timedelta(seconds=1)
    assert abs(dates[0] - datetime.now(UTC)) <= timedelta(seconds=2)
    # A Date the app sets is the only one sent.
    assert [value for name, value in _head(our_port, "/dated") if name == "Date"] == [APP_DATE]


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


@pytest.mark.parametrize(
    ("n", "parts"),
    [(8 << 20, 4), (200_000, 2_000)],
    ids=["8 MB in 4 writes, more than the socket takes at once", "2,000 small writes, as tokens"],
)
def test_response_bodies_arrive_whole(echo_servers: tuple[int, int, Path], n: int, parts: int) -> None:
    our_port, stock_port, _ = echo_servers
    raw = f"GET /bytes?n={n}&parts={parts} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    for port in (our_port, stock_port):
        status, body = _send(port, raw)
        assert status == 200
        assert _dechunk(body) == known_bytes(n)
