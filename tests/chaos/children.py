"""Processes of a chaos run: started in sessions of their own, stopped by their pid.

A child in its own session does not get the terminal's Ctrl-C: the harness alone decides
when and how each one stops (SIGKILL as a fault, SIGTERM at the end), so that the end of
the run can check each role's exit code and that nothing it started is left running.
Every child's environment carries ``CHAOS_RUN=<token>``, which is how strays are found.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from tests.test_make_run import processes_with

MARKER = "CHAOS_RUN"


class Child:
    """One restartable process (``python -m MODULE ARGS``), its output appended to a log."""

    def __init__(
        self, name: str, module: str, args: list[str], env: Mapping[str, str], log_dir: Path
    ) -> None:
        self.name = name
        self.command = [sys.executable, "-m", module, *args]
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.expected_exit = False  # set when we stop it, so an exit of its own shows
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start it (again); its log goes on where the last run of it stopped."""
        if self.alive():
            return
        self._close_log()
        self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"\n=== chaos: start #{self.starts} at {time.strftime('%X')}\n".encode())
        self._log.flush()
        self.expected_exit = False
        self.popen = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        """The last run's exit code (negative: the signal), None while it runs or never ran."""
        return None if self.popen is None else self.popen.poll()

    def kill(self) -> None:
        """SIGKILL by pid, and collect it: no cleanup, no commit, no leaving the group."""
        self.expected_exit = True
        if self.popen is not None and self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def terminate(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM by pid and wait for its exit code; SIGKILL if it does not stop in time."""
        self.expected_exit = True
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
        self._close_log()
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        """The end of its log, for a report."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def strays(token: str) -> list[int]:
    """Pids of live processes still carrying this run's marker (its token) anywhere."""
    return processes_with(token.encode())
