"""Memory per remembered item id in the dedupe state, with a million ids.

The ids are spread over one 24 h window of item time and loaded 500 at a time, as a restore
from the changelog does. ``tracemalloc`` counts what the state allocated (the table, the
tags and the bucket bookkeeping); the peak includes the old and the new table side by side
during a rebuild. A Python ``set`` of the id strings is measured the same way for contrast.
"""

from __future__ import annotations

import time
import tracemalloc
from array import array

from streamproc.config import Settings
from streamproc.mapper.dedupe import DedupeState
from streamproc.mapping.identity import item_hash
from tests.bench import Row

IDS = 1_000_000
CHUNK = 500
DAY_MS = 24 * 3_600_000
T0_MS = 1_700_000_000_000


def _item_id(i: int) -> str:
    step = DAY_MS // IDS
    return f"{T0_MS + i * step}-{i % 7}"


async def bench(settings: Settings) -> list[Row]:
    """Bytes per id (steady and peak), lookups per second, and the set-of-strings contrast."""
    step = DAY_MS // IDS
    hashes = array("Q", (item_hash("ticketmatic", _item_id(i)) for i in range(IDS)))
    window_ms = int(settings.mapping.dedupe_window_s * 1000)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        state = DedupeState(window_ms)
        for start in range(0, IDS, CHUNK):
            newest = T0_MS + (start + CHUNK - 1) * step
            bucket = (T0_MS + start * step) // state.bucket_ms
            state.load(bucket, start, newest, hashes[start : start + CHUNK])
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    started = time.perf_counter()
    probes = 200_000
    found = sum(1 for h in hashes[:probes] if h in state)
    lookups = probes / (time.perf_counter() - started)
    if found != probes or state.size != IDS:
        raise RuntimeError(f"dedupe state lost ids: {state.size} of {IDS}")

    tracemalloc.start()
    try:
        base_set = tracemalloc.get_traced_memory()[0]
        strings = {f"ticketmatic\x00{_item_id(i)}" for i in range(IDS // 10)}
        set_bytes = tracemalloc.get_traced_memory()[0] - base_set
    finally:
        tracemalloc.stop()
    del strings
    return [
        Row("dedupe memory per remembered id, 1M ids", (current - base) / IDS, "bytes", "<= 64"),
        Row("dedupe memory per id at peak (table rebuild)", (peak - base) / IDS, "bytes"),
        Row("dedupe lookups (hits), 1M ids", lookups, "lookups/s"),
        Row("for contrast: a Python set of id strings", set_bytes / (IDS // 10), "bytes"),
    ]
