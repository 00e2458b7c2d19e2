"""The push simulator against the real receiver: what got a 202 is in Kafka, replays included."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pytest

from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.formats.ticketure import RECORD_DECODER
from streamproc.sim.ticketure import TicketureSim
from streamproc.sources.ticketure.receiver import Receiver
from tests.sources.ticketure.conftest import HMAC_SECRET, KEY, SECRET, topic_names
from tests.topics import read_topic

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize(("shape", "auth"), [("records", "basic"), ("mparticle", "hmac")])
async def test_replayed_sim_runs_land_twice_under_the_same_item_ids(
    receiver: Receiver,
    rx_settings: Settings,
    shape: Literal["records", "mparticle"],
    auth: Literal["basic", "hmac"],
) -> None:
    """Two runs with one seed are acknowledged in full and carry identical item ids."""
    runs = []
    for _ in range(2):
        sim = TicketureSim(
            f"http://127.0.0.1:{receiver.port}",
            shape=shape,
            auth=auth,
            key=KEY,
            secret=SECRET if auth == "basic" else HMAC_SECRET,
            rate=0,
            count=40,
            seed=9,
            keep_ids=True,
        )
        stats = await sim.run()
        assert stats.accepted == 40
        assert stats.failed == stats.rejected == 0
        runs.append(stats)
    assert runs[0].acknowledged
    assert sorted(runs[0].acknowledged) == sorted(runs[1].acknowledged)
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    ids = Counter(envelope.header(r.headers, envelope.H_ITEM_ID) for r in records)
    assert set(ids) == set(runs[0].acknowledged)
    assert set(ids.values()) == {2}
    for record in records:
        decoded = RECORD_DECODER.decode(record.value)
        assert decoded.event_id == envelope.header(record.headers, envelope.H_ITEM_ID)
        assert record.key == (decoded.order_key() or "").encode()


async def test_events_without_ids_get_stable_content_ids(
    receiver: Receiver, rx_settings: Settings
) -> None:
    """Pushes without ids are deduplicable too: the same content hashes to the same id."""
    sim = TicketureSim(
        f"http://127.0.0.1:{receiver.port}",
        key=KEY,
        secret=SECRET,
        rate=0,
        count=20,
        with_ids=False,
        duplicate_ratio=1.0,
    )
    stats = await sim.run()
    assert stats.accepted == 20
    assert stats.duplicates == 20
    records = await read_topic(rx_settings, topic_names(rx_settings).ticketure)
    ids = Counter(envelope.header(r.headers, envelope.H_ITEM_ID) for r in records)
    assert all(str(i).startswith("sha256:") for i in ids)
    assert sum(ids.values()) == 2 * stats.records
    assert all(count % 2 == 0 for count in ids.values())
