"""Credentials out of messages: the ``user:password@`` of URLs masked as ``***@``.

Settings refuse URLs that carry credentials (they have settings of their own), and the
refusal must not echo them; every log line goes through :class:`MaskingFormatter` too,
so that a URL from anywhere (a peer's answer, a library's exception) cannot leak one.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://userinfo@ in free text: the userinfo runs to the last '@' before a '/' or a
# space, so a password holding '@', ':', '?' or '#' is masked whole.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/]*@")


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


class MaskingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments, traceback) has URL credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_urls(super().format(record))
