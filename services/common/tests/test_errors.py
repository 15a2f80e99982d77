from infergate_common.errors import (
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
    from_payload,
    to_payload,
)


def test_payload_round_trip_keeps_class_status_and_fields() -> None:
    original = InvalidRequest("temperature must be <= 2", param="temperature", code="bad")
    rebuilt = from_payload(400, to_payload(original))
    assert isinstance(rebuilt, InvalidRequest)
    assert (rebuilt.status, rebuilt.message, rebuilt.param, rebuilt.code) == (
        400,
        "temperature must be <= 2",
        "temperature",
        "bad",
    )


def test_statuses_map_to_their_classes() -> None:
    assert isinstance(from_payload(503, {"error": {"message": "x"}}), ServiceUnavailable)
    assert isinstance(from_payload(504, {"error": "slow"}), GatewayTimeout)
    unknown = from_payload(599, "not json")
    assert isinstance(unknown, UpstreamError)
    assert unknown.status == 599
    assert "599" in unknown.message


def test_model_not_found_uses_kserve_message() -> None:
    error = ModelNotFound("llama")
    assert error.status == 404
    assert error.message == "Model with name llama does not exist."
    assert error.code == "model_not_found"
