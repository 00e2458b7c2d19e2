"""Items per second through the map stage, against the broker's transactional ceiling.

Both loops read the same input (Ticketmatic items shaped like the API reference's, and
Ticketure audit records, with the poller's and receiver's headers) from the beginning, in
their own consumer group, with the same records per poll:

- the ceiling: the textbook aiokafka consume-transform-produce loop doing no work, one
  transactional producer, each polled record copied to ``mparticle.batches``, the offsets
  sent to the transaction, commit;
- the map stage: one :class:`~streamproc.mapper.processor.MapProcessor`, as
  ``streamproc map`` runs it;
- the same with a mapping that does no work, on input of its own (a fresh consumer group
  and dedupe state): the cost of the loop itself, the rest being the mapping's.

Each is timed from the moment it owns its partitions (the ceiling: its first poll with
records) to the commit of the last item.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import msgspec
import orjson

from streamproc import kafka, topics
from streamproc.config import Settings
from streamproc.formats import envelope
from streamproc.formats.ticketure import (
    ENCODER,
    GatewayAttributes,
    GatewayAudit,
    TicketAttributes,
    TicketAudit,
)
from streamproc.mapper.processor import MapProcessor
from streamproc.mapper.transaction import Mapper
from streamproc.mapping.router import Mapped, MappingContext, map_record
from streamproc.topics import Topics
from tests.bench import Row

ITEMS = 40_000
ROUNDS = 2
TICKETURE_SHARE = 5  # one item in five is a Ticketure record
MAX_RECORDS = 2000
T0_MS = 1_700_000_000_000

_TICKET = {
    "id": "10634",
    "price": "20",
    "servicecharge": "0",
    "tickettypepriceid": "580",
    "tickettypeid": "92",
    "tickettypename": "tickets",
    "pricetypeid": "10000",
    "pricetypename": "normal",
    "eventid": "10003",
    "eventname": "dance performance 2",
}
_ORDER = {
    "id": "398",
    "saleschannelid": "10000",
    "customerid": "10016",
    "deliveryscenarioid": "10000",
    "paymentscenarioid": "10001",
    "totalamount": "40",
    "tickets": [_TICKET, {**_TICKET, "id": "10635"}],
    "products": [],
}
_TEMPLATES: list[dict[str, Any]] = [
    {"type": "webshop:add_tickets", "data": {"tickets": _ORDER["tickets"], "order": _ORDER}},
    {"type": "webshop:checkout_start", "data": {"order": _ORDER}},
    {"type": "webshop:checkout_confirm", "data": {"order": _ORDER}},
    {
        "type": "webshop:pageview",
        "data": {
            "page": "summary",
            "params": {"flow": "basketwithcheckout", "event": "10003", "skinid": "10000"},
            "orderid": "398",
            "customerid": "10016",
        },
    },
]


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ms / 1000))


def _ticketmatic(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    ms = T0_MS + i
    item = copy.deepcopy(_TEMPLATES[i % len(_TEMPLATES)])
    item["id"] = f"{ms}-0"
    item["ts"] = _ts(ms)
    item["data"]["ref"] = f"visitor-{i % 997}"
    headers = [
        (envelope.H_SOURCE, b"ticketmatic"),
        (envelope.H_ACCOUNT, b"acme"),
        (envelope.H_ITEM_ID, item["id"].encode()),
        (envelope.H_ITEM_TIME, str(ms).encode()),
        (envelope.H_RECEIVED, str(ms).encode()),
    ]
    return orjson.dumps(item), f"acme:{item['data']['ref']}".encode(), headers


def _ticketure(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    ms = T0_MS + i
    order = f"order-{i % 499}"
    record: TicketAudit | GatewayAudit
    if i % 2:
        record = TicketAudit(
            action="purchased",
            occurred_at=_ts(ms),
            event_id=f"evt-{i}",
            email=f"buyer{i % 499}@example.com",
            attributes=TicketAttributes(
                ticket_order_id=order, price_paid="25.00", ticket_type="Adult", seller="Museum"
            ),
        )
    else:
        record = GatewayAudit(
            action="purchase",
            occurred_at=_ts(ms),
            event_id=f"evt-{i}",
            email=f"buyer{i % 499}@example.com",
            attributes=GatewayAttributes(cart_id=order, total_amount="50.00"),
        )
    headers = [
        (envelope.H_SOURCE, b"ticketure"),
        (envelope.H_ITEM_ID, f"evt-{i}".encode()),
        (envelope.H_ITEM_TIME, str(ms).encode()),
        (envelope.H_RECEIVED, str(ms).encode()),
    ]
    return ENCODER.encode(record), order.encode(), headers


async def _produce(settings: Settings) -> None:
    names = Topics.for_prefix(settings.topic_prefix)
    ctx = MappingContext.from_settings(settings)
    producer = kafka.producer(settings.kafka, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = []
        for i in range(ITEMS):
            ticketure = i % TICKETURE_SHARE == 0
            value, key, headers = _ticketure(i) if ticketure else _ticketmatic(i)
            source = "ticketure" if ticketure else "ticketmatic"
            if i < 50 and not isinstance(map_record(source, value, str(i), "acme", ctx), Mapped):
                raise RuntimeError(f"benchmark input {i} does not map")
            topic = names.ticketure if ticketure else names.ticketmatic
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class _Run(msgspec.Struct):
    items_per_s: float
    cpu_us_per_item: float  # this process's CPU time (the broker's is not counted)


async def _ceiling(settings: Settings) -> _Run:
    names = Topics.for_prefix(settings.topic_prefix)
    group = f"{settings.topic_prefix}bench-ceiling"
    consumer = kafka.consumer(settings.kafka, names.ticketmatic, names.ticketure, group_id=group)
    producer = kafka.producer(settings.kafka, transactional_id=group, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    try:
        seen, started, cpu = 0, 0.0, 0.0
        deadline = time.monotonic() + 600
        while seen < ITEMS and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            if not batch:
                continue
            if not started:
                started, cpu = time.perf_counter(), time.process_time()
            async with producer.transaction():
                for records in batch.values():
                    for r in records:
                        await producer.send(
                            names.batches, r.value, key=r.key, headers=list(r.headers)
                        )
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                await producer.send_offsets_to_transaction(offsets, group)
            seen += sum(len(records) for records in batch.values())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return _Run(seen / elapsed, cpu / seen * 1e6)
    finally:
        await producer.stop()
        await consumer.stop()


def _no_mapping(source: str, value: bytes, item_id: str, account: str | None) -> Mapped:
    """A mapping that does no work: the item itself as the "batch", keyed by its id."""
    return Mapped(key=item_id, batch=value, item_type=source, item_time_ms=T0_MS, truncations={})


async def _map_stage(settings: Settings, mapper: Mapper | None = None) -> _Run:
    processor = MapProcessor(
        settings, mapper=mapper, max_records=MAX_RECORDS, txn_max_records=MAX_RECORDS
    )
    stop = asyncio.Event()
    async with processor:
        task = asyncio.create_task(processor.work(stop))
        try:
            deadline = time.monotonic() + 600
            # Polled, not awaited: the processor exposes counts, not events.
            while not processor.health.ready() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            started, cpu = time.perf_counter(), time.process_time()
            while processor.committed < ITEMS and time.monotonic() < deadline:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            stop.set()
            await task
    return _Run(processor.committed / elapsed, cpu / processor.committed * 1e6)


async def bench(settings: Settings) -> list[Row]:
    """The ceiling, then the map stage, on the same items; the best of ``ROUNDS`` each.

    Every round has topics of its own (a fresh prefix): the map stage's dedupe state would
    otherwise remember the previous round's items.
    """
    ceilings, maps, loops = [], [], []
    for n in range(ROUNDS):
        fresh = []
        for phase in ("a", "b"):
            prefix = f"{settings.topic_prefix}r{n}{phase}."
            fresh.append(msgspec.structs.replace(settings, topic_prefix=prefix))
            await topics.ensure(fresh[-1])
            await _produce(fresh[-1])
        ceilings.append(await _ceiling(fresh[0]))
        maps.append(await _map_stage(fresh[0]))
        loops.append(await _map_stage(fresh[1], _no_mapping))
    ceiling = max(ceilings, key=lambda r: r.items_per_s)
    mapped = max(maps, key=lambda r: r.items_per_s)
    loop = max(loops, key=lambda r: r.items_per_s)
    return [
        Row("ceiling: consume + transactional produce, no work", ceiling.items_per_s, "items/s"),
        Row("streamproc map, one process", mapped.items_per_s, "items/s"),
        Row(
            "streamproc map / ceiling", 100 * mapped.items_per_s / ceiling.items_per_s, "%", ">= 70"
        ),
        Row("ceiling: CPU of its process per item", ceiling.cpu_us_per_item, "us"),
        Row("streamproc map: CPU per item", mapped.cpu_us_per_item, "us"),
        Row("streamproc map with a no-op mapping (its loop alone)", loop.items_per_s, "items/s"),
        Row("  its loop alone: CPU per item", loop.cpu_us_per_item, "us"),
    ]
