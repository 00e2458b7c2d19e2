"""Credentials out of messages: URL userinfo, Authorization values and HTTP auth tokens.

Settings refuse URLs that carry credentials (they have settings of their own), and the
refusal must not echo them; every log line goes through :class:`MaskingFormatter` too,
so that a URL from anywhere (a peer's answer, a library's exception) cannot leak one, nor
an ``Authorization`` header a client sent (aiohttp quotes a malformed header line in its
error), nor a ``Basic``/``Bearer`` token anywhere in a message or traceback.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://userinfo@ in free text: the userinfo runs to the last '@' before a '/' or a
# space, so a password holding '@', ':', '?' or '#' is masked whole.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/]*@")
# An Authorization header's value, to the end of its line or the quote around it.
_AUTHORIZATION = re.compile(r"((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\r\n'\"]+", re.I)
# A token after an HTTP auth scheme (as a header spells it), wherever it stands.
_TOKEN = re.compile(r"\b(Basic|Bearer|Digest)\s+[A-Za-z0-9+/=._~-]{8,}")


def mask_url(url: str) -> str:
    """``url`` with everything between ``://`` and its last ``@`` masked.

    For one setting's value, which may be malformed: a password holding a '/' is masked
    too, at the cost of masking a path that holds an '@'.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{MASK}@{host}" if userinfo or sep else url


def mask_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it masked."""
    if "@" not in text:  # the common case, for every log line
        return text
    return _USERINFO.sub(rf"\1{MASK}@", text)


def mask_secrets(text: str) -> str:
    """``text`` with URL credentials, Authorization values and auth tokens masked."""
    return _TOKEN.sub(rf"\1 {MASK}", _AUTHORIZATION.sub(rf"\1{MASK}", mask_urls(text)))


class MaskingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments, traceback) has credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))
