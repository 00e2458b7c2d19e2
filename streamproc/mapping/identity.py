"""Which item a source record carries: the id that dedupe and ``source_request_id`` use."""

from __future__ import annotations

import hashlib

import msgspec

from streamproc.decoding import decode_json
from streamproc.errors import DecodeError
from streamproc.formats.envelope import Source


class _IdOnly(msgspec.Struct):
    id: str | int | None = None
    event_id: str | None = None


_ID_ONLY = msgspec.json.Decoder(_IdOnly)


def item_id_of(source: str, value: bytes, header_id: str | None, account: str | None = None) -> str:
    """The item id: the header, else the item's own id, else a hash of its content.

    Ticketmatic's ids number each account's stream on its own, so two accounts can hold
    the same id: a Ticketmatic item is identified as ``<account>/<id>`` (for dedupe and for
    ``source_request_id``), else two accounts' items would be taken for one.

    Never raises: a value that is no JSON, nested too deep or holds no usable id is
    identified by its content hash (the mapping then says what is wrong with it).
    """
    if source == Source.TICKETMATIC and account:
        return f"{account}/{item_id_of(source, value, header_id)}"
    if header_id:
        return header_id
    try:
        ids = decode_json(_ID_ONLY, value, "item")
    except DecodeError:
        ids = _IdOnly()
    own = ids.id if source == Source.TICKETMATIC else ids.event_id
    if own is not None and str(own):
        return str(own)
    return "sha256:" + hashlib.sha256(value).hexdigest()[:32]


def item_hash(source: str, item_id: str) -> int:
    """A 64-bit hash of ``(source, item_id)``, never 0 (0 marks an empty slot)."""
    digest = hashlib.blake2b(f"{source}\x00{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1
