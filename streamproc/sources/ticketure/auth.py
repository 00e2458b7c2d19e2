"""Who pushed a request: HTTP basic credentials or an HMAC-SHA256 signature of the body.

Each configured sender (``settings.receiver.senders``) uses one method:

- ``basic``: ``Authorization: Basic base64(key:secret)``, as mParticle's Events API and so
  Ticketure's Push API use it; checked from the headers alone, before any body is read;
- ``hmac``: the header ``settings.receiver.signature_header`` holds the hex HMAC-SHA256 of
  the raw body under the sender's secret (``sha256=`` prefix optional, any case). With the
  sender's ``replay_window_s`` set, the header ``settings.receiver.timestamp_header``
  holds a Unix time in seconds, the signature covers ``<timestamp>.<body>``, and a time
  further than the window from our clock is refused: a captured push cannot be replayed
  after the window. The headers are checked before the body is read (:meth:`Authenticator.
  hmac_candidates`); the signature itself needs the body (:meth:`Authenticator.signed`).

Every comparison is constant-time and every sender of the method is tried (no early exit
that would tell which key exists). Outcomes: no usable credentials (401), credentials that
match no sender (403), or the sender. What the client sent is never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import NamedTuple

from streamproc.config import PushSender


class Verdict(Enum):
    MISSING = "missing"  # 401: no credentials of a kind we take
    INVALID = "invalid"  # 403: credentials that match no sender


class HmacSender(NamedTuple):
    name: str
    secret: bytes
    replay_window_s: float | None


_SIGNATURE = re.compile(r"(?:sha256=)?([0-9a-f]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _bytes(text: str) -> bytes:
    # Header values may hold any character; never let an odd one raise.
    return text.encode("utf-8", "surrogatepass")


class Authenticator:
    """Checks requests against the configured senders (secrets read once, kept as bytes)."""

    def __init__(
        self,
        senders: Sequence[PushSender],
        signature_header: str,
        timestamp_header: str = "X-Signature-Timestamp",
    ) -> None:
        self.signature_header = signature_header
        self.timestamp_header = timestamp_header
        self._basic = [
            (s.name, _bytes(s.key), _bytes(s.secret.reveal())) for s in senders if s.auth == "basic"
        ]
        self._hmac = [
            HmacSender(s.name, _bytes(s.secret.reveal()), s.replay_window_s)
            for s in senders
            if s.auth == "hmac"
        ]

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

    def hmac_candidates(
        self, headers: Mapping[str, str], now_s: float
    ) -> list[HmacSender] | Verdict:
        """The hmac senders that could have signed a request with these headers.

        Checked before the body is read: the signature must be 64 hex digits, and a sender
        with a replay window needs a timestamp within it. A timestamp missing where every
        sender needs one is MISSING; a malformed signature or a stale time is INVALID.
        """
        signature = headers.get(self.signature_header, "").strip().lower()
        if not _SIGNATURE.fullmatch(signature):
            return Verdict.INVALID
        stamp = headers.get(self.timestamp_header, "").strip()
        when = int(stamp) if _TIMESTAMP.fullmatch(stamp) else None
        candidates = [
            s
            for s in self._hmac
            if s.replay_window_s is None
            or (when is not None and abs(now_s - when) <= s.replay_window_s)
        ]
        if candidates:
            return candidates
        return Verdict.MISSING if not stamp else Verdict.INVALID

    def signed(
        self, headers: Mapping[str, str], body: bytes, candidates: Sequence[HmacSender]
    ) -> str | Verdict:
        """The sender among ``candidates`` whose secret signed ``body``, or why not."""
        match = _SIGNATURE.fullmatch(headers.get(self.signature_header, "").strip().lower())
        if match is None:
            return Verdict.INVALID
        given = match.group(1).encode("ascii")
        stamp = headers.get(self.timestamp_header, "").strip()
        found: str | None = None
        for sender in candidates:
            timestamp = None if sender.replay_window_s is None else stamp
            expected = _digest(sender.secret, body, timestamp).encode("ascii")
            if hmac.compare_digest(expected, given):
                found = found or sender.name
        return found if found is not None else Verdict.INVALID


def _digest(secret: bytes, body: bytes, timestamp: str | None) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    if timestamp is not None:
        mac.update(timestamp.encode("ascii") + b".")
    mac.update(body)
    return mac.hexdigest()
