"""The README stays true: every metric and every command it must document is there."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

import streamproc.metrics
from streamproc.cli import COMMANDS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def exported_names() -> set[str]:
    names = set()
    for obj in vars(streamproc.metrics).values():
        if isinstance(obj, Counter):
            names.add(obj._name + "_total")
        elif isinstance(obj, Gauge | Histogram):
            names.add(obj._name)
    return names


def test_every_metric_is_documented() -> None:
    """Each streamproc_ metric appears in the README's metric table."""
    missing = sorted(n for n in exported_names() if f"`{n}`" not in README)
    assert not missing, f"README lacks {missing}"


def test_every_command_is_documented() -> None:
    """Each CLI command appears in the README."""
    missing = [" ".join(path) for path in COMMANDS if " ".join(path) not in README]
    assert not missing, f"README lacks {missing}"


def test_the_two_commands_are_shown() -> None:
    """`make run` and `make test` are in the README, as .ci/run expects."""
    assert "make run" in README
    assert "make test" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
