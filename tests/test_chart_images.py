"""The service Dockerfiles agree with the repository and the chart (worker-vllm's
image only with the chart: its environment follows vLLM's pins). No image
can be built here (no Docker engine), so they are read: every COPY source
exists, every dependency is pinned, and the command, port and user are the
ones the chart's Deployments use."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from chart_fixtures import ROOT, Chart, container, helm_binary

SERVICES = ("registry", "router", "worker-hf")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += (
            " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        )
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    pairs = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "ci" / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(service: str) -> list[str]:
    project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]
    return [normalise(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) for dep in project["dependencies"]]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    chart = Chart(helm_binary())
    models = {"hf": {"runtime": "huggingface", "modelId": "org/m"}, "auto": {"modelId": "org/m"}}
    manifests = chart.render({"models": models})
    return {
        "router": manifests.one("Deployment", chart.name("router")),
        "registry": manifests.one("Deployment", chart.name("registry")),
        "worker-hf": manifests.one("Deployment", chart.name("worker-hf")),
        "worker-vllm": manifests.one("Deployment", chart.name("worker-auto")),
    }


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_copies_only_what_exists(service: str) -> None:
    steps = instructions(ROOT / "services" / service / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
    copies = [args.split() for keyword, args in steps if keyword == "COPY"]
    assert copies
    for words in copies:
        sources = [w for w in words[:-1] if not w.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{service}: COPY {source} does not exist"
    copied = {w for words in copies for w in words[:-1]}
    assert {"services/common/infergate_common", f"services/{service}/pyproject.toml"} <= copied


@pytest.mark.parametrize("service", SERVICES)
def test_every_dependency_is_pinned_by_the_constraints(service: str) -> None:
    steps = instructions(ROOT / "services" / service / "Dockerfile")
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install --constraint" in args]
    assert installs, "the services are installed with the tested environment's lock as constraints"
    assert "ci/locks/main.txt" in installs[-1]
    assert "./services/common" in installs[-1] and f"./services/{service}" in installs[-1]
    pins = pinned_requirements()
    wanted = set(dependencies("common")) | set(dependencies(service))
    unpinned = sorted(name for name in wanted if not name.startswith("infergate-") and name not in pins)
    assert not unpinned


@pytest.mark.parametrize("service", [*SERVICES, "worker-vllm"])
def test_image_runs_what_the_chart_runs(service: str, rendered: dict[str, dict]) -> None:
    steps = dict(instructions(ROOT / "services" / service / "Dockerfile"))
    spec = container(rendered[service])
    pod_user = rendered[service]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert steps["USER"] == str(pod_user)
    assert [int(port) for port in steps["EXPOSE"].split()] == [p["containerPort"] for p in spec["ports"]]
    if service.startswith("worker-"):
        assert json.loads(steps["ENTRYPOINT"]) == spec["command"]
    else:
        assert json.loads(steps["CMD"]) == spec["command"]
