"""Generated requests (tests/fuzz) against a receiver in-process: no 5xx while Kafka is up,
every 400 naming a field and dead-lettered, every 202's records in Kafka; with Kafka down,
nothing acknowledged.

The receiver runs in a thread with its own event loop (hypothesis drives plain functions),
writing to the session broker; requests go over real HTTP with ``http.client``.
``make fuzz`` runs the same generator 100,000 times against ``streamproc receive``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings

from streamproc import topics
from streamproc.config import KafkaSettings, ReceiverSettings, Settings
from streamproc.formats import envelope
from streamproc.formats.ticketure import RECORD_DECODER
from streamproc.sources.ticketure import ids
from streamproc.sources.ticketure.receiver import Receiver
from tests import localkafka
from tests.fuzz.client import Client
from tests.fuzz.ledger import Ledger
from tests.fuzz.requests import SENDERS, Request, requests
from tests.sources.ticketure.conftest import topic_names
from tests.topics import read_topic

pytestmark = pytest.mark.kafka

MAX_BODY = 16 * 1024


class ReceiverThread:
    """A receiver serving from a thread of its own until ``close()``."""

    def __init__(self, settings: Settings, *, ensure_topics: bool = True) -> None:
        self.settings = settings
        self.port = 0
        self._ensure = ensure_topics
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(60), "the receiver did not start"
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 -- reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._ensure:
            await topics.ensure(self.settings)
        async with Receiver(self.settings, host="127.0.0.1", port=0, produce_timeout_s=1) as rx:
            self.port = rx.port
            self._ready.set()
            await self._stop.wait()


def fuzz_settings(bootstrap: str) -> Settings:
    return Settings(
        topic_prefix=f"fz{uuid.uuid4().hex[:8]}.",
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        receiver=ReceiverSettings(senders=SENDERS, max_body_bytes=MAX_BODY),
    )


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str) -> Iterator[ReceiverThread]:
    """One receiver for the module, on its own topics, with a 16 KiB body limit."""
    server = ReceiverThread(fuzz_settings(kafka_bootstrap))
    server.start()
    yield server
    server.close()


def run_cases(port: int, ledger: Ledger, examples: int) -> None:
    """``examples`` generated requests, each answer checked by ``ledger`` (and shrunk to
    the smallest failing request if one is wrong)."""
    client = Client(port)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(max_body=MAX_BODY))
    def case(request: Request) -> None:
        status, answer = client.post(request)
        event(f"answered {status}")
        problems = ledger.check(request, status, answer)
        assert not problems, problems

    try:
        case()
    finally:
        client.close()


def test_generated_requests_are_answered_as_promised_and_kept(served: ReceiverThread) -> None:
    """600 generated requests: statuses fit the credentials, no 5xx, every 400 names a
    field and is in the DLQ, every acknowledged record is in Kafka."""
    ledger = Ledger()
    run_cases(served.port, ledger, 600)
    names = topic_names(served.settings)
    records = asyncio.run(read_topic(served.settings, names.ticketure, timeout_s=60))
    letters = asyncio.run(read_topic(served.settings, names.dlq, timeout_s=60))
    ids = [envelope.header(r.headers, envelope.H_ITEM_ID) for r in records]
    assert ledger.missing(ids, [r.value for r in letters]) == (0, 0)
    assert ledger.cases == 600
    # The generator reaches every outcome often: acknowledged, refused, not authenticated.
    assert min(ledger.statuses[s] for s in (202, 400, 401, 403, 413, 415)) > 5, ledger.statuses
    assert not any(s >= 500 for s in ledger.statuses), ledger.statuses


def test_with_kafka_down_nothing_is_acknowledged(kafka_bootstrap: str) -> None:
    """Kafka unreachable: only 503 (with the other refusals that need no Kafka), never a
    202 that acknowledges a record or a 400 whose dead letter could not be kept."""
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{localkafka.free_port()}")
    settings = msgspec.structs.replace(fuzz_settings(kafka_bootstrap), kafka=nowhere)
    server = ReceiverThread(settings, ensure_topics=False)
    server.start()
    try:
        ledger = Ledger(kafka_down=True)
        run_cases(server.port, ledger, 150)
    finally:
        server.close()
    assert ledger.statuses[503] > 20, ledger.statuses
    # A 202 may answer a body that holds no record (the ledger checks each one); no record
    # is acknowledged and nothing is refused with a dead letter that could not be kept.
    assert ledger.statuses[400] == 0, ledger.statuses
    assert not ledger.acknowledged, ledger.acknowledged


def test_the_ledger_flags_what_the_receiver_must_not_do() -> None:
    """A 5xx, a status the credentials do not allow, a 400 without field, an error body
    that is no JSON, and acknowledged or refused bodies missing from Kafka are all caught."""
    body = b'{"type": "ticket_audit", "action": "redeemed", "occurred_at": "2025-05-01T10:15:00Z"}'
    sender = Request("/ticketure/events", body, {}, "basic")
    stranger = sender._replace(sender=None)
    ledger = Ledger()
    assert ledger.check(sender, 500, b"") != []
    assert ledger.check(stranger, 202, b'{"item_ids": []}') != []
    assert ledger.check(sender, 400, b'{"errors": [{"code": "X", "message": "m"}]}') != []
    assert ledger.check(sender, 413, b"<html>") != []
    assert ledger.check(sender, 202, b'{"accepted": 1, "item_ids": ["other"]}') != []
    assert set(ledger.problems) == {"5xx", "status", "400 without field", "error body", "item ids"}
    ok = Ledger()
    item_id = ids.content_id(RECORD_DECODER.decode(body))
    answer = orjson.dumps({"accepted": 1, "item_ids": [item_id]})
    assert ok.check(sender, 202, answer) == []
    assert ok.check(sender, 400, b'{"errors": [{"code": "X", "field": "f", "message": "m"}]}') == []
    assert ok.missing([], []) == (1, 1)
    assert ok.missing([item_id], [body]) == (0, 0)
    # With Kafka down, a 202 is allowed only for a body that holds no record to keep.
    down = Ledger(kafka_down=True)
    auth = {"Content-Type": "application/json"}
    empty = Request("/v2/bulkevents", b'[{"environment":"production"}]', auth, "basic")
    full = Request("/ticketure/events", body, auth, "basic")
    assert down.check(empty, 202, b"") == []
    assert down.check(full, 202, answer) != []
    assert down.check(empty._replace(sender=None), 202, b"") != []
