"""Manage API keys: ``python -m infergate_router.keys <command>``.

Against a running stack (the registry's admin API; ``--registry_url`` or
``INFERGATE_REGISTRY_URL``, the admin token in ``INFERGATE_ADMIN_TOKEN`` or
``--admin_token_file``):

    create --name team-a --models 'llama-*,minilm' --rpm 60 --tpm 100000 --max_concurrent 4
    list | get <id> | rotate <id> | revoke <id>

Without one, for the keys file of a Kubernetes Secret (``router.auth.keys``
in the chart):

    new --name team-a --models llama --rpm 60   # a key, and its entry for the file
    hash                                        # the digest of a key read from stdin

``create``, ``rotate`` and ``new`` print the key once, on the first line
(``new`` prints the file entry, with the key's digest only, on the second);
nothing stores it in clear.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import requests

from infergate_common.api_keys import KeySpec, digest, make_record


def _spec(args: argparse.Namespace) -> KeySpec:
    metadata = dict(item.split("=", 1) for item in args.metadata or [])
    return KeySpec(
        name=args.name,
        models=[m.strip() for m in args.models.split(",") if m.strip()] or ["*"],
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrent=args.max_concurrent,
        expires_at=time.time() + args.expires_in_s if args.expires_in_s else None,
        metadata=metadata,
    )


def _token(args: argparse.Namespace) -> str:
    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    token = os.environ.get("INFERGATE_ADMIN_TOKEN", "")
    if not token:
        raise SystemExit("set INFERGATE_ADMIN_TOKEN or pass --admin_token_file")
    return token


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    url = args.registry_url.rstrip("/") + "/admin/keys" + path
    try:
        response = requests.request(
            method, url, json=body, headers={"Authorization": f"Bearer {_token(args)}"}, timeout=10
        )
    except requests.RequestException as exc:
        raise SystemExit(f"cannot reach the registry at {args.registry_url}: {exc}") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": {"message": response.text}}
    if not response.ok:
        message = payload.get("error", {}).get("message", response.reason)
        raise SystemExit(f"HTTP {response.status_code}: {message}")
    return payload


def _show_created(payload: dict[str, Any]) -> None:
    print(payload["key"])
    print(json.dumps(payload["record"], indent=2), file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m infergate_router.keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--registry_url", default=os.environ.get("INFERGATE_REGISTRY_URL", "http://127.0.0.1:8090")
    )
    top.add_argument("--admin_token_file", default="")
    commands = top.add_subparsers(dest="command", required=True)
    for name in ("create", "new"):
        command = commands.add_parser(name)
        command.add_argument("--name", default="")
        command.add_argument("--models", default="*", help="comma-separated names or glob patterns")
        command.add_argument("--rpm", type=int, help="requests per minute")
        command.add_argument("--tpm", type=int, help="tokens per minute")
        command.add_argument("--max_concurrent", type=int, help="requests in flight at once")
        command.add_argument("--expires_in_s", type=float, help="the key stops working after this long")
        command.add_argument("--metadata", nargs="*", help="key=value pairs")
    commands.add_parser("list")
    for name in ("get", "rotate", "revoke"):
        commands.add_parser(name).add_argument("id")
    commands.add_parser("hash", help="the SHA-256 digest of a key read from stdin")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "create":
        _show_created(_call(args, "POST", "", _spec(args).model_dump(mode="json")))
    elif args.command == "list":
        print(json.dumps(_call(args, "GET", "")["keys"], indent=2))
    elif args.command == "get":
        print(json.dumps(_call(args, "GET", f"/{args.id}"), indent=2))
    elif args.command == "rotate":
        _show_created(_call(args, "POST", f"/{args.id}/rotate"))
    elif args.command == "revoke":
        print(json.dumps(_call(args, "DELETE", f"/{args.id}")))
    elif args.command == "new":
        secret, record = make_record(_spec(args))
        print(secret)
        print(json.dumps(record.model_dump(exclude_none=True)))
    elif args.command == "hash":
        print(digest(sys.stdin.readline().strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
