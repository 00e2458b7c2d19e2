"""The simulators' own credentials: Ticketmatic's checks and a Ticketure sender's signing.

Written from the APIs' documentation (../shared/reference and the receiver's documented
contract in the README), not from the roles' code: a simulator that reused the poller's
signature or the receiver's signer would agree with a wrong recipe on both sides.

Ticketmatic: ``Authorization: TM-HMAC-SHA256 key=<accesskey> ts=<ts> sign=<sign>``, ``ts``
UTC ``YYYY-MM-DDTHH:MM:SS`` younger than 30 minutes, ``sign`` the lowercase hex
HMAC-SHA256 keyed with the secret key over ``accesskey + accountname + ts``; or HTTP basic
with the access key and secret key.

A push sender: HTTP basic (key, secret), or the hex HMAC-SHA256 of the body under its
secret as ``sha256=<hex>``; with a timestamp, over ``<timestamp>.<body>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

TM_SCHEME = "TM-HMAC-SHA256"
TM_MAX_AGE_S = 30 * 60


def tm_sign(access_key: str, secret_key: str, account: str, ts: str) -> str:
    message = f"{access_key}{account}{ts}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def tm_signed_fields(header: str) -> dict[str, str] | None:
    """``key``, ``ts`` and ``sign`` of a signed header; None if it is not one."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != TM_SCHEME:
        return None
    fields = dict(part.partition("=")[::2] for part in rest.split() if "=" in part)
    if len(fields) != len(rest.split()) or not {"key", "ts", "sign"} <= fields.keys():
        return None
    return fields


def tm_signed_at(ts: str) -> datetime | None:
    """When a signed header says it was made (UTC); None unless ``YYYY-MM-DDTHH:MM:SS``."""
    if len(ts) != 19 or ts[10] != "T":
        return None
    try:
        return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def basic(user: str, password: str) -> str:
    """An ``Authorization`` value of HTTP basic (RFC 7617)."""
    token = base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogatepass"))
    return f"Basic {token.decode('ascii')}"


def push_signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """What a push sender puts in the signature header for ``body``."""
    signed = body if timestamp is None else f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8", "surrogatepass"), signed, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"
