from infergate_common.streams import (
    DeltaEvent,
    ErrorEvent,
    HeartbeatEvent,
    decode_event,
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
