"""Write charts/infergate/dashboards/infergate.json, the Grafana dashboard the
chart ships (loaded by the Grafana sidecar through a labelled ConfigMap).

    .venv/bin/python ci/dashboard.py

The panels are written here as data so that every query is in one readable
place; tests/test_chart_dashboard.py checks that each query names a metric
the router or the workers export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent.parent / "charts" / "infergate" / "dashboards" / "infergate.json"
SEL = 'namespace=~"$namespace",model=~"$model"'
WSEL = 'namespace=~"$namespace",infergate_io_model=~"$model"'
RATE = "$__rate_interval"
MODEL_VALUES = 'label_values(infergate_router_requests_in_flight{namespace=~"$namespace"}, model)'


def quantiles(metric: str, selector: str = SEL) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, model) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{int(q * 100)} {{{{model}}}}",
        )
        for q in (0.5, 0.95)
    ]


PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Time to first token", "s", quantiles("infergate_router_time_to_first_token_seconds")),
    ("Time per output token", "s", quantiles("infergate_router_time_per_output_token_seconds")),
    (
        "Output tokens per second",
        "short",
        [(f"sum by (model) (rate(infergate_router_output_tokens_total{{{SEL}}}[{RATE}]))", "{{model}}")],
    ),
    (
        "Requests per second by status",
        "reqps",
        [
            (
                f'sum by (status) (rate(infergate_router_requests_total{{namespace=~"$namespace"}}[{RATE}]))',
                "{{status}}",
            )
        ],
    ),
    (
        "Errors per second",
        "reqps",
        [
            (
                'sum by (route, status) (rate(infergate_router_requests_total{namespace=~"$namespace",'
                f'status=~"5.."}}[{RATE}]))',
                "{{status}} {{route}}",
            ),
            (
                "sum by (model, outcome) "
                f'(rate(infergate_router_streams_total{{{SEL},outcome!="done"}}[{RATE}]))',
                "streams {{outcome}} {{model}}",
            ),
        ],
    ),
    (
        "Requests in flight and waiting",
        "short",
        [
            (f"sum by (model) (infergate_router_requests_in_flight{{{SEL}}})", "in flight {{model}}"),
            (f"sum by (model) (infergate_worker_requests_running{{{SEL}}})", "running {{model}}"),
            (f"sum by (model) (infergate_worker_requests_waiting{{{SEL}}})", "waiting {{model}}"),
            (
                'sum by (model_name) (vllm:num_requests_waiting{namespace=~"$namespace"})',
                "vLLM waiting {{model_name}}",
            ),
        ],
    ),
    ("Queue time in the worker", "s", quantiles("infergate_worker_queue_time_seconds")),
    ("Batch size", "short", quantiles("infergate_worker_batch_size")),
    (
        "Replicas serving",
        "short",
        [
            (
                f"count by (infergate_io_model) (up{{{WSEL}}} == 1)",
                "{{infergate_io_model}}",
            )
        ],
    ),
]


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "$datasource"},
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "$datasource"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "infergate",
        "title": "infergate",
        "tags": ["infergate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
                variable("namespace", "label_values(infergate_router_requests_total, namespace)"),
                variable("model", MODEL_VALUES),
            ]
        },
        "panels": [panel(i, *spec) for i, spec in enumerate(PANELS)],
    }


if __name__ == "__main__":
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(TARGET)
