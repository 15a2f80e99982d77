"""A trivial OpenAI backend for the overhead scenario's anchor: it answers
``/v1/completions`` (and chat) at once with a fixed 16-token completion,
``/health`` and ``/v1/models``, on aiohttp with uvloop. vLLM's router runs
in front of it the way infergate's router runs in front of the benchmark
engine, so each router's added latency is measured the same way.

    python -m bench.trivial_openai --port 8300
"""

from __future__ import annotations

import argparse
import time

import orjson
from aiohttp import web

TEXT = "".join(f"tok{i} " for i in range(16))


def _completion(kind: str) -> bytes:
    choice: dict[str, object] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if kind == "chat.completion":
        choice["message"] = {"role": "assistant", "content": TEXT}
    else:
        choice["text"] = TEXT
    return orjson.dumps(
        {
            "id": "cmpl-trivial",
            "object": kind,
            "created": int(time.time()),
            "model": "trivial",
            "choices": [choice],
            "usage": {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25},
        }
    )


COMPLETION = _completion("text_completion")
CHAT = _completion("chat.completion")
MODELS = orjson.dumps({"object": "list", "data": [{"id": "trivial", "object": "model", "owned_by": "bench"}]})


async def completions(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=COMPLETION, content_type="application/json")


async def chat(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=CHAT, content_type="application/json")


async def models(_: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    for path in ("/health", "/health_generate", "/get_server_info", "/get_model_info"):
        app.router.add_get(path, health)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
