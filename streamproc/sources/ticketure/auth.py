"""Who pushed a request: HTTP basic credentials or an HMAC-SHA256 signature of the body.

Each configured sender (``settings.receiver.senders``) uses one method:

- ``basic``: ``Authorization: Basic base64(key:secret)``, as mParticle's Events API and so
  Ticketure's Push API use it;
- ``hmac``: the header ``settings.receiver.signature_header`` holds the hex HMAC-SHA256 of
  the raw body under the sender's secret (``sha256=`` prefix optional, any case).

Every comparison is constant-time and every sender of the method is tried (no early exit
that would tell which key exists). Outcomes: no usable credentials (401), credentials that
match no sender (403), or the sender. What the client sent is never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from enum import Enum

from streamproc.config import PushSender


class Verdict(Enum):
    MISSING = "missing"  # 401: no credentials of a kind we take
    INVALID = "invalid"  # 403: credentials that match no sender


def _bytes(text: str) -> bytes:
    # Header values may hold any character; never let an odd one raise.
    return text.encode("utf-8", "surrogatepass")


class Authenticator:
    """Checks requests against the configured senders (secrets read once, kept as bytes)."""

    def __init__(self, senders: Sequence[PushSender], signature_header: str) -> None:
        self.signature_header = signature_header
        self._basic = [
            (s.name, _bytes(s.key), _bytes(s.secret.reveal())) for s in senders if s.auth == "basic"
        ]
        self._hmac = [(s.name, _bytes(s.secret.reveal())) for s in senders if s.auth == "hmac"]

    def __repr__(self) -> str:
        return f"Authenticator(basic={len(self._basic)}, hmac={len(self._hmac)})"

    def method(self, headers: Mapping[str, str]) -> str | Verdict:
        """``"basic"`` or ``"hmac"`` by what the request carries, else Verdict.MISSING."""
        authorization = headers.get("Authorization", "")
        if authorization[:6].lower() == "basic " and self._basic:
            return "basic"
        if headers.get(self.signature_header) and self._hmac:
            return "hmac"
        return Verdict.MISSING

    def basic(self, headers: Mapping[str, str]) -> str | Verdict:
        """The sender named by basic credentials, or why not."""
        token = headers.get("Authorization", "")[6:].strip()
        try:
            decoded = base64.b64decode(_bytes(token), validate=True)
        except (binascii.Error, ValueError):
            return Verdict.MISSING
        user, colon, password = decoded.partition(b":")
        if not colon:
            return Verdict.MISSING
        found: str | None = None
        for name, key, secret in self._basic:
            # Both comparisons always run: `&` does not short-circuit.
            if hmac.compare_digest(user, key) & hmac.compare_digest(password, secret):
                found = found or name
        return found if found is not None else Verdict.INVALID

    def signed(self, headers: Mapping[str, str], body: bytes) -> str | Verdict:
        """The sender whose secret signed ``body``, or why not."""
        given = headers.get(self.signature_header, "").strip().lower()
        given = given.removeprefix("sha256=")
        found: str | None = None
        for name, secret in self._hmac:
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
            if hmac.compare_digest(_bytes(expected), _bytes(given)):
                found = found or name
        return found if found is not None else Verdict.INVALID


def sign(secret: str, body: bytes) -> str:
    """The signature header value a sender with ``secret`` puts on ``body``."""
    return "sha256=" + hmac.new(_bytes(secret), body, hashlib.sha256).hexdigest()


def basic_header(key: str, secret: str) -> str:
    """The ``Authorization`` header value for basic credentials."""
    return "Basic " + base64.b64encode(_bytes(f"{key}:{secret}")).decode("ascii")
