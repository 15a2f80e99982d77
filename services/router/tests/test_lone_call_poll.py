"""The event loop polls instead of sleeping while a process's only call to a
worker is out and that kind of call is usually quick: on gevent's real loop
and sockets. Whether the loop polled is read from libev's own count of its
polls (``loop.iteration``): thousands in a few milliseconds of polling, a
handful when it sleeps."""

from __future__ import annotations

import time
from typing import Any

import gevent
import gevent.socket
from gevent import pywsgi

from infergate_router import lone_call_poll
from infergate_router.http_server import RouterHandler
from infergate_router.lone_call_poll import LoneCallPoll

# Windows far longer than the answers below, so that no test depends on how
# fast this machine is: only on whether the loop blocked.
LONG_WINDOW_US = 200_000


def _polls_while(wait: gevent.Greenlet | float) -> int:
    """How many times the loop polled while waiting for ``wait`` (a greenlet
    to finish, or a number of seconds)."""
    loop = gevent.get_hub().loop
    before = loop.iteration
    if isinstance(wait, float):
        gevent.sleep(wait)
    else:
        wait.join()
    return int(loop.iteration - before)


def test_an_idle_loop_sleeps() -> None:
    assert _polls_while(0.02) < 10


def test_a_lone_call_keeps_the_loop_polling_until_it_is_answered_and_other_greenlets_run() -> None:
    poll = LoneCallPoll(LONG_WINDOW_US)
    a, b = gevent.socket.socketpair()
    try:
        began = poll.begin("quick")
        assert poll.polling and poll.outstanding == 1
        gevent.spawn_later(0.02, b.sendall, b"answer")
        ran: list[bool] = []
        gevent.spawn_later(0.005, ran.append, True)
        polls = _polls_while(gevent.spawn(a.recv, 16))
        assert ran == [True]
        assert polls > 100
        poll.end("quick", began)
        assert not poll.polling and poll.outstanding == 0
        # The answer took about 20 ms; that is now the kind's usual time.
        assert 15_000_000 <= poll.usual_ns["quick"] < LONG_WINDOW_US * 1000
        assert _polls_while(0.02) < 10
    finally:
        a.close()
        b.close()


def test_the_poll_ends_after_the_window_though_the_call_is_still_out() -> None:
    poll = LoneCallPoll(5_000)
    began = poll.begin("slow to answer")
    assert poll.polling
    gevent.sleep(0.03)
    assert not poll.polling and poll.outstanding == 1
    assert _polls_while(0.02) < 10
    poll.end("slow to answer", began)


def test_the_poll_lasts_twice_the_kinds_usual_time() -> None:
    poll = LoneCallPoll(LONG_WINDOW_US)
    poll.usual_ns["known"] = 5_000_000
    began = poll.begin("known")
    assert poll.polling
    gevent.sleep(0.03)  # three times 2 x 5 ms
    assert not poll.polling
    poll.end("known", began)


def test_a_kind_usually_slower_than_the_window_is_not_polled_for() -> None:
    poll = LoneCallPoll(5_000)
    for _ in range(2):
        began = poll.begin("long generation")
        gevent.sleep(0.02)
        poll.end("long generation", began)
    assert poll.usual_ns["long generation"] > 5_000_000
    began = poll.begin("long generation")
    assert not poll.polling
    poll.end("long generation", began)
    # Another kind to the same process is still polled for.
    began = poll.begin("classifier")
    assert poll.polling
    poll.end("classifier", began)


def test_a_kinds_usual_time_moves_a_quarter_of_the_way_to_each_new_answer() -> None:
    poll = LoneCallPoll(LONG_WINDOW_US)
    poll.end("k", poll.begin("k") - 8_000_000)
    first = poll.usual_ns["k"]
    assert first >= 8_000_000
    poll.end("k", poll.begin("k") - 16_000_000)
    second = poll.usual_ns["k"]
    assert first + (16_000_000 - first) // 4 <= second < first + (17_000_000 - first) // 4


def test_a_busy_process_does_not_poll() -> None:
    poll = LoneCallPoll(LONG_WINDOW_US)
    first = poll.begin("a")
    assert poll.polling
    second = poll.begin("b")
    gevent.sleep(0)
    assert not poll.polling
    # Back to one call out: that call was not lone when it began, so still no poll.
    poll.end("b", second)
    assert _polls_while(0.02) < 10
    poll.end("a", first)
    # A new lone call polls again.
    third = poll.begin("a")
    assert poll.polling
    poll.end("a", third)


def test_a_zero_window_never_polls() -> None:
    poll = LoneCallPoll(0)
    began = poll.begin("k")
    assert not poll.polling
    poll.end("k", began)


def test_a_process_with_another_request_in_flight_does_not_poll() -> None:
    """An open stream is a request in flight with no call out: the process
    relays its tokens, and a new stream's first call is not lone."""
    in_flight = [2]
    poll = LoneCallPoll(LONG_WINDOW_US, lambda: in_flight[0])
    began = poll.begin("stream start")
    assert not poll.polling
    poll.end("stream start", began)
    # The other request ends: a lone call polls again, until another request comes.
    in_flight[0] = 1
    began = poll.begin("stream start")
    assert poll.polling
    in_flight[0] = 2
    assert _polls_while(0.02) < 10
    assert not poll.polling
    poll.end("stream start", began)


