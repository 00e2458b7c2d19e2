"""MappingContext from Settings, and the deterministic ids."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streamproc.config import (
    MappingSettings,
    Secret,
    Settings,
    TicketmaticAccount,
    TicketmaticSettings,
)
from streamproc.errors import ConfigError
from streamproc.mapping import ids
from streamproc.mapping.router import MappingContext


def settings(**mapping: object) -> Settings:
    accounts = [
        TicketmaticAccount(name="acme", access_key="k", secret_key=Secret("s"), currency="eur"),
        TicketmaticAccount(name="zoo", access_key="k", secret_key=Secret("s"), currency="GBP"),
    ]
    return Settings(
        ticketmatic=TicketmaticSettings(accounts=accounts),
        mapping=MappingSettings(**mapping),  # type: ignore[arg-type]
    )


def test_from_settings() -> None:
    """The context carries the mapping settings and each account's currency, upper case."""
    ctx = MappingContext.from_settings(
        settings(environment="production", ticketure_currency="cad", forward_unknown=True)
    )
    assert ctx == MappingContext(
        environment="production",
        ticketure_currency="CAD",
        ref_identity="customer_id",
        contact_identity="other_id_2",
        forward_unknown=True,
        currencies={"acme": "EUR", "zoo": "GBP"},
    )
    assert (ctx.currency("zoo"), ctx.currency("unknown"), ctx.currency(None)) == (
        "GBP",
        "EUR",
        "EUR",
    )


@pytest.mark.parametrize(
    ("mapping", "setting"),
    [
        ({"ref_identity": "facebook_id"}, "mapping.ref_identity (STREAMPROC_MAPPING_REF_IDENTITY)"),
        ({"contact_identity": "customer_id"}, "mapping.contact_identity"),
        ({"ticketure_currency": "dollars"}, "mapping.ticketure_currency"),
    ],
)
def test_bad_settings_name_the_setting(mapping: dict[str, object], setting: str) -> None:
    """An unusable mapping setting is a ConfigError naming it and its variable."""
    with pytest.raises(ConfigError) as caught:
        MappingContext.from_settings(settings(**mapping))
    assert str(caught.value).startswith(f"invalid setting {setting}")


def test_bad_account_currency_names_the_accounts() -> None:
    """A Ticketmatic account currency that is not ISO 4217 names ticketmatic.accounts."""
    s = settings()
    s.ticketmatic.accounts[0].currency = "euro"
    with pytest.raises(ConfigError, match=r"ticketmatic\.accounts"):
        MappingContext.from_settings(s)


def test_ids_are_uuid5_of_source_and_item() -> None:
    """Ids are UUIDv5: stable, distinct per source, item and event index."""
    request = ids.source_request_id("ticketmatic", "1-0")
    assert uuid.UUID(request).version == 5
    assert request == ids.source_request_id("ticketmatic", "1-0")
    assert request != ids.source_request_id("ticketure", "1-0")
    assert request != ids.source_request_id("ticketmatic", "1-1")
    messages = {ids.source_message_id("ticketmatic", "1-0", i) for i in range(3)}
    assert len(messages) == 3
    assert request not in messages


def test_ids_are_frozen() -> None:
    """The namespace and name layout never change: mParticle dedupes on these ids."""
    assert ids.source_request_id("ticketmatic", "1661358385340-0") == str(
        uuid.uuid5(uuid.UUID("5b0c4c1e-8f5e-5d0a-9a57-2f1f4b8d6c3e"), "ticketmatic:1661358385340-0")
    )
    assert ids.source_message_id("ticketure", "abc", 0) == str(
        uuid.uuid5(uuid.UUID("5b0c4c1e-8f5e-5d0a-9a57-2f1f4b8d6c3e"), "ticketure:abc#0")
    )


@hypothesis_settings(max_examples=2000)
@given(name=st.text())
def test_our_uuid5_is_the_standard_librarys(name: str) -> None:
    """ids.uuid5 (hex digits patched) equals uuid.uuid5 for any name: every variant digit,
    any text, the empty one included."""
    assert ids.uuid5(name) == str(uuid.uuid5(ids.NAMESPACE, name))
