"""Which item a record carries: the id that dedupe and source_request_id rest on."""

from __future__ import annotations

from streamproc.mapping.identity import item_id_of


def test_ticketmatic_ids_are_qualified_by_account() -> None:
    """Two accounts' items with the same eventstream id are two items."""
    acme = item_id_of("ticketmatic", b"{}", "1526985054069-0", "acme")
    opera = item_id_of("ticketmatic", b"{}", "1526985054069-0", "opera")
    assert (acme, opera) == ("acme/1526985054069-0", "opera/1526985054069-0")


def test_header_wins_then_own_id_then_content_hash() -> None:
    """Without a header the item's own id serves; without either, a stable content hash."""
    assert item_id_of("ticketure", b'{"event_id": "e1"}', "h1") == "h1"
    assert item_id_of("ticketure", b'{"event_id": "e1"}', None) == "e1"
    assert item_id_of("ticketmatic", b'{"id": "1-2"}', None, "acme") == "acme/1-2"
    hashed = item_id_of("ticketure", b'{"type": "x"}', None)
    assert hashed.startswith("sha256:")
    assert hashed == item_id_of("ticketure", b'{"type": "x"}', None)
    assert hashed != item_id_of("ticketure", b'{"type": "y"}', None)
    assert item_id_of("ticketure", b"not json", None).startswith("sha256:")
