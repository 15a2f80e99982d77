"""Strict schema validation of the add-on kinds the chart renders
(ServiceMonitor, ScaledObject, HTTPRoute), which kubernetes-validate has no
schema for, against their CRDs' own schemas vendored in tests/crd_schemas/
(ci/vendor_crd_schemas.py regenerates them).

Strict as kubernetes-validate's ``--strict``: an object schema that lists its
properties rejects any other (unless the CRD marks it
``x-kubernetes-preserve-unknown-fields``), so a misspelt field fails.

    python ci/validate_addons.py RENDERED.yaml [...]

Exits 1 listing every error; documents of built-in kinds are left to
kubernetes-validate. An add-on kind without a vendored schema is an error.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent.parent / "tests" / "crd_schemas"
ADDON_GROUPS = ("monitoring.coreos.com/", "keda.sh/", "gateway.networking.k8s.io/")


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema where listed properties are the only ones allowed."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_schemas(folder: Path = SCHEMAS) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        document = json.loads(path.read_text())
        schema = strict(copy.deepcopy(document["schema"]))
        # metadata is checked by the API server's own rules, not the CRD's.
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        found[(document["apiVersion"], document["kind"])] = schema
    return found


def documents(paths: Iterable[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in paths:
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document:
                yield path, document


def is_addon(document: dict[str, Any]) -> bool:
    return str(document.get("apiVersion", "")).startswith(ADDON_GROUPS)


def errors_of(document: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    key = (document.get("apiVersion", ""), document.get("kind", ""))
    schema = schemas.get(key)
    name = f"{key[1]}/{document.get('metadata', {}).get('name', '?')}"
    if schema is None:
        return [f"{name}: no vendored schema for {key[0]} {key[1]} in {SCHEMAS}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{name}: {'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def main(argv: list[str]) -> int:
    schemas = load_schemas()
    failures: list[str] = []
    checked = 0
    for path, document in documents(Path(arg) for arg in argv):
        if is_addon(document):
            checked += 1
            failures += [f"{path.name}: {line}" for line in errors_of(document, schemas)]
    for line in failures:
        print(line, file=sys.stderr)
    if not failures:
        print(f"add-on kinds: {checked} resources valid against the vendored CRD schemas", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
