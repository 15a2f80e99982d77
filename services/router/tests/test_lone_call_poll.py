"""The event loop polls instead of sleeping while a process's only call to a
worker is out and that kind of call is usually quick: on gevent's real loop
and sockets. Whether the loop polled is read from libev's own count of its
polls (``loop.iteration``): thousands in a few milliseconds of polling, a
handful when it sleeps."""

from __future__ import annotations

import gevent
import gevent.socket

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
