import pytest

from infergate_common.streams import (
    DeltaEvent,
    ErrorEvent,
    HeartbeatEvent,
    decode_event,
    decode_fields,
    deltas_in_order,
    encode_event,
    is_final,
)
from infergate_common.worker_api import TokenLogprob


def test_encode_decode_round_trip() -> None:
    delta = DeltaEvent(seq=4, index=1, text="é", tokens=2, logprobs=[TokenLogprob(token="é", logprob=-0.5)])
    decoded = decode_event({k.encode(): v.encode() for k, v in encode_event(delta).items()})
    assert decoded == delta
    assert decode_event(encode_event(HeartbeatEvent())) == HeartbeatEvent()
    assert not is_final(delta)
    unknown = decode_event({"event": "bogus", "data": "{}"})
    assert isinstance(unknown, ErrorEvent)


def test_raw_field_lists_decode_like_maps() -> None:
    delta = DeltaEvent(seq=7, text="tok ", tokens=1)
    fields = encode_event(delta)
    raw = [b"event", fields["event"].encode(), b"data", fields["data"].encode()]
    assert decode_fields(raw) == delta
    # Another field order (not what the workers write) still decodes.
    assert decode_fields([raw[2], raw[3], raw[0], raw[1]]) == delta
    assert isinstance(decode_fields([b"event", b"bogus", b"data", b"{}"]), ErrorEvent)


def _delta(seq: int, text: str = "") -> DeltaEvent:
    return DeltaEvent(seq=seq, text=text or f"t{seq}", tokens=1)


def test_deltas_in_order_drops_a_retried_write_that_landed_twice() -> None:
    # A batch of deltas 1-2 retried after a lost reply: Redis holds it twice.
    written = [_delta(0), _delta(1), _delta(2), HeartbeatEvent(), _delta(1), _delta(2), _delta(3)]
    assert [d.seq for d in deltas_in_order(written)] == [0, 1, 2, 3]


def test_deltas_in_order_refuses_a_hole_or_a_repeat_that_differs() -> None:
    with pytest.raises(ValueError, match="delta 1 missing"):
        deltas_in_order([_delta(0), _delta(2)])
    with pytest.raises(ValueError, match="delta 1 written twice"):
        deltas_in_order([_delta(0), _delta(1), _delta(1, "other")])
