"""The streamproc command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamproc import cli
from streamproc.redact import mask_secrets


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproc.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_help_lists_every_role() -> None:
    """--help names every subcommand a user needs."""
    result = run("--help")
    assert result.returncode == 0
    for name in ("poll", "receive", "map", "deliver", "run", "sim", "topics", "dlq", "config"):
        assert name in result.stdout


def test_missing_role_module_says_not_implemented(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command whose module does not exist says so and exits 2."""
    monkeypatch.setitem(cli.COMMANDS, ("map",), ("streamproc.no_such_module", "x"))
    assert cli.main(["map"]) == 2
    assert "not implemented yet" in capsys.readouterr().err


def test_invalid_configuration_fails_naming_the_setting() -> None:
    """A bad STREAMPROC_ value stops the command with exit 2 and the variable's name."""
    result = run("config", env={"STREAMPROC_METRICS_PORT": "x", "PATH": ""})
    assert result.returncode == 2
    assert "STREAMPROC_METRICS_PORT" in result.stderr


def test_config_prints_settings_without_secrets() -> None:
    """`streamproc config` shows the effective settings with secrets masked."""
    result = run("config", env={"STREAMPROC_MPARTICLE_API_SECRET": "s3cr3t", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert '"api_secret": "***"' in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr


def test_credentials_in_a_url_stay_out_of_errors_and_log_lines() -> None:
    """`deliver` with user:password@ in its base URL exits 2 masked; log lines mask any URL."""
    url = "https://feed-key:s3cr3t@s2s.mparticle.com"
    result = run("deliver", env={"STREAMPROC_MPARTICLE_BASE_URL": url, "PATH": ""})
    assert result.returncode == 2
    assert "STREAMPROC_MPARTICLE_BASE_URL" in result.stderr
    assert "'https://***@s2s.mparticle.com'" in result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    # Lines through the entry point's handler, as every command logs them.
    script = (
        "import logging; from streamproc import cli; cli.configure_logging('INFO'); "
        "log = logging.getLogger('streamproc.sinks.mparticle.deliverer'); "
        f"log.info('delivering %s to %s (group %s)', 'mparticle.batches', {url!r}, 'g'); "
        f"log.warning('peer said: see %s/v2?x=1 and http://u:p@w@h:1/', {url!r})"
    )
    logged = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stderr
    assert "INFO streamproc.sinks.mparticle.deliverer: delivering mparticle.batches to " in logged
    assert "https://***@s2s.mparticle.com (group g)" in logged
    assert "https://***@s2s.mparticle.com/v2?x=1 and http://***@h:1/" in logged
    assert "s3cr3t" not in logged
    assert "u:p" not in logged


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("b'Authorization: Basic cHVzaDpzM2NyM3Q=\\x01'", "b'Authorization: ***'"),
        ("headers={'authorization': 'Bearer eyJhbGciOi.x.y'}", "headers={'authorization': '***'}"),
        ("Proxy-Authorization: Digest username=u, response=r", "Proxy-Authorization: ***"),
        ("retry with Basic dXNlcjpwYXNzd29yZA== later", "retry with Basic *** later"),
        ("HTTP basic auth with the feed key is required", None),
        ('Basic realm="streamproc"', None),
    ],
)
def test_log_lines_mask_authorization_values_and_tokens(line: str, shown: str | None) -> None:
    """Whatever a library quotes (aiohttp's malformed header line, a request repr), the
    Authorization value and any Basic/Bearer token are masked; plain prose is left alone."""
    assert mask_secrets(line) == (line if shown is None else shown)


def test_library_loggers_stay_at_info_unless_named() -> None:
    """At DEBUG, aiokafka and aiohttp (which log record values and credentials) stay at INFO;
    a logger named in debug_loggers logs at DEBUG."""
    script = (
        "import logging; from streamproc import cli; "
        "cli.configure_logging('DEBUG', debug_loggers=['aiokafka.consumer']); "
        "[logging.getLogger(n).debug('debug from %s', n) for n in "
        "('streamproc.x', 'aiokafka', 'aiokafka.producer', 'aiohttp.server', 'aiokafka.consumer')]"
    )
    logged = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stderr
    lines = [line.rsplit(": ", 1)[-1] for line in logged.splitlines()]
    assert lines == ["debug from streamproc.x", "debug from aiokafka.consumer"]


def test_mistyped_variable_is_warned_about() -> None:
    """A STREAMPROC_ variable that sets nothing is named in a warning; the command runs."""
    result = run("config", env={"STREAMPROC_TOPIC_PREFX": "x.", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr
    assert "STREAMPROC_TOPIC_PREFX is not a setting" in result.stderr
    assert "did you mean STREAMPROC_TOPIC_PREFIX?" in result.stderr


def test_role_help_lists_role_options() -> None:
    """`streamproc sim ticketure --help` shows the options the role module adds."""
    result = run("sim", "ticketure", "--help")
    assert result.returncode == 0, result.stderr
    assert "--shape" in result.stdout


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["--config", "map", "deliver"], ("deliver",)),
        (["sim", "--x", "mparticle", "--port", "1"], ("sim", "mparticle")),
        (["topics"], ("topics",)),
        ([], ()),
    ],
)
def test_command_path_skips_options(argv: list[str], path: tuple[str, ...]) -> None:
    """The command is found among options, and --config's value is not taken for it."""
    assert cli.command_path(argv) == path


def test_sigterm_while_starting_ends_cleanly() -> None:
    """SIGTERM before the command's loop handles it (here: while its module loads) exits 0."""
    script = (
        "import os, signal, sys\n"
        "from streamproc import cli\n"
        "load = cli._load\n"
        "def load_then_term(name):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return load(name)\n"
        "cli._load = load_then_term\n"
        "sys.exit(cli.main(['sim', 'ticketure']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "stopped (SIGTERM) while starting" in done.stderr


@pytest.mark.parametrize(
    ("option", "value"), [("--limit", "0"), ("--limit", "x"), ("--timeout", "-1")]
)
def test_dlq_options_must_be_positive(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["dlq", "inspect", option, value])
    assert exited.value.code == 2
    assert option in capsys.readouterr().err
