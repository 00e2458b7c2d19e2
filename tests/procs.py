"""Real streamproc processes for tests: start with settings in the environment, SIGKILL.

Guarantees are shown by killing real processes, so tests start ``streamproc`` commands as
subprocesses (``python -m streamproc.cli ...``) with their settings in ``STREAMPROC_*``
variables, and stop them with SIGTERM or SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from streamproc.config import Settings, to_env


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This environment without STREAMPROC_* variables, plus ``settings`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(to_env(settings))
    env.update(extra)
    return env


class Proc:
    """One ``streamproc`` subprocess; its output goes to a log file for post-mortems."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "streamproc.cli", *args],
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no commit, no leaving the group."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it does not stop in time)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait(timeout=30)
        self._log.close()
        return code

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout_s: float = 30.0,
    interval_s: float = 0.2,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def scraped(port: int, name: str, **labels: str) -> float | None:
    """The sample ``name`` whose labels include ``labels`` from ``/metrics`` at ``port``
    (the first such); None until it is exposed."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            exposed = await response.text()
    except aiohttp.ClientError:
        return None
    for family in text_string_to_metric_families(exposed):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None
