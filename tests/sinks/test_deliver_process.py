"""Real `streamproc deliver` processes: killed with SIGKILL mid-stream, or two sharing a feed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from streamproc.config import Settings
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.mparticle_control import Control
from tests.localkafka import free_port
from tests.procs import Proc, scraped, settings_env, wait_for
from tests.sinks.support import (
    API_KEY,
    API_SECRET,
    all_committed,
    deliver_settings,
    encode,
    make_batch,
    produce,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RATE_GAUGE = "streamproc_deliver_rate_limit_batches_per_second"
READ_AHEAD = 16  # the deliverer's read-ahead queue, in requests


async def test_sigkill_mid_request_then_restart_loses_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Every batch reaches mParticle; the only repeats carry the same source_request_id."""
    values = [encode(make_batch(i)) for i in range(500)]
    async with MParticleSim(api_key=API_KEY, api_secret=API_SECRET, latency_s=0.3) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=2)
        metrics_port = free_port()
        env = settings_env(settings, STREAMPROC_METRICS_PORT=str(metrics_port))
        group = f"{settings.topic_prefix}streamproc-deliver"
        await produce(settings, values)
        first = Proc(["deliver"], env, tmp_path / "deliver-1.log")
        try:
            await wait_for(lambda: sim.stats.batches_stored >= 100, 60, what="first deliveries")
            await wait_for(lambda: sim.stats.in_flight > 0, 10, what="a request in flight")
        finally:
            first.kill()
        assert sim.stats.batches_stored < 500, "killed too late to mean anything"
        sim.control(Control(latency_s=0.02))
        second = Proc(["deliver"], env, tmp_path / "deliver-2.log")
        try:
            await wait_for(lambda: sim.stats.batches_stored == 500, 90, what="every batch")
            await wait_for(lambda: all_committed(settings, group), 30, what="all committed")
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{metrics_port}"
                async with http.get(base + "/readyz") as response:
                    assert response.status == 200
                async with http.get(base + "/metrics") as response:
                    exposed = await response.text()
            assert 'streamproc_deliver_batches_total{outcome="delivered"}' in exposed
            assert f'streamproc_consumer_lag_records{{group="{group}"' in exposed
        finally:
            code = second.terminate()
        assert code == 0, second.output()[-3000:]
    stats = sim.stats
    assert sorted(orjson.dumps(b) for b in sim.batches()) == sorted(values)
    # The request in flight at the kill landed, was never committed, and was sent again.
    assert stats.duplicates > 0
    # And no more than what was in flight or read ahead, uncommitted (batches of 100).
    assert stats.duplicates <= (2 + READ_AHEAD) * 100
    assert stats.duplicates_differing == 0
    assert stats.batches_received == 500 + stats.duplicates


async def test_sigkill_in_a_429_pause_re_sends_at_most_what_was_in_flight(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Killed while a 429 pauses delivery, a restart re-sends under (in flight + read-ahead)."""
    max_in_flight = 4
    values = [encode(make_batch(i)) for i in range(20_000)]
    async with MParticleSim(
        api_key=API_KEY, api_secret=API_SECRET, latency_s=0.05, rate_limit_batches_per_s=None
    ) as sim:
        settings = deliver_settings(kafka_settings, sim, max_in_flight=max_in_flight)
        env = settings_env(settings, STREAMPROC_METRICS_PORT=str(free_port()))
        group = f"{settings.topic_prefix}streamproc-deliver"
        await produce(settings, values, spread=True)
        first = Proc(["deliver"], env, tmp_path / "deliver-1.log")
        try:
            await wait_for(lambda: sim.stats.batches_stored >= 2000, 60, what="first deliveries")
            sim.fail_next(429, retry_after_s=5)
            await wait_for(lambda: sim.stats.answers.get("429", 0) == 1, 10, 0.01, "the 429")
            await asyncio.sleep(3)  # inside the pause
        finally:
            first.kill()
        assert sim.stats.batches_stored < 20_000, "killed too late to mean anything"
        second = Proc(["deliver"], env, tmp_path / "deliver-2.log")
        try:
            await wait_for(lambda: sim.stats.batches_stored == 20_000, 120, what="every batch")
            await wait_for(lambda: all_committed(settings, group), 30, what="all committed")
        finally:
            code = second.terminate()
        assert code == 0, second.output()[-3000:]
    stats = sim.stats
    # Re-sent: batches stored twice (the refused request's were never stored).
    print(f"re-sent after the SIGKILL: {stats.duplicates} batches")
    assert stats.duplicates <= (max_in_flight + READ_AHEAD) * 100
    assert stats.duplicates_differing == 0
    assert stats.batches_received == 20_000 + stats.duplicates


async def test_two_deliverers_stay_within_the_feed_limit_together(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Two replicas of a 50 batches/s feed take 1/3 and 2/3 of it; mParticle gets <= 50/s."""
    feed = 50.0
    values = [encode(make_batch(i)) for i in range(1500)]
    async with MParticleSim(
        api_key=API_KEY, api_secret=API_SECRET, rate_limit_batches_per_s=None
    ) as sim:
        settings = deliver_settings(kafka_settings, sim, rate_limit_batches_per_s=feed)
        ports = [free_port(), free_port()]
        procs = [
            Proc(
                ["deliver"],
                settings_env(settings, STREAMPROC_METRICS_PORT=str(port)),
                tmp_path / f"deliver-{port}.log",
            )
            for port in ports
        ]
        try:

            async def shares() -> list[float | None]:
                return [await scraped(port, RATE_GAUGE) for port in ports]

            async def split() -> bool:
                rates = await shares()
                return all(rates) and sum(r or 0 for r in rates) == pytest.approx(feed)

            await wait_for(split, 60, what="both deliverers holding partitions")
            assert sorted(r or 0 for r in await shares()) == pytest.approx([feed / 3, feed * 2 / 3])
            await produce(settings, values, spread=True)
            await wait_for(lambda: sim.stats.batches_received > 0, 30, what="first deliveries")
            start = int(time.time()) + 1
            await asyncio.sleep(start + 4.2 - time.time())
            per_second = [sim.stats.arrived_by_second.get(s, 0) for s in range(start, start + 4)]
        finally:
            codes = [proc.terminate() for proc in procs]
        assert codes == [0, 0], [proc.output()[-2000:] for proc in procs]
    # A token bucket of one second's worth: in 4 s at most 4 s of the rate plus the bucket.
    assert sum(per_second) <= feed * 4 + feed, per_second
    assert sum(per_second) >= feed * 4 * 0.7, per_second  # both kept sending meanwhile
    assert sim.stats.batches_stored < len(values)  # and never ran out of batches
