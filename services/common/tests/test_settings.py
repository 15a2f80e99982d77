import pytest
from pydantic import BaseModel

from infergate_common.errors import StartupError
from infergate_common.settings import load_settings


class Example(BaseModel):
    redis_url: str = "redis://default"
    port: int = 8080
    domains: list[str] = []


def test_reads_prefixed_environment_and_lists() -> None:
    env = {"INFERGATE_PORT": "9000", "INFERGATE_DOMAINS": "a.com, b.org", "OTHER": "x"}
    settings = load_settings(Example, env)
    assert settings.port == 9000
    assert settings.domains == ["a.com", "b.org"]
    assert settings.redis_url == "redis://default"


def test_json_lists_and_overrides_win() -> None:
    env = {"INFERGATE_DOMAINS": '["x.io"]', "INFERGATE_PORT": "1"}
    settings = load_settings(Example, env, port=2, redis_url=None)
    assert settings.domains == ["x.io"]
    assert settings.port == 2


def test_bad_value_is_a_startup_error_naming_the_field() -> None:
    with pytest.raises(StartupError, match="port"):
        load_settings(Example, {"INFERGATE_PORT": "eighty"})
