import redis

from infergate_common.streams import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    HeartbeatEvent,
    StreamWriter,
    decode_event,
    encode_event,
    is_final,
    stream_key,
)
from infergate_common.worker_api import TokenLogprob, Usage


def test_encode_decode_round_trip() -> None:
    delta = DeltaEvent(index=1, text="é", tokens=2, logprobs=[TokenLogprob(token="é", logprob=-0.5)])
    decoded = decode_event({k.encode(): v.encode() for k, v in encode_event(delta).items()})
    assert decoded == delta
    assert decode_event(encode_event(HeartbeatEvent())) == HeartbeatEvent()
    assert not is_final(delta)
    unknown = decode_event({"event": "bogus", "data": "{}"})
    assert isinstance(unknown, ErrorEvent)


def test_writer_ends_once_and_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    writer = StreamWriter(client, "req-1", prefix="t", ttl_s=60)
    writer.delta(0, "hello", 1)
    writer.heartbeat()
    writer.delta(0, " world", 1, finish_reason="stop")
    writer.done({0: "stop"}, Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5))
    writer.error("late error")
    writer.delta(0, "late", 1)
    key = stream_key("t", "req-1")
    entries = [decode_event(fields) for _, fields in client.xrange(key)]
    assert [type(e) for e in entries] == [DeltaEvent, HeartbeatEvent, DeltaEvent, DoneEvent]
    assert isinstance(entries[-1], DoneEvent)
    assert entries[-1].finish_reasons == {"0": "stop"}
    assert entries[-1].usage.total_tokens == 5
    assert 0 < client.ttl(key) <= 60
