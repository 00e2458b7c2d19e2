"""Encoding a batch within mParticle's 128 KB, shrinking it (counted) when it is larger.

Almost every batch is a few hundred bytes. The exceptions are orders of hundreds of
tickets and items with many long attributes. mParticle rejects a batch over the limit
outright, so losing detail beats losing the event. In order, until it fits:

1. products lose their custom attributes and identical products are merged into one line
   with the summed quantity (the totals stay right);
2. products are dropped from the end (counted as ``products``);
3. event custom attributes are dropped, largest first (counted as ``attributes``).

Whatever was shrunk is counted once as ``batch_size``. A batch still too large after that
(a gigantic identity, say) raises ItemError(too_large).
"""

from __future__ import annotations

from streamproc.formats.mparticle import (
    MAX_BATCH_BYTES,
    Batch,
    CommerceEvent,
    Product,
    encode,
)
from streamproc.mapping.common import TOO_LARGE, ItemError
from streamproc.mapping.limits import Limits


def fit(batch: Batch, limits: Limits, max_bytes: int = MAX_BATCH_BYTES) -> bytes:
    """The encoded batch, at most ``max_bytes`` long; shrinks ``batch`` in place if needed."""
    raw = encode(batch)
    if len(raw) <= max_bytes:
        return raw
    limits.count("batch_size")
    for step in (_merge_products, _drop_products, _drop_attributes):
        raw = step(batch, limits, max_bytes)
        if len(raw) <= max_bytes:
            return raw
    raise ItemError(TOO_LARGE, "batch", f"{len(raw)} bytes even without products and attributes")


def _merge_products(batch: Batch, limits: Limits, max_bytes: int) -> bytes:
    for event in batch.events:
        if isinstance(event, CommerceEvent) and event.data.product_action.products:
            merged: dict[tuple[object, ...], Product] = {}
            for product in event.data.product_action.products:
                line = (product.id, product.name, product.category, product.variant, product.price)
                if line in merged:
                    merged[line].quantity += product.quantity
                else:
                    product.custom_attributes = None
                    merged[line] = product
            event.data.product_action.products = list(merged.values())
    return encode(batch)


def _drop_products(batch: Batch, limits: Limits, max_bytes: int) -> bytes:
    raw = encode(batch)
    for event in batch.events:
        if len(raw) <= max_bytes:
            break
        if not isinstance(event, CommerceEvent) or not event.data.product_action.products:
            continue
        products = event.data.product_action.products
        # Binary search for the longest prefix that fits: log2(n) encodings, not n.
        low, high = 0, len(products)
        while low < high:
            mid = (low + high + 1) // 2
            event.data.product_action.products = products[:mid]
            if len(encode(batch)) <= max_bytes:
                low = mid
            else:
                high = mid - 1
        event.data.product_action.products = products[:low]
        limits.count("products", len(products) - low)
        raw = encode(batch)
    return raw


def _drop_attributes(batch: Batch, limits: Limits, max_bytes: int) -> bytes:
    raw = encode(batch)
    for event in batch.events:
        attributes = event.data.custom_attributes
        if not attributes:
            continue
        # At most 100 attributes, so re-encoding after each drop stays cheap enough for
        # what is a rare path.
        by_size = sorted(attributes, key=lambda k: len(str(attributes[k]).encode()), reverse=True)
        for name in by_size:
            if len(raw) <= max_bytes:
                return raw
            del attributes[name]
            limits.count("attributes")
            raw = encode(batch)
        if not attributes:
            event.data.custom_attributes = None
            raw = encode(batch)
    return raw
