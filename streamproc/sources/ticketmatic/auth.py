"""Ticketmatic's two documented ways to authenticate: signed header and HTTP basic.

Signed header: ``Authorization: TM-HMAC-SHA256 key=<accesskey> ts=<ts> sign=<sign>`` where
``ts`` is UTC now as ``YYYY-MM-DDTHH:MM:SS`` and ``sign`` is the lowercase hex
HMAC-SHA256 keyed with the secret key over ``accesskey + accountname + ts``. Only key,
account and time are signed (not the path or the query), and Ticketmatic refuses a
signature older than 30 minutes, so a header is built fresh for every request.

Basic: user = access key, password = secret key. Neither form ever reaches a log: callers
get the header value and must not print it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

from streamproc.config import TicketmaticAccount

SCHEME = "TM-HMAC-SHA256"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S"


def signature(access_key: str, secret_key: str, account: str, ts: str) -> str:
    """Lowercase hex HMAC-SHA256(key=secret_key, msg=access_key + account + ts)."""
    message = (access_key + account + ts).encode("utf-8")
    return hmac.new(secret_key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def format_sign_ts(now: datetime) -> str:
    """The ``ts`` of a signed header: UTC, ``YYYY-MM-DDTHH:MM:SS``."""
    return now.astimezone(UTC).strftime(TS_FORMAT)


def hmac_header(access_key: str, secret_key: str, account: str, now: datetime) -> str:
    """The ``Authorization`` value of the signed-header method at time ``now``."""
    ts = format_sign_ts(now)
    sign = signature(access_key, secret_key, account, ts)
    return f"{SCHEME} key={access_key} ts={ts} sign={sign}"


def basic_header(access_key: str, secret_key: str) -> str:
    """The ``Authorization`` value of HTTP basic auth (access key : secret key)."""
    token = base64.b64encode(f"{access_key}:{secret_key}".encode()).decode("ascii")
    return f"Basic {token}"


def authorization(account: TicketmaticAccount, now: datetime | None = None) -> str:
    """The ``Authorization`` value for one request of ``account``, by its ``auth`` method."""
    secret = account.secret_key.reveal()
    if account.auth == "basic":
        return basic_header(account.access_key, secret)
    return hmac_header(account.access_key, secret, account.name, now or datetime.now(UTC))
