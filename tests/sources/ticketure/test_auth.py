"""Sender authentication: basic credentials and HMAC-SHA256 body signatures."""

from __future__ import annotations

import base64

from streamproc.config import PushSender, Secret
from streamproc.sources.ticketure.auth import Authenticator, Verdict, basic_header, sign
from tests.sources.ticketure.conftest import HMAC_SECRET, KEY, SECRET, SENDERS

HEADER = "X-Signature-SHA256"


def auth() -> Authenticator:
    return Authenticator(SENDERS, HEADER)


def test_basic_credentials_name_the_sender() -> None:
    """The right key and secret identify the configured basic sender."""
    headers = {"Authorization": basic_header(KEY, SECRET)}
    assert auth().method(headers) == "basic"
    assert auth().basic(headers) == "ticketure"


def test_basic_wrong_secret_or_key_is_invalid() -> None:
    """A wrong secret or an unknown key is INVALID (403), not MISSING."""
    for key, secret in ((KEY, "nope"), ("other", SECRET), ("", "")):
        assert auth().basic({"Authorization": basic_header(key, secret)}) is Verdict.INVALID


def test_no_or_unusable_credentials_are_missing() -> None:
    """No header, another scheme, or undecodable basic credentials are MISSING (401)."""
    a = auth()
    assert a.method({}) is Verdict.MISSING
    assert a.method({"Authorization": "Bearer abc"}) is Verdict.MISSING
    assert a.basic({"Authorization": "Basic !!!not-base64"}) is Verdict.MISSING
    no_colon = "Basic " + base64.b64encode(b"just-a-key").decode()
    assert a.basic({"Authorization": no_colon}) is Verdict.MISSING


def test_hmac_signature_of_the_body_names_the_sender() -> None:
    """A signature of the exact body under the shared secret identifies the hmac sender."""
    body = b'{"type": "ticket_audit"}'
    for value in (sign(HMAC_SECRET, body), sign(HMAC_SECRET, body).upper().replace("SHA256=", "")):
        headers = {HEADER: value}
        assert auth().method(headers) == "hmac"
        assert auth().signed(headers, body) == "signed"


def test_hmac_signature_of_another_body_or_secret_is_invalid() -> None:
    """A signature of a changed body, or under another secret, is INVALID."""
    body = b'{"a": 1}'
    assert auth().signed({HEADER: sign(HMAC_SECRET, b'{"a": 2}')}, body) is Verdict.INVALID
    assert auth().signed({HEADER: sign("other", body)}, body) is Verdict.INVALID
    assert auth().signed({HEADER: "sha256=\u00e9\ud800"}, body) is Verdict.INVALID


def test_a_method_without_senders_is_not_offered() -> None:
    """Basic credentials are MISSING when only hmac senders exist (and the reverse)."""
    only_hmac = Authenticator([PushSender(name="h", auth="hmac", secret=Secret("s"))], HEADER)
    assert only_hmac.method({"Authorization": basic_header("k", "s")}) is Verdict.MISSING
    only_basic = Authenticator([PushSender(name="b", key="k", secret=Secret("s"))], HEADER)
    assert only_basic.method({HEADER: sign("s", b"")}) is Verdict.MISSING


def test_repr_holds_no_secret() -> None:
    """The authenticator's repr names counts only, never keys or secrets."""
    text = repr(auth())
    for secret in (SECRET, KEY, HMAC_SECRET):
        assert secret not in text
