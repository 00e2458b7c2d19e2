"""``streamproc receive`` as a real process: configuration errors, readiness, SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest

from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.sim.ticketure import TicketureSim
from tests import localkafka
from tests.procs import Proc, settings_env, wait_for
from tests.sources.ticketure.conftest import KEY, SECRET, topic_names
from tests.topics import read_topic

pytestmark = pytest.mark.kafka


def test_receive_without_senders_is_a_configuration_error(kafka_settings: Settings) -> None:
    """No configured sender: exit 2 naming the setting, nothing served."""
    env = settings_env(kafka_settings)
    env.pop("STREAMPROC_RECEIVER_SENDERS", None)
    result = subprocess.run(
        [sys.executable, "-m", "streamproc.cli", "receive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "STREAMPROC_RECEIVER_SENDERS" in result.stderr


async def ready(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            return response.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_stopped_under_load_keeps_every_acknowledged_record(
    rx_settings: Settings, tmp_path: Path, how: str
) -> None:
    """SIGTERM or SIGKILL while pushes flow: every push that got a 202 is in Kafka.

    SIGTERM also exits 0 after finishing the requests in flight.
    """
    port, metrics_port = localkafka.free_port(), localkafka.free_port()
    settings = msgspec.structs.replace(
        rx_settings,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
        receiver=msgspec.structs.replace(rx_settings.receiver, host="127.0.0.1", port=port),
    )
    proc = Proc(["receive"], settings_env(settings), tmp_path / "receive.log")
    try:
        await wait_for(lambda: ready(metrics_port), 60, what="/readyz")
        sim = TicketureSim(
            f"http://127.0.0.1:{port}",
            key=KEY,
            secret=SECRET,
            rate=300,
            max_retries=2,
            backoff_base_s=0.01,
            keep_ids=True,
        )
        load = asyncio.create_task(sim.run())
        await wait_for(lambda: sim.stats.accepted >= 100, 30, what="100 accepted pushes")
        if how == "SIGTERM":
            code = await asyncio.to_thread(proc.terminate)
        else:
            await asyncio.to_thread(proc.kill)
            code = proc.popen.returncode
        sim.stop()
        stats = await load
    finally:
        proc.kill()
    output = proc.output()
    if how == "SIGTERM":
        assert code == 0, output
        assert "receiver stopped" in output
    else:
        assert code == -9, output
    records = await read_topic(settings, topic_names(settings).ticketure)
    in_kafka = {envelope.header(r.headers, envelope.H_ITEM_ID) for r in records}
    assert stats.acknowledged
    assert set(stats.acknowledged) <= in_kafka
