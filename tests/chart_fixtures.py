"""Rendering charts/infergate with a real helm binary, for the chart tests.

chart = Chart(helm_binary())
manifests = chart.render({"models": {"m": {"modelId": "org/m"}}}, "--api-versions", "keda.sh/v1alpha1")
deployment = manifests.one("Deployment", chart.name("worker-m"))
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "infergate"
EXAMPLES_DIR = CHART_DIR / "examples"
RELEASE = "infergate"

Manifest = dict[str, Any]


def helm_binary() -> str:
    """``INFERGATE_HELM`` (set by ci/chart.sh), else what ci/helm.sh finds or fetches."""
    configured = os.environ.get("INFERGATE_HELM")
    if configured:
        return configured
    found = subprocess.run(
        ["bash", str(ROOT / "ci" / "helm.sh")], check=True, capture_output=True, text=True, timeout=300
    )
    return found.stdout.strip().splitlines()[-1]


class RenderFailed(RuntimeError):
    pass


class Manifests:
    """The documents of one rendering, looked up by kind and name."""

    def __init__(self, documents: list[Manifest]) -> None:
        self.documents = documents

    def __iter__(self) -> Iterator[Manifest]:
        return iter(self.documents)

    def kinds(self) -> set[str]:
        return {doc["kind"] for doc in self.documents}

    def of_kind(self, kind: str) -> list[Manifest]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def names(self, kind: str) -> set[str]:
        return {doc["metadata"]["name"] for doc in self.of_kind(kind)}

    def one(self, kind: str, name: str) -> Manifest:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} {kind} named {name}; have {sorted(self.names(kind))}")
        return found[0]


# Published with no key, the chart refuses to render (tests/test_chart_security.py);
# the tests of everything else render it open on purpose unless they say otherwise.
OPEN_ON_PURPOSE: Mapping[str, Any] = {"router": {"auth": {"allowAnonymous": True}}}


class Chart:
    def __init__(
        self, helm: str, release: str = RELEASE, base: Mapping[str, Any] | None = OPEN_ON_PURPOSE
    ) -> None:
        """``base`` values come before any other (None: the chart's defaults alone)."""
        self.helm = helm
        self.release = release
        self.base = base

    def name(self, suffix: str) -> str:
        """A resource name: ``<full name>-<suffix>``, the full name being the
        release name when it holds the chart's name, else ``<release>-infergate``."""
        full = self.release if "infergate" in self.release else f"{self.release}-infergate"
        return f"{full}-{suffix}"

    def _values_args(self, values: Mapping[str, Any] | None, files: tuple[Path, ...], tmp: Path) -> list[str]:
        args: list[str] = []
        if self.base is not None:
            base_file = tmp / "base.json"
            base_file.write_text(json.dumps(self.base))
            args += ["-f", str(base_file)]
        for path in files:
            args += ["-f", str(path)]
        if values is not None:
            values_file = tmp / "values.json"
            values_file.write_text(json.dumps(values))
            args += ["-f", str(values_file)]
        return args

    def run(
        self,
        command: str,
        values: Mapping[str, Any] | None = None,
        *extra: str,
        files: tuple[Path, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``helm <command> <release> <chart> <values> <extra>``; the result, failed or not."""
        with tempfile.TemporaryDirectory() as tmp:
            args = [self.helm, command, self.release, str(CHART_DIR)]
            args += self._values_args(values, files, Path(tmp))
            return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=120)

    def render(
        self, values: Mapping[str, Any] | None = None, *extra: str, files: tuple[Path, ...] = ()
    ) -> Manifests:
        result = self.run("template", values, *extra, files=files)
        if result.returncode != 0:
            raise RenderFailed(result.stderr)
        return Manifests([doc for doc in yaml.safe_load_all(result.stdout) if doc])

    def notes(self, values: Mapping[str, Any] | None = None, files: tuple[Path, ...] = ()) -> str:
        """NOTES.txt as ``helm install --dry-run=client`` prints it."""
        result = self.run("install", values, "--dry-run=client", files=files)
        if result.returncode != 0:
            raise RenderFailed(result.stderr)
        return result.stdout.split("\nNOTES:\n", 1)[1]


def example(name: str) -> Path:
    return EXAMPLES_DIR / f"{name}.yaml"


def container(workload: Manifest, name: str | None = None) -> Manifest:
    containers = workload["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1, containers
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in an argument list."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def env_of(container_spec: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in container_spec.get("env", [])}
