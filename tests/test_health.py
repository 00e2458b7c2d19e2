"""HealthServer's /metrics, checked by Prometheus' own linter."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from streamproc import metrics
from streamproc.health import Health, HealthServer
from tests.promtool import Promtool

# A label value no other test reads: the series made here stay out of their sums.
LABEL = "promtool-check"


@contextmanager
def a_series_of_every_metric() -> Iterator[set[str]]:
    """One series of every labelled metric in streamproc.metrics (unlabelled ones always
    have theirs); yields every metric's name, and removes what it added on leaving."""
    added: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            names.add(obj._name)
            if obj._labelnames:
                values = (LABEL,) * len(obj._labelnames)
                obj.labels(*values)
                added.append((obj, values))
        elif isinstance(obj, metrics.AgeHistogram):
            # An empty series of zeros; AgeHistogram has no remove(), and it harms no sum.
            names.add(obj.name)
            obj.labels(*(LABEL,) * len(obj.labelnames))
    try:
        yield names
    finally:
        for obj, values in added:
            obj.remove(*values)


async def test_metrics_pass_promtool_check_metrics(promtool: Promtool) -> None:
    """/metrics, from a HealthServer on a free port with a series of every streamproc metric,
    has every metric and passes `promtool check metrics`, which refuses a bad exposition."""
    with a_series_of_every_metric() as names:
        async with HealthServer(Health(), "127.0.0.1", 0) as server:
            assert server.port != 0
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 200
                body = await response.text()
    # The text format names a counter's family with its _total.
    missing = sorted(n for n in names if not re.search(rf"^# TYPE {n}(_total)? ", body, re.M))
    assert not missing, f"not exposed: {missing}"

    # A counter without _total, as promtool must refuse it.
    bad = "# HELP streamproc_polls Polls.\n# TYPE streamproc_polls counter\nstreamproc_polls 1\n"
    refused = await asyncio.to_thread(promtool, "check", "metrics", stdin=bad)
    assert refused.returncode != 0, refused

    result = await asyncio.to_thread(promtool, "check", "metrics", stdin=body)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
    assert not (result.stdout + result.stderr).strip(), f"{result.stdout}{result.stderr}"


async def test_readiness_is_a_metric_that_follows_readyz() -> None:
    """streamproc_ready{component} says at each scrape what /readyz says: 0 for a component
    set not ready or whose watch gives a reason, 1 once ready, gone once forgotten."""
    health = Health()
    stalled: list[str] = ["no poll for 200 s"]
    health.set("readiness-test-kafka", False, "SASL authentication failed")
    health.watch("readiness-test-poll", lambda: stalled[0] if stalled else None)

    async with HealthServer(health, "127.0.0.1", 0) as server, aiohttp.ClientSession() as s:

        async def scrape() -> tuple[int, dict[str, float]]:
            async with s.get(f"http://127.0.0.1:{server.port}/readyz") as response:
                status = response.status
            async with s.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                text = await response.text()
            ready = {
                sample.labels["component"]: sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "streamproc_ready"
                for sample in family.samples
                if sample.labels["component"].startswith("readiness-test-")
            }
            return status, ready

        assert await scrape() == (503, {"readiness-test-kafka": 0, "readiness-test-poll": 0})
        health.set("readiness-test-kafka", True)
        assert await scrape() == (503, {"readiness-test-kafka": 1, "readiness-test-poll": 0})
        stalled.clear()
        assert await scrape() == (200, {"readiness-test-kafka": 1, "readiness-test-poll": 1})
        health.forget("readiness-test-poll")
        assert await scrape() == (200, {"readiness-test-kafka": 1})
        health.forget("readiness-test-kafka")
        assert await scrape() == (200, {})
