"""Child processes in their own process group, with their output in a log file.

``stop()`` signals the whole group (gunicorn's workers, a worker's engine
subprocesses) and escalates to SIGKILL, so nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import requests


class ProcessFailed(RuntimeError):
    pass


class Process:
    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env.update(env or {})
        # Set once stopped: the group id may belong to someone else afterwards.
        self.stopped = False
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(
                    f"{self.name} exited with {self.popen.returncode} before {what}:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if check():
                    return
            time.sleep(0.1)
        raise ProcessFailed(f"{self.name} not {what} after {timeout_s}s:\n{self.log_tail()}")

    def wait_http_ok(self, url: str, timeout_s: float = 30) -> None:
        self.wait_until(lambda: requests.get(url, timeout=2).ok, timeout_s, f"answering {url}")

    def signal_group(self, sig: int) -> None:
        if self.stopped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """Die at once, as a crashed process would."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, grace_s: float = 5) -> None:
        stop_all([self], grace_s)


def stop_all(processes: Sequence[Process], grace_s: float = 5) -> None:
    """SIGTERM every group at once, give them ``grace_s`` together, then SIGKILL."""
    processes = [p for p in processes if not p.stopped]
    for process in processes:
        if process.alive():
            process.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        # Children that ignored SIGTERM or outlived their parent.
        process.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=5)
        process._log.close()
        process.stopped = True
