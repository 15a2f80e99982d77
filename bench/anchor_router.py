"""vLLM's Rust router (``vllm-router`` from PyPI, pinned in
ci/requirements.txt) in front of given workers, started without its Python
launcher (which imports FastAPI and uvicorn for its debugging-only Python
balancer; the Rust router needs neither).

    python -m bench.anchor_router --port 8301 --worker_url http://127.0.0.1:8300
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker_url", action="append", required=True)
    parser.add_argument("--policy", default="round_robin")
    args = parser.parse_args()
    from vllm_router.router import Router
    from vllm_router.router_args import RouterArgs

    router_args = RouterArgs(
        worker_urls=args.worker_url,
        host=args.host,
        port=args.port,
        policy=args.policy,
        log_level="warn",
        worker_startup_check_interval=1,
        worker_startup_timeout_secs=60,
    )
    Router.from_args(router_args).start()


if __name__ == "__main__":
    main()
