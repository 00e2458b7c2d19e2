"""The one way the tests read metrics: a series by the name and labels ``/metrics`` shows.

Tests run in one process and share its registry, so a test reads a counter before and after
what it does and compares (``sample(...) - before``); gauges it reads as they are. Series
are named as a user's scrape or PromQL names them (``streamproc_..._total``, ``_bucket``
with ``le``), not through the metric objects' private fields.
"""

from __future__ import annotations

from prometheus_client import REGISTRY


def value(series: str, /, **labels: str) -> float | None:
    """The series' value now; None where ``/metrics`` would not show it."""
    found: float | None = REGISTRY.get_sample_value(series, labels)
    return found


def sample(series: str, /, **labels: str) -> float:
    """The series' value now; 0 where it has no value yet (a counter never incremented)."""
    return value(series, **labels) or 0.0


def exposed(series: str, /, **labels: str) -> float:
    """The series' value now; AssertionError if ``/metrics`` would not show it at all."""
    found = value(series, **labels)
    assert found is not None, f"{series}{labels} is not exposed"
    return found
