"""The whole pipeline: `streamproc run` between the three simulators, exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streamproc import topics
from streamproc.config import (
    MParticleSettings,
    PushSender,
    ReceiverSettings,
    Secret,
    Settings,
    TicketmaticAccount,
    TicketmaticSettings,
)
from streamproc.formats import envelope
from streamproc.mapping.ids import source_request_id
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.mparticle_schema import load_batch_schema
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sim.ticketure import TicketureSim
from streamproc.topics import Topics
from tests import localkafka
from tests.procs import Proc, settings_env, wait_for
from tests.topics import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def pipeline_settings(
    make_settings: Callable[..., Settings], tm_url: str, mp_url: str, rx_port: int
) -> Settings:
    return make_settings(
        partitions=3,
        metrics_host="127.0.0.1",
        metrics_port=localkafka.free_port(),
        ticketmatic=TicketmaticSettings(
            base_url=tm_url,
            poll_interval_s=0.5,
            accounts=[
                TicketmaticAccount(name="acme", access_key="ak", secret_key=Secret("sk")),
                TicketmaticAccount(
                    name="opera", access_key="ak2", secret_key=Secret("sk2"), auth="basic"
                ),
            ],
        ),
        receiver=ReceiverSettings(
            host="127.0.0.1",
            port=rx_port,
            senders=[PushSender(name="ticketure", key="push", secret=Secret("push-secret"))],
        ),
        mparticle=MParticleSettings(
            base_url=mp_url, api_key="sim-key", api_secret=Secret("sim-secret"), linger_ms=5
        ),
    )


async def test_run_delivers_every_item_exactly_once(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_reference: Path
) -> None:
    """Every served Ticketmatic item and every acknowledged push reaches mParticle once."""
    schema = load_batch_schema(
        str(shared_reference / "mparticle" / "mparticle-eventsapi-schema.json")
    )
    tm = TicketmaticSim(
        [SimAccount("acme", "ak", "sk"), SimAccount("opera", "ak2", "sk2")],
        page_size=50,
        rate=10,
        seed=7,
    )
    mp = MParticleSim(schema=schema, rate_limit_batches_per_s=None)
    async with tm, mp:
        tm.generate("acme", 300, span_s=600)
        rx_port = localkafka.free_port()
        settings = pipeline_settings(make_settings, tm.url, mp.url, rx_port)
        await topics.ensure(settings)
        run = Proc(["run"], settings_env(settings), tmp_path / "run.log")
        try:
            await wait_for(
                lambda: localkafka.port_open(rx_port), timeout_s=60, what="the receiver to listen"
            )
            pusher = TicketureSim(
                f"http://127.0.0.1:{rx_port}",
                rate=30,
                seed=3,
                auth="basic",
                key="push",
                secret="push-secret",
                duration_s=20,
                duplicate_ratio=0.1,
                keep_ids=True,
            )
            stats = await pusher.run()
            tm.rate = 0  # no more new items: what was generated is the whole truth
            # Ticketmatic numbers each account's stream apart: ids repeat across accounts.
            tm_items = {
                f"{account}/{item_id}"
                for account in ("acme", "opera")
                for item_id, _raw in tm.items(account)
            }
            expected = {source_request_id("ticketmatic", i) for i in tm_items} | {
                source_request_id("ticketure", i) for i in stats.acknowledged
            }
            assert stats.accepted > 100, stats.summary()
            assert stats.failed == 0, stats.summary()

            def stored() -> set[str]:
                return {b["source_request_id"] for b in mp.batches()}

            await wait_for(
                lambda: expected <= stored(), timeout_s=90, what="every item to reach mParticle"
            )
            await asyncio.sleep(2)  # anything extra would show up now
            assert run.alive(), run.output()[-3000:]
        finally:
            code = run.terminate()
        assert code == 0, run.output()[-3000:]
        assert stored() == expected
        # The map stage wrote each batch once (read_committed), and delivery sent each once.
        names = Topics.for_prefix(settings.topic_prefix)
        polled = [
            "/".join(
                str(envelope.header(r.headers, name))
                for name in (envelope.H_ACCOUNT, envelope.H_ITEM_ID)
            )
            for r in await read_topic(settings, names.ticketmatic)
        ]
        assert sorted(polled) == sorted(tm_items), "the poller wrote an item twice or missed one"
        in_topic = [
            orjson.loads(r.value)["source_request_id"]
            for r in await read_topic(settings, names.batches)
        ]
        repeated = {sid: n for sid, n in Counter(in_topic).items() if n > 1}
        assert not repeated, f"{len(repeated)} batches written more than once"
        assert mp.stats.duplicates == 0
        assert mp.stats.batches_refused == 0
        assert len(mp.batches()) == len(expected)
        # Each batch carries its item's own time on its event.
        now_ms = time.time() * 1000
        for batch in mp.batches()[:50]:
            for event in batch["events"]:
                assert 0 < event["data"]["timestamp_unixtime_ms"] <= now_ms
        log = run.output()
        assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:3000]


def test_settings_env_round_trips(make_settings: Callable[..., Settings]) -> None:
    """The child's environment reproduces the settings, secrets included."""
    from streamproc.config import load_settings

    settings = pipeline_settings(make_settings, "http://tm", "http://mp", 1234)
    env = settings_env(settings)
    again = load_settings(env=env)
    assert again.ticketmatic.accounts[1].secret_key.reveal() == "sk2"
    assert orjson.loads(env["STREAMPROC_RECEIVER_SENDERS"])[0]["secret"] == "push-secret"
    assert again.mparticle.url() == "http://mp"
