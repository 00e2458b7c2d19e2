"""Sender authentication: basic credentials and HMAC-SHA256 body signatures."""

from __future__ import annotations

import base64

import pytest

from streamproc.config import PushSender, Secret, load_settings
from streamproc.errors import ConfigError
from streamproc.sim.credentials import basic, push_signature
from streamproc.sources.ticketure.auth import Authenticator, Verdict
from tests.sources.ticketure.conftest import HMAC_SECRET, KEY, SECRET, SENDERS

HEADER = "X-Signature-SHA256"


def auth() -> Authenticator:
    return Authenticator(SENDERS, HEADER)


def test_basic_credentials_name_the_sender() -> None:
    """The right key and secret identify the configured basic sender."""
    headers = {"Authorization": basic(KEY, SECRET)}
    assert auth().method(headers) == "basic"
    assert auth().basic(headers) == "ticketure"


def test_basic_wrong_secret_or_key_is_invalid() -> None:
    """A wrong secret or an unknown key is INVALID (403), not MISSING."""
    for key, secret in ((KEY, "nope"), ("other", SECRET), ("", "")):
        assert auth().basic({"Authorization": basic(key, secret)}) is Verdict.INVALID


def test_no_or_unusable_credentials_are_missing() -> None:
    """No header, another scheme, or undecodable basic credentials are MISSING (401)."""
    a = auth()
    assert a.method({}) is Verdict.MISSING
    assert a.method({"Authorization": "Bearer abc"}) is Verdict.MISSING
    assert a.basic({"Authorization": "Basic !!!not-base64"}) is Verdict.MISSING
    no_colon = "Basic " + base64.b64encode(b"just-a-key").decode()
    assert a.basic({"Authorization": no_colon}) is Verdict.MISSING


def signed(headers: dict[str, str], body: bytes, now_s: float = 1_700_000_000) -> object:
    """What the receiver concludes: the headers first (before the body), then the body."""
    candidates = auth().hmac_candidates(headers, now_s)
    if isinstance(candidates, Verdict):
        return candidates
    return auth().signed(headers, body, candidates)


def test_hmac_signature_of_the_body_names_the_sender() -> None:
    """A signature of the exact body under the shared secret identifies the hmac sender."""
    body = b'{"type": "ticket_audit"}'
    for value in (
        push_signature(HMAC_SECRET, body),
        push_signature(HMAC_SECRET, body).upper().replace("SHA256=", ""),
    ):
        headers = {HEADER: value}
        assert auth().method(headers) == "hmac"
        assert signed(headers, body) == "signed"


def test_hmac_signature_of_another_body_or_secret_is_invalid() -> None:
    """A signature of a changed body, or under another secret, is INVALID."""
    body = b'{"a": 1}'
    assert signed({HEADER: push_signature(HMAC_SECRET, b'{"a": 2}')}, body) is Verdict.INVALID
    assert signed({HEADER: push_signature("other", body)}, body) is Verdict.INVALID
    assert signed({HEADER: "sha256=\u00e9\ud800"}, body) is Verdict.INVALID


def test_a_malformed_signature_is_refused_from_the_headers_alone() -> None:
    """No 64 hex digits: INVALID before any body is read (hmac_candidates needs none)."""
    for value in ("sha256=", "sha256=" + "g" * 64, "a" * 63, "a" * 65, "sha1=" + "a" * 64):
        assert auth().hmac_candidates({HEADER: value}, 0) is Verdict.INVALID


WINDOWED = [PushSender(name="w", auth="hmac", secret=Secret("ws"), replay_window_s=300)]


def test_replay_protection_checks_a_signed_time_within_the_window() -> None:
    """With replay_window_s the signature covers "<time>.<body>" and the time must be
    within the window; without a time it is MISSING, outside it or re-signed INVALID."""
    windowed = Authenticator(WINDOWED, HEADER, "X-Time")
    body, now = b"{}", 1_700_000_000
    good = {HEADER: push_signature("ws", body, now - 299), "X-Time": str(now - 299)}
    assert windowed.signed(good, body, windowed.hmac_candidates(good, now)) == "w"  # type: ignore[arg-type]
    assert windowed.hmac_candidates(good, now + 2) is Verdict.INVALID  # replayed too late
    assert windowed.hmac_candidates({HEADER: push_signature("ws", body)}, now) is Verdict.MISSING
    unsigned_time = {HEADER: push_signature("ws", body), "X-Time": str(now)}
    candidates = windowed.hmac_candidates(unsigned_time, now)
    assert windowed.signed(unsigned_time, body, candidates) is Verdict.INVALID  # type: ignore[arg-type]
    moved = {HEADER: good[HEADER], "X-Time": str(now)}  # the time changed, not re-signed
    assert windowed.signed(moved, body, windowed.hmac_candidates(moved, now)) is Verdict.INVALID  # type: ignore[arg-type]
    for stamp in ("", "-5", "1e9", "\u0661" * 10, "9" * 13):
        assert windowed.hmac_candidates({HEADER: good[HEADER], "X-Time": stamp}, now) in (
            Verdict.MISSING,
            Verdict.INVALID,
        )


def test_replay_protection_is_per_sender() -> None:
    """A sender without a window still signs the body alone next to one with a window."""
    both = Authenticator([*WINDOWED, *SENDERS], HEADER, "X-Time")
    body = b"{}"
    plain = {HEADER: push_signature(HMAC_SECRET, body)}
    assert both.signed(plain, body, both.hmac_candidates(plain, 0)) == "signed"  # type: ignore[arg-type]


def test_a_method_without_senders_is_not_offered() -> None:
    """Basic credentials are MISSING when only hmac senders exist (and the reverse)."""
    only_hmac = Authenticator([PushSender(name="h", auth="hmac", secret=Secret("s"))], HEADER)
    assert only_hmac.method({"Authorization": basic("k", "s")}) is Verdict.MISSING
    only_basic = Authenticator([PushSender(name="b", key="k", secret=Secret("s"))], HEADER)
    assert only_basic.method({HEADER: push_signature("s", b"")}) is Verdict.MISSING


def test_repr_holds_no_secret() -> None:
    """The authenticator's repr names counts only, never keys or secrets."""
    text = repr(auth())
    for secret in (SECRET, KEY, HMAC_SECRET):
        assert secret not in text


def test_a_replay_window_is_for_hmac_senders_only() -> None:
    """Basic credentials sign no time: replay_window_s on a basic sender is a config error."""
    with pytest.raises(ConfigError, match="replay_window_s"):
        load_settings(
            env={
                "STREAMPROC_RECEIVER_SENDERS": '[{"name": "b", "key": "k", "secret": "s", '
                '"replay_window_s": 60}]'
            }
        )
    settings = load_settings(
        env={
            "STREAMPROC_RECEIVER_SENDERS": '[{"name": "h", "auth": "hmac", "secret": "s", '
            '"replay_window_s": 60}]'
        }
    )
    assert settings.receiver.senders[0].replay_window_s == 60
