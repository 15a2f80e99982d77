"""The router's gunicorn worker class: gunicorn's ``gevent_pywsgi`` worker
(gevent's own HTTP server) with four costs of each request and token taken out.

* **Request headers.** gevent hands the header block to the standard
  library's e-mail parser (``http.client.parse_headers``): about 34 µs per
  request on the benchmark machine, more than a tenth of a trivial request
  under this server. :func:`read_headers` reads the lines under the same
  limits and builds the same message object itself when every line is a
  plain ``Name: value`` in printable ASCII; anything else (folded lines,
  bytes outside printable ASCII, a line the e-mail parser would take for
  the body) goes to the e-mail parser as before, so the environ a request
  gets never depends on which way its headers were read.
* **Writes.** gevent's ``sendall`` asks the kernel for the socket's send
  buffer size (a ``getsockopt`` call) and sets up its timeout bookkeeping on
  every call: per token of a stream, where the response is one small chunk
  per token. :meth:`RouterHandler._sendall` first offers the bytes to the
  socket without waiting (:func:`.socket_send.sendall`); only what the
  kernel did not take goes through gevent's ``sendall``, which waits for
  the socket as before. TLS sockets always take gevent's path.
* **The Date header.** gevent formats it for every response; it changes
  once a second, and :func:`http_date` formats it once a second.
* **The access log.** gunicorn's handler builds its access-log record
  (timestamps, the request's header list) for every request and only then
  asks whether access logging is on. The router logs one line per request
  itself and runs with the access log off; the record is now built only
  when it is on.

``gunicorn_conf`` selects :class:`RouterWorker`.
"""

from __future__ import annotations

import email.parser
import http.client
import re
import time
from typing import Any

from gevent import pywsgi
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from . import lone_call_poll, socket_send

# The standard library's limits (http.client's _MAXLINE and _MAXHEADERS).
MAX_LINE = 65536
MAX_HEADERS = 100
# A block of fields the e-mail parser reads as exactly one (name, value)
# pair each: a name of the characters it accepts in one, a colon, printable
# ASCII or tabs, one line end; then the empty line.
_PLAIN_BLOCK = re.compile(rb"(?:[!-9;-~]+:[\t -~]*\r?\n)*\r?\n")
# One field of such a block: the value loses its leading blanks, as the
# e-mail parser (compat32) strips them.
_FIELD = re.compile(r"([!-9;-~]+):[\t ]*([\t -~]*)\r?\n")


def _read_lines(rfile: Any) -> list[bytes]:
    """The header block's lines, terminator included, as
    ``http.client.parse_headers`` reads them (same limits, same errors)."""
    lines: list[bytes] = []
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            return lines


def _plain_fields(lines: list[bytes]) -> list[tuple[str, str]] | None:
    """(name, value) pairs, as the e-mail parser (compat32) would store them,
    when every line is a plain field and the block ends with an empty line;
    None otherwise."""
    block = b"".join(lines)
    if _PLAIN_BLOCK.fullmatch(block) is None:
        return None
    return _FIELD.findall(block.decode("ascii"))


def read_headers(rfile: Any) -> Any:
    """What gevent's ``headers_factory`` returns for the header block at
    ``rfile``, read without the e-mail parser when the block is plain."""
    try:
        lines = _read_lines(rfile)
    except http.client.LineTooLong:
        # gevent's own answer to an over-long line: the handler replies 400.
        message = pywsgi.OldMessage()
        message.status = "Line too long"
        return message
    fields = _plain_fields(lines)
    if fields is None:
        parser = email.parser.Parser(_class=pywsgi.OldMessage)
        return parser.parsestr(b"".join(lines).decode("iso-8859-1"))
    message = pywsgi.OldMessage()
    message._headers = fields
    message.set_payload("")
    return message


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header's value now, as gevent formats it, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, pywsgi.format_date_time(now))
    return _date[1]


class RouterHandler(PyWSGIHandler):
    # The process's poll, told of the request being handled (lone_call_poll:
    # it may poll for the next request once this one is done).
    _told: lone_call_poll.LoneCallPoll | None = None

    def MessageClass(self, rfile: Any, *_args: Any) -> Any:
        return read_headers(rfile)

    def read_requestline(self) -> Any:
        line = super().read_requestline()
        poll = lone_call_poll.for_process()
        if line and poll is not None:
            poll.request_arrived()
            self._told = poll
        return line

    def handle_one_request(self) -> Any:
        try:
            return super().handle_one_request()
        finally:
            poll = self._told
            if poll is not None:
                self._told = None
                poll.request_done()

    def finalize_headers(self) -> None:
        # gevent's attribute, reset for each response: a Date the app set.
        if getattr(self, "provided_date", None) is None:
            date = http_date()
            self.response_headers.append((b"Date", date))
            self.provided_date = date
        super().finalize_headers()

    def _sendall(self, data: bytes | bytearray) -> None:
        """gevent's, with the bytes first offered to the non-blocking socket
        underneath (a plain TCP socket only: never under TLS)."""
        try:
            socket_send.sendall(self.socket, data)
        except OSError as exc:
            # As gevent records a failed write for its log and handling.
            self.status = f"socket error: {exc}"
            code = getattr(self, "code", None)
            if isinstance(code, int) and code > 0:
                self.code = -code
            raise
        self.response_length += len(data)

    def log_request(self) -> None:
        if getattr(self.server.log, "access_log_enabled", True):
            super().log_request()


class RouterWorker(GeventPyWSGIWorker):
    wsgi_handler = RouterHandler
