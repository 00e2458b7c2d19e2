"""A real `streamproc deliver` process killed with SIGKILL mid-request, then restarted."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from streamproc.config import Settings
from streamproc.localkafka import free_port
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.mparticle_control import Control
from tests.procs import Proc, settings_env, wait_for
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
    assert stats.duplicates_differing == 0
    assert stats.batches_received == 500 + stats.duplicates
