"""Shared pieces of the poller's integration tests: settings, a topic reader, the checks."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import ConsumerRecord

from streamproc.config import Secret, Settings, TicketmaticAccount, TicketmaticSettings
from streamproc.formats import envelope
from streamproc.formats.ticketmatic import position_key
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from streamproc.sources.ticketmatic.page import H_POLLER
from tests import topics


def tm_settings(
    make_settings: Callable[..., Settings],
    sim: TicketmaticSim,
    accounts: Iterable[SimAccount],
    *,
    basic: Iterable[str] = (),
    partitions: int = 3,
    **ticketmatic: Any,
) -> Settings:
    """Settings pointing at ``sim`` for ``accounts`` (``basic`` ones use basic auth)."""
    basic = set(basic)
    fields: dict[str, Any] = {"poll_interval_s": 0.1, "request_timeout_s": 5.0}
    fields.update(ticketmatic)
    return make_settings(
        partitions=partitions,
        ticketmatic=TicketmaticSettings(
            base_url=sim.url,
            accounts=[
                TicketmaticAccount(
                    name=a.name,
                    access_key=a.access_key,
                    secret_key=Secret(a.secret_key),
                    auth="basic" if a.name in basic else "hmac",
                )
                for a in accounts
            ],
            **fields,
        ),
    )


class TopicReader(topics.TopicReader):
    """The tests' one topic reader, with the item ids of what it read."""

    def ids(self, account: str | None = None) -> list[str]:
        return [
            envelope.header(r.headers, envelope.H_ITEM_ID) or ""
            for r in self.records
            if account is None or envelope.header(r.headers, envelope.H_ACCOUNT) == account
        ]


topic_partitions = topics.partitions_of


def complete(
    sim: TicketmaticSim, accounts: Iterable[str]
) -> Callable[[list[ConsumerRecord[bytes, bytes]]], bool]:
    """True once every kept item of ``accounts`` is among the records (by id)."""
    wanted = {(a, i) for a in accounts for i, _ in sim.items(a)}

    def done(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        have = {
            (
                envelope.header(r.headers, envelope.H_ACCOUNT),
                envelope.header(r.headers, envelope.H_ITEM_ID),
            )
            for r in records
        }
        return wanted <= have

    return done


def assert_exactly_once_in_order(
    records: list[ConsumerRecord[bytes, bytes]], sim: TicketmaticSim, accounts: Iterable[str]
) -> None:
    """Every item of the sim is in the topic once, as received, and each key's items ascend."""
    by_account: dict[str, list[tuple[str, bytes]]] = collections.defaultdict(list)
    per_partition_key: dict[tuple[int, bytes | None], list[tuple[int, int]]] = (
        collections.defaultdict(list)
    )
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        account = envelope.header(r.headers, envelope.H_ACCOUNT) or ""
        item_id = envelope.header(r.headers, envelope.H_ITEM_ID) or ""
        by_account[account].append((item_id, r.value))
        per_partition_key[(r.partition, r.key)].append(position_key(item_id))
    for account in accounts:
        expected = sim.items(account)
        got = by_account.pop(account, [])
        ids = [i for i, _ in got]
        duplicates = [i for i, n in collections.Counter(ids).items() if n > 1]
        assert not duplicates, f"{account}: written twice: {duplicates[:5]}"
        assert sorted(got, key=lambda x: position_key(x[0])) == expected, f"{account}: items differ"
    assert not by_account, f"records of unexpected accounts {list(by_account)}"
    for (partition, key), keys in per_partition_key.items():
        assert keys == sorted(keys), f"key {key!r} out of order in partition {partition}"


def writers(records: list[ConsumerRecord[bytes, bytes]], account: str) -> list[str]:
    """The poller of each record of ``account``, in item order."""
    mine = [r for r in records if envelope.header(r.headers, envelope.H_ACCOUNT) == account]
    mine.sort(key=lambda r: position_key(envelope.header(r.headers, envelope.H_ITEM_ID) or "0"))
    return [envelope.header(r.headers, H_POLLER) or "" for r in mine]


def runs(sequence: list[str]) -> list[str]:
    """``[a, a, b, b, a]`` -> ``[a, b, a]``: who wrote, block by block."""
    out: list[str] = []
    for value in sequence:
        if not out or out[-1] != value:
            out.append(value)
    return out