def test_a_process_under_load_does_not_poll_for_its_odd_lone_call_until_it_is_lone_again() -> None:
    in_flight = [5]
    poll = LoneCallPoll(LONG_WINDOW_US, lambda: in_flight[0])
    for _ in range(64):
        poll.end("k", poll.begin("k"))
    assert poll.lone_share < 0.1
    # One request in flight now and then: not polled for.
    in_flight[0] = 1
    began = poll.begin("k")
    assert not poll.polling
    poll.end("k", began)
    # Lone calls one after another: polled for again once 9 in 10 recent ones were lone.
    lone_calls = 0
    began = poll.begin("k")
    while not poll.polling:
        poll.end("k", began)
        lone_calls += 1
        assert lone_calls < 64
        began = poll.begin("k")
    assert poll.lone_share >= 0.9 and lone_calls > 16
    poll.end("k", began)


def _requests_apart(poll: LoneCallPoll, gaps_s: list[float]) -> None:
    """Requests handled one at a time, ``gaps_s`` apart."""
    poll.request_arrived()
    for gap in gaps_s:
        poll.request_done()
        gevent.sleep(gap)
        poll.request_arrived()


def test_between_requests_a_process_polls_once_the_next_request_usually_comes_soon() -> None:
    poll = LoneCallPoll(LONG_WINDOW_US)
    poll.request_arrived()
    poll.request_done()
    assert not poll.polling  # no gap seen yet
    gevent.sleep(0.005)
    poll.request_arrived()
    assert 5_000_000 <= poll.usual_gap_ns < LONG_WINDOW_US * 1000
    poll.request_done()
    assert poll.polling
    ran: list[bool] = []
    gevent.spawn_later(0.002, ran.append, True)
    assert _polls_while(0.005) > 100
    assert ran == [True]
    # The next request ends the poll.
    poll.request_arrived()
    assert not poll.polling
    assert _polls_while(0.02) < 10
    poll.request_done()
    # Nor does it outlast twice the usual gap (about 2 x 5 ms).
    gevent.sleep(0.03)
    assert not poll.polling
    assert _polls_while(0.02) < 10


def test_no_poll_between_requests_while_another_request_is_handled() -> None:
    poll = LoneCallPoll(LONG_WINDOW_US)
    _requests_apart(poll, [0.002, 0.002])
    poll.request_arrived()  # a second request, a stream say
    poll.request_done()
    assert poll.requests == 1 and not poll.polling
    assert _polls_while(0.02) < 10
    poll.request_done()
    assert poll.polling


def test_a_process_whose_requests_come_with_pauses_learns_not_to_poll_between_them() -> None:
    poll = LoneCallPoll(5_000)
    _requests_apart(poll, [0.001, 0.001, 0.001])
    poll.request_done()
    assert poll.polling
    gevent.sleep(0.1)  # a pause, counted as four windows
    poll.request_arrived()
    assert poll.usual_gap_ns > 5_000_000
    poll.request_done()
    assert not poll.polling
    assert _polls_while(0.02) < 10
    # Requests one after another again: polled for within a few.
    poll.request_arrived()
    for _ in range(8):
        if poll.usual_gap_ns <= 5_000_000:
            break
        poll.request_done()
        gevent.sleep(0.0005)
        poll.request_arrived()
    poll.request_done()
    assert poll.polling


def test_a_zero_window_never_polls_between_requests() -> None:
    poll = LoneCallPoll(0)
    _requests_apart(poll, [0.001, 0.001])
    poll.request_done()
    assert not poll.polling


class _NoAccessLog:
    """What the router's handler reads of gunicorn's log: access logging off."""

    access_log_enabled = False

    def write(self, *_args: Any) -> None:
        pass


def test_the_routers_http_server_tells_the_process_poll_of_each_request() -> None:
    """gevent's server with the router's handler, three requests on one
    keep-alive connection: each counted when its request line is read and
    done when its response is sent, and the gaps between them learned."""
    poll = LoneCallPoll(LONG_WINDOW_US)
    seen: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(poll.requests)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    lone_call_poll.serve_process(poll)
    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, handler_class=RouterHandler, log=_NoAccessLog())
    server.start()
    client = gevent.socket.create_connection(server.address)
    try:
        for _ in range(3):
            client.sendall(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nok"):
                chunk = client.recv(4096)
                assert chunk
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 5
            while poll.requests and time.monotonic() < deadline:
                gevent.sleep(0.001)
            assert poll.requests == 0
        assert seen == [1, 1, 1]
        assert poll.usual_gap_ns > 0
    finally:
        client.close()
        server.stop()
        lone_call_poll.serve_process(None)


def test_no_poll_for_the_next_request_after_a_call_slower_than_the_window() -> None:
    poll = LoneCallPoll(50_000)
    _requests_apart(poll, [0.001, 0.001])
    poll.end("encoder", poll.begin("encoder") - 100_000_000)  # a 100 ms forward pass
    poll.request_done()
    assert not poll.polling
    assert _polls_while(0.02) < 10
    # The next request's call is quick again: polled for after it.
    poll.request_arrived()
    poll.end("classifier", poll.begin("classifier"))
    poll.request_done()
    assert poll.polling
