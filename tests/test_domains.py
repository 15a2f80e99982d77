"""Models reached by host name: ``<model>.<domain>`` and explicit hosts;
restricted models only there."""

from __future__ import annotations

import time

import requests
from conftest import StartWorker
from harness.stack import Stack


def _chat(stack: Stack, model: str, host: str | None = None) -> requests.Response:
    headers = {"Host": host} if host else {}
    return requests.post(
        f"{stack.openai_url}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        headers=headers,
        timeout=30,
    )


def test_model_with_domains_answers_on_its_host_names(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("dom-open", "--tokens", "2", env={"INFERGATE_DOMAINS": "example.test,internal.corp"})
    assert _chat(stack, "dom-open", "dom-open.example.test").status_code == 200
    assert _chat(stack, "dom-open", "dom-open.internal.corp:8080").status_code == 200
    # Not restricted: the router's own host reaches it too.
    assert _chat(stack, "dom-open").status_code == 200


def test_restricted_model_is_hidden_from_the_router_host(stack: Stack, null_worker: StartWorker) -> None:
    null_worker(
        "dom-private",
        "--tokens",
        "2",
        env={"INFERGATE_DOMAINS": "example.test", "INFERGATE_RESTRICTED": "true"},
    )
    null_worker("dom-public", "--tokens", "2")
    assert _chat(stack, "dom-private", "dom-private.example.test").status_code == 200
    hidden = _chat(stack, "dom-private")
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "model_not_found"
    # A host that belongs to one model reaches that model only.
    assert _chat(stack, "dom-public", "dom-private.example.test").status_code == 404
    listed = requests.get(f"{stack.openai_url}/models", timeout=10).json()["data"]
    assert "dom-private" not in {m["id"] for m in listed}
    on_host = requests.get(
        f"{stack.openai_url}/models", headers={"Host": "dom-private.example.test"}, timeout=10
    ).json()["data"]
    assert {m["id"] for m in on_host} == {"dom-private"}


def test_domains_set_in_the_registry_reach_the_router_at_once(stack: Stack, null_worker: StartWorker) -> None:
    null_worker("dom-later", "--tokens", "2")
    assert _chat(stack, "dom-later").status_code == 200
    response = requests.put(
        f"{stack.registry_url}/registry/models/dom-later/domains",
        json={"domains": ["late.test"], "hosts": ["chat.late.test"], "restricted": True},
        headers=stack.internal_headers(),
        timeout=10,
    )
    assert response.status_code == 200
    changed_at = time.monotonic()
    # The change message drops the router's cache: no waiting for a TTL.
    while _chat(stack, "dom-later").status_code != 404:
        assert time.monotonic() - changed_at < 1.0
        time.sleep(0.05)
    assert _chat(stack, "dom-later", "chat.late.test").status_code == 200
    assert _chat(stack, "dom-later", "dom-later.late.test").status_code == 200
