"""Acknowledged against delivered: which item each stored batch carries, and which are missing.

An item is identified as the pipeline must identify it: a Ticketmatic item as
``ticketmatic:<account>/<id>``, a Ticketure record as ``ticketure:<event id>``. Its batch
must have ``source_request_id`` uuid5 of that (DESIGN.md, Mapping), its first event
``source_message_id`` uuid5 of that plus ``#0``. A stored batch is put down to an item by
either id, so an item delivered under a second, different ``source_request_id`` (a real
duplicate: mParticle would keep both) is caught as well as a batch that names nothing that
was ever sent. Repeats of one ``source_request_id``, which mParticle drops, are the
simulator's ``duplicates`` count, reported apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson

from streamproc.mapping.ids import source_message_id, source_request_id


class Ledger:
    def __init__(self) -> None:
        self.expected: set[str] = set()  # items acknowledged or served
        self.sent: set[str] = set()  # Ticketure items pushed, acknowledged or not
        self._by_sid: dict[str, str] = {}
        self._by_message: dict[str, str] = {}
        self.delivered: dict[str, set[str]] = {}  # item -> source_request_ids stored
        # Batches naming no item known yet: the harness may read a batch before it reads
        # the item from its source. Those still here at the end match nothing ever sent.
        self.unresolved: list[tuple[str, str]] = []
        self.batches_read = 0

    def _know(self, source: str, item_id: str) -> str:
        item = f"{source}:{item_id}"
        sid = source_request_id(source, item_id)
        if sid not in self._by_sid:
            self._by_sid[sid] = item
            self._by_message[source_message_id(source, item_id, 0)] = item
        return item

    def add_ticketmatic(self, account: str, ids: Iterable[str]) -> None:
        for item_id in ids:
            self.expected.add(self._know("ticketmatic", f"{account}/{item_id}"))
        self._resolve()

    def add_ticketure(self, acknowledged: Iterable[str], sent: Iterable[str]) -> None:
        for item_id in sent:
            self.sent.add(self._know("ticketure", item_id))
        for item_id in acknowledged:
            self.expected.add(self._know("ticketure", item_id))
        self._resolve()

    def add_batches(self, batches: Iterable[dict[str, Any]]) -> None:
        for batch in batches:
            self.batches_read += 1
            events = batch.get("events") or [{}]
            message = (events[0].get("data") or {}).get("source_message_id")
            self._place(str(batch.get("source_request_id")), str(message))

    def _place(self, sid: str, message: str) -> bool:
        item = self._by_sid.get(sid) or self._by_message.get(message)
        if item is None:
            self.unresolved.append((sid, message))
            return False
        self.delivered.setdefault(item, set()).add(sid)
        return True

    def _resolve(self) -> None:
        waiting, self.unresolved = self.unresolved, []
        for sid, message in waiting:
            self._place(sid, message)

    def missing(self) -> set[str]:
        """Items acknowledged or served that no stored batch carries (yet)."""
        return self.expected - self.delivered.keys()

    def duplicated(self) -> dict[str, set[str]]:
        """Items stored under more than one distinct source_request_id."""
        return {item: sids for item, sids in self.delivered.items() if len(sids) > 1}

    def unacknowledged_delivered(self) -> int:
        """Pushes whose answer never came back 2xx but that reached mParticle all the same
        (the receiver took them, then died before answering): not a loss, not an error."""
        return len(self.delivered.keys() - self.expected)


class BatchReader:
    """Reads the mParticle simulator's stored batches onward from where it last stopped."""

    def __init__(self, mp_url: str) -> None:
        self.mp_url = mp_url
        self.offset = 0

    async def read_new(self, http: aiohttp.ClientSession, ledger: Ledger) -> int:
        new = 0
        while True:
            url = f"{self.mp_url}/_sim/batches"
            try:
                params = {"offset": str(self.offset), "limit": "5000"}
                async with http.get(url, params=params) as response:
                    page = orjson.loads(await response.read())
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                return new
            batches = page.get("batches") or []
            ledger.add_batches(batches)
            self.offset += len(batches)
            new += len(batches)
            if len(batches) < 5000:
                return new


async def mparticle_stats(http: aiohttp.ClientSession, mp_url: str) -> dict[str, Any]:
    """The simulator's /_sim/stats, or {} if it does not answer."""
    try:
        async with http.get(f"{mp_url}/_sim/stats") as response:
            stats: dict[str, Any] = orjson.loads(await response.read())
            return stats
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        return {}
