"""The mapping's configuration, checked once: what every batch needs from Settings.

Re-exported by ``streamproc.mapping.router``; lives here so the source mappers can use it
without importing the router.
"""

from __future__ import annotations

import re

import msgspec

from streamproc.config import Settings, env_name
from streamproc.errors import ConfigError
from streamproc.formats.mparticle import IDENTITY_TYPES, Environment

# Ticketmatic's own default (TicketmaticAccount.currency) for an account that the settings
# do not list, e.g. records produced before an account was removed from the config.
DEFAULT_TICKETMATIC_CURRENCY = "EUR"

_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Which setting each field comes from, to name it in a ConfigError.
_SETTING = {
    "environment": ("mapping", "environment"),
    "ticketure_currency": ("mapping", "ticketure_currency"),
    "ref_identity": ("mapping", "ref_identity"),
    "contact_identity": ("mapping", "contact_identity"),
    "currencies": ("ticketmatic", "accounts"),
}


class MappingContext(msgspec.Struct, frozen=True):
    """Built once from Settings (:meth:`from_settings`); ValueError if a field is invalid.

    ``currencies`` maps a Ticketmatic account name to its ISO 4217 currency code.
    """

    environment: Environment = "development"
    ticketure_currency: str = "USD"
    ref_identity: str = "customer_id"
    contact_identity: str = "other_id_2"
    forward_unknown: bool = False
    currencies: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.environment not in ("development", "production"):
            raise ValueError(f"environment: {self.environment!r} is not development|production")
        for name in ("ref_identity", "contact_identity"):
            value = getattr(self, name)
            if value not in IDENTITY_TYPES:
                known = ", ".join(sorted(IDENTITY_TYPES))
                raise ValueError(f"{name}: {value!r} is not an mParticle identity type ({known})")
        if self.ref_identity == self.contact_identity:
            raise ValueError("contact_identity: must differ from ref_identity")
        if not _CURRENCY.match(self.ticketure_currency):
            raise ValueError(f"ticketure_currency: {self.ticketure_currency!r} is not ISO 4217")
        for account, currency in self.currencies.items():
            if not _CURRENCY.match(currency):
                raise ValueError(f"currencies: {account}: {currency!r} is not ISO 4217")

    def currency(self, account: str | None) -> str:
        """The currency of a Ticketmatic account (EUR for one the settings do not list)."""
        if account is None:
            return DEFAULT_TICKETMATIC_CURRENCY
        return self.currencies.get(account, DEFAULT_TICKETMATIC_CURRENCY)

    @classmethod
    def from_settings(cls, settings: Settings) -> MappingContext:
        """ConfigError naming the setting if one is unusable (e.g. an unknown identity)."""
        mapping = settings.mapping
        try:
            return cls(
                environment=mapping.environment,
                ticketure_currency=mapping.ticketure_currency.strip().upper(),
                ref_identity=mapping.ref_identity.strip(),
                contact_identity=mapping.contact_identity.strip(),
                forward_unknown=mapping.forward_unknown,
                currencies={
                    a.name: a.currency.strip().upper() for a in settings.ticketmatic.accounts
                },
            )
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            path = _SETTING.get(field, ("mapping", field))
            raise ConfigError(f"{'.'.join(path)} ({env_name(path)})", reason) from None
