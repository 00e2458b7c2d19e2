"""Signing and basic auth, against the recipe in the reference README."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from streamproc.config import Secret, TicketmaticAccount
from streamproc.sim import credentials
from streamproc.sources.ticketmatic import auth


def recipe(access_key: str, secret_key: str, account: str, ts: str) -> str:
    """The README's words, literally: lowercase hex HMAC-SHA256(key=secretkey,
    msg=accesskey + accountname + ts)."""
    return hmac.new(
        secret_key.encode(), (access_key + account + ts).encode(), hashlib.sha256
    ).hexdigest()


def test_signature_follows_the_reference_recipe(shared_reference: Path) -> None:
    """The signature is the README's HMAC over access key + account + ts, lowercase hex."""
    readme = (shared_reference / "ticketmatic" / "README.md").read_text(encoding="utf-8")
    assert "accesskey + accountname + ts" in readme  # the recipe this test encodes
    ts = "2024-05-01T09:30:00"
    sign = auth.signature("f3a1c0de", "s3cr3t", "demoaccount", ts)
    assert sign == recipe("f3a1c0de", "s3cr3t", "demoaccount", ts)
    assert sign == sign.lower()
    assert len(sign) == 64
    # The simulator's own check, written apart from the poller, agrees with the recipe.
    assert credentials.tm_sign("f3a1c0de", "s3cr3t", "demoaccount", ts) == sign


def test_signature_depends_on_every_signed_part() -> None:
    """Changing the key, the account, the time or the secret changes the signature."""
    base = auth.signature("ak", "sk", "acme", "2024-05-01T09:30:00")
    assert base != auth.signature("ak2", "sk", "acme", "2024-05-01T09:30:00")
    assert base != auth.signature("ak", "sk", "acme2", "2024-05-01T09:30:00")
    assert base != auth.signature("ak", "sk", "acme", "2024-05-01T09:30:01")
    assert base != auth.signature("ak", "sk2", "acme", "2024-05-01T09:30:00")


def test_hmac_header_shape_and_utc_time() -> None:
    """The header is `TM-HMAC-SHA256 key=.. ts=.. sign=..` with ts in UTC, no offset."""
    now = datetime(2024, 5, 1, 11, 30, 5, 123000, tzinfo=timezone(timedelta(hours=2)))
    header = auth.hmac_header("ak", "sk", "acme", now)
    assert header == (
        f"TM-HMAC-SHA256 key=ak ts=2024-05-01T09:30:05 "
        f"sign={recipe('ak', 'sk', 'acme', '2024-05-01T09:30:05')}"
    )
    fields = credentials.tm_signed_fields(header)  # as the simulator reads it
    assert fields is not None
    assert fields["key"] == "ak"
    assert credentials.tm_signed_at(fields["ts"]) == datetime(2024, 5, 1, 9, 30, 5, tzinfo=UTC)


def test_basic_header_is_access_key_and_secret() -> None:
    """Basic auth sends access key : secret key, base64."""
    header = auth.basic_header("ak", "sk:with:colons")
    assert header.startswith("Basic ")
    assert base64.b64decode(header[6:]).decode() == "ak:sk:with:colons"


def test_authorization_picks_the_account_method() -> None:
    """An account's `auth` setting chooses signed header (default) or basic."""
    signed = TicketmaticAccount(name="acme", access_key="ak", secret_key=Secret("sk"))
    basic = TicketmaticAccount(name="acme", access_key="ak", secret_key=Secret("sk"), auth="basic")
    now = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    assert auth.authorization(signed, now).startswith(
        "TM-HMAC-SHA256 key=ak ts=2024-05-01T09:30:00"
    )
    assert auth.authorization(basic, now) == auth.basic_header("ak", "sk")


def test_the_simulator_refuses_other_schemes_and_partial_headers() -> None:
    """Headers that are not a complete signed header parse to None in the simulator."""
    assert credentials.tm_signed_fields("Basic abc") is None
    assert credentials.tm_signed_fields("TM-HMAC-SHA256 key=ak ts=x") is None
    assert credentials.tm_signed_fields("TM-HMAC-SHA256 key=ak ts sign=y") is None
    assert credentials.tm_signed_at("2024-05-01 09:30:00") is None
    assert credentials.tm_signed_at("2024-05-01T9:30:00") is None
