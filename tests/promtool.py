"""promtool, Prometheus' own checker of rule files, rule unit tests and /metrics, as the
tests run it.

Found as ``$PROMTOOL``, else on ``PATH``, else where ``make promtool`` unpacks Debian's
prometheus package (``.cache/prometheus/usr/bin/promtool``). ``make test`` sets
``PROMTOOL`` and ``PROMTOOL_REQUIRED=1``: then a missing promtool fails the tests that
need it instead of skipping them, so CI cannot pass them unchecked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHED = ROOT / ".cache" / "prometheus" / "usr" / "bin" / "promtool"


def find_promtool() -> Path | None:
    """The promtool to use, or None; a ``$PROMTOOL`` that is not a program is an error."""
    given = os.environ.get("PROMTOOL")
    if given:
        if not os.access(given, os.X_OK):
            raise FileNotFoundError(f"PROMTOOL={given} is not an executable file")
        return Path(given)
    on_path = shutil.which("promtool")
    if on_path:
        return Path(on_path)
    return CACHED if os.access(CACHED, os.X_OK) else None


@dataclass(frozen=True)
class Promtool:
    path: Path

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``promtool ARGS`` with ``stdin``; its exit code is for the caller to check."""
        return subprocess.run(
            [str(self.path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
