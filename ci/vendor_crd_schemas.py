"""Regenerate tests/crd_schemas/ from the add-ons' published CRDs.

The chart renders resources of three add-ons (Prometheus Operator's
ServiceMonitor, KEDA's ScaledObject, the Gateway API's HTTPRoute) that
kubernetes-validate has no schema for. Their CRDs carry an OpenAPI v3
schema per served version; this script keeps just those schemas, one JSON
file per kind and version, named as kubernetes-validate names its own
(``<kind>-<group prefix>-<version>.json``), with where they came from.

    python ci/vendor_crd_schemas.py CRD.yaml SOURCE [CRD.yaml SOURCE ...]

SOURCE is a note stored with the schema (repository, tag, path). The
vendored set came from:

- prometheus-operator/prometheus-operator v0.93.0,
  example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
- kedacore/keda v2.20.2, config/crd/bases/keda.sh_scaledobjects.yaml
- kubernetes-sigs/gateway-api v1.6.1,
  config/crd/standard/gateway.networking.k8s.io_httproutes.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

TARGET = Path(__file__).resolve().parent.parent / "tests" / "crd_schemas"


def vendor(crd_path: Path, source: str) -> list[Path]:
    crd = yaml.safe_load(crd_path.read_text())
    spec = crd["spec"]
    kind = spec["names"]["kind"]
    group_prefix = spec["group"].split(".")[0]
    written = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = version["schema"]["openAPIV3Schema"]
        out = TARGET / f"{kind.lower()}-{group_prefix}-{version['name']}.json"
        document = {
            "source": source,
            "apiVersion": f"{spec['group']}/{version['name']}",
            "kind": kind,
            "schema": schema,
        }
        out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        written.append(out)
    return written


def main(argv: list[str]) -> None:
    if len(argv) % 2 or not argv:
        sys.exit(__doc__)
    TARGET.mkdir(parents=True, exist_ok=True)
    for crd, source in zip(argv[::2], argv[1::2], strict=True):
        for path in vendor(Path(crd), source):
            print(path.relative_to(TARGET.parent.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
