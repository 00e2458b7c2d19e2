"""`streamproc poll` refuses configurations that could only fail later."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import pytest

from streamproc import runner
from streamproc.config import (
    MParticleSettings,
    Secret,
    Settings,
    TicketmaticAccount,
    TicketmaticSettings,
)
from streamproc.errors import ConfigError
from streamproc.sources.ticketmatic import command
from tests.procs import Proc, settings_env


def with_accounts(*accounts: TicketmaticAccount) -> Settings:
    return Settings(ticketmatic=TicketmaticSettings(accounts=list(accounts)))


def acme(**fields: str) -> TicketmaticAccount:
    return TicketmaticAccount(name="acme", access_key="ak", secret_key=Secret("sk"), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (with_accounts(), "no account to poll"),
        (with_accounts(acme(), acme()), "appears twice"),
        (with_accounts(acme(start_ts="last tuesday")), "not an ISO 8601 time"),
    ],
    ids=["none", "twice", "bad-start-ts"],
)
async def test_bad_account_settings_are_config_errors(settings: Settings, reason: str) -> None:
    """No account, a repeated name or an unreadable start_ts: ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=reason) as caught:
        await command.command(settings, argparse.Namespace(session_timeout=10.0, backoff_base=0.5))
    assert "ticketmatic.accounts" in caught.value.setting


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (with_accounts(acme(), acme()), "appears twice"),
        (with_accounts(acme(start_ts="last tuesday")), "not an ISO 8601 time"),
    ],
    ids=["twice", "bad-start-ts"],
)
async def test_run_refuses_the_same_account_settings(settings: Settings, reason: str) -> None:
    """`streamproc run` checks the accounts as `poll` does, before starting anything."""
    settings = msgspec.structs.replace(
        settings,
        mparticle=MParticleSettings(api_key="k", api_secret=Secret("s")),
    )
    with pytest.raises(ConfigError, match=reason) as caught:
        await runner.command(settings, argparse.Namespace(lag_interval=5.0))
    assert "ticketmatic.accounts" in caught.value.setting


def test_poll_without_accounts_exits_2(tmp_path: Path) -> None:
    """The real command says what is missing and exits 2, before touching Kafka."""
    proc = Proc(["poll"], settings_env(Settings()), tmp_path / "poll.log")
    code = proc.popen.wait(timeout=60)
    proc.kill()
    assert code == 2
    assert "STREAMPROC_TICKETMATIC_ACCOUNTS" in proc.log_path.read_text()
