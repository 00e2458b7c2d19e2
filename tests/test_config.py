"""Settings from TOML and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.config import Secret, describe, load_settings, to_env, unknown_variables
from streamproc.errors import ConfigError


def test_defaults_without_file_or_environment() -> None:
    """With nothing configured, Kafka is localhost:9092 and there is no prefix."""
    settings = load_settings(env={})
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.topic_prefix == ""
    assert settings.mapping.dedupe_window_s == 24 * 3600


def test_environment_wins_over_file(tmp_path: Path) -> None:
    """A STREAMPROC_ variable overrides the same setting from the TOML file."""
    path = tmp_path / "s.toml"
    path.write_text(
        'topic_prefix = "file."\n[kafka]\nbootstrap_servers = "file:1"\nclient_id = "f"\n'
    )
    settings = load_settings(path, env={"STREAMPROC_KAFKA_BOOTSTRAP_SERVERS": "env:2"})
    assert settings.kafka.bootstrap_servers == "env:2"
    assert settings.kafka.client_id == "f"
    assert settings.topic_prefix == "file."


def test_config_path_from_environment(tmp_path: Path) -> None:
    """STREAMPROC_CONFIG names the TOML file when --config is not given."""
    path = tmp_path / "s.toml"
    path.write_text('topic_prefix = "p."\n')
    assert load_settings(env={"STREAMPROC_CONFIG": str(path)}).topic_prefix == "p."


def test_scalars_and_lists_from_environment() -> None:
    """Numbers and booleans parse from text; lists of tables take JSON."""
    settings = load_settings(
        env={
            "STREAMPROC_METRICS_PORT": "9200",
            "STREAMPROC_MAPPING_FORWARD_UNKNOWN": "true",
            "STREAMPROC_TICKETMATIC_ACCOUNTS": (
                '[{"name": "acme", "access_key": "AK", "secret_key": "SK", "currency": "USD"}]'
            ),
        }
    )
    assert settings.metrics_port == 9200
    assert settings.mapping.forward_unknown is True
    account = settings.ticketmatic.accounts[0]
    assert (account.name, account.currency, account.secret_key.reveal()) == ("acme", "USD", "SK")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STREAMPROC_METRICS_PORT": "ninety"}, "STREAMPROC_METRICS_PORT"),
        ({"STREAMPROC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "STREAMPROC_KAFKA_SECURITY_PROTOCOL"),
        ({"STREAMPROC_MAPPING_DEDUPE_WINDOW_S": "3600"}, "STREAMPROC_MAPPING_DEDUPE_WINDOW_S"),
        ({"STREAMPROC_TOPIC_PREFIX": "bad prefix!"}, "STREAMPROC_TOPIC_PREFIX"),
        ({"STREAMPROC_TICKETMATIC_ACCOUNTS": "[{"}, "STREAMPROC_TICKETMATIC_ACCOUNTS"),
        ({"STREAMPROC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "STREAMPROC_KAFKA"),
        (
            {"STREAMPROC_RECEIVER_SENDERS": '[{"name": "t", "key": "k", "secret": ""}]'},
            "STREAMPROC_RECEIVER_SENDERS",
        ),
        (
            {"STREAMPROC_RECEIVER_SENDERS": '[{"name": "t", "secret": "s"}]'},
            "STREAMPROC_RECEIVER_SENDERS",
        ),
        # Bounds: a timeout or interval of 0 or less, a size below 1, a port out of range.
        ({"STREAMPROC_MPARTICLE_REQUEST_TIMEOUT_S": "0"}, "TIMEOUT_S): Expected `float` > 0"),
        ({"STREAMPROC_TICKETMATIC_POLL_INTERVAL_S": "-5"}, "STREAMPROC_TICKETMATIC_POLL_"),
        ({"STREAMPROC_MPARTICLE_AUTH_RETRY_S": "0"}, "STREAMPROC_MPARTICLE_AUTH_RETRY_S"),
        ({"STREAMPROC_RECEIVER_MAX_BODY_BYTES": "0"}, "STREAMPROC_RECEIVER_MAX_BODY_BYTES"),
        ({"STREAMPROC_RECEIVER_MAX_BODY_BYTES": "1048576"}, "Expected `int` <= 1032192"),
        ({"STREAMPROC_RECEIVER_SHUTDOWN_TIMEOUT_S": "-1"}, "STREAMPROC_RECEIVER_SHUTDOWN"),
        ({"STREAMPROC_MPARTICLE_LINGER_MS": "-1"}, "STREAMPROC_MPARTICLE_LINGER_MS"),
        ({"STREAMPROC_KAFKA_REQUEST_TIMEOUT_MS": "0"}, "STREAMPROC_KAFKA_REQUEST_TIMEOUT_MS"),
        ({"STREAMPROC_RECEIVER_PORT": "65536"}, "STREAMPROC_RECEIVER_PORT"),
        # A Retry-After obeyed for as long as the retention would lose everything behind it.
        ({"STREAMPROC_TICKETMATIC_RETRY_AFTER_MAX_S": "14400"}, "must be well under retention"),
        ({"STREAMPROC_TICKETMATIC_MAX_RESPONSE_BYTES": "1000"}, "Expected `int` >= 65536"),
        ({"STREAMPROC_TICKETMATIC_MAX_FUTURE_SKEW_S": "0"}, "STREAMPROC_TICKETMATIC_MAX_FUTURE"),
        ({"STREAMPROC_TICKETMATIC_STALLED_AFTER_S": "-1"}, "STREAMPROC_TICKETMATIC_STALLED"),
        # A base URL without a scheme would fail every request as a retried transport error.
        ({"STREAMPROC_MPARTICLE_BASE_URL": "s2s.mparticle.com"}, "STREAMPROC_MPARTICLE_BASE_URL"),
        ({"STREAMPROC_MPARTICLE_BASE_URL": "https://"}, "http:// or https:// URL with a host"),
        ({"STREAMPROC_TICKETMATIC_BASE_URL": "ftp://x"}, "STREAMPROC_TICKETMATIC_BASE_URL"),
        ({"STREAMPROC_MPARTICLE_BASE_URL": "http://:8080"}, "STREAMPROC_MPARTICLE_BASE_URL"),
        ({"STREAMPROC_MPARTICLE_BASE_URL": "http://h:port"}, "STREAMPROC_MPARTICLE_BASE_URL"),
        ({"STREAMPROC_MPARTICLE_RETRY_AFTER_MAX_S": "0"}, "STREAMPROC_MPARTICLE_RETRY_AFTER"),
    ],
)
def test_invalid_setting_is_named(env: dict[str, str], named: str) -> None:
    """An invalid value fails at load with its environment variable in the message."""
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("variable", "url", "shown"),
    [
        ("STREAMPROC_MPARTICLE_BASE_URL", "https://key:s3cr3t@s2s.mparticle.com/", "https://***@"),
        ("STREAMPROC_TICKETMATIC_BASE_URL", "https://me@apps.ticketmatic.com", "https://***@"),
        # Malformed as well: the whole of what may be credentials is masked.
        ("STREAMPROC_MPARTICLE_BASE_URL", "ftp://key:s3cr3t@host", "ftp://***@host"),
        ("STREAMPROC_MPARTICLE_BASE_URL", "https://key:s3/cr?3t@host:x", "https://***@host:x"),
        ("STREAMPROC_TICKETMATIC_BASE_URL", "key:s3cr3t@host", "***@host"),
    ],
)
def test_credentials_in_a_url_are_refused_and_masked(variable: str, url: str, shown: str) -> None:
    """A base URL with user:password@ is a ConfigError that names it without the secret."""
    with pytest.raises(ConfigError) as info:
        load_settings(env={variable: url})
    message = str(info.value)
    assert variable in message
    assert shown in message
    for secret in ("s3cr3t", "s3/cr?3t", "key:", "me@"):
        assert secret not in message


def test_bounds_allow_what_is_meant() -> None:
    """0 is a valid linger, shutdown bound and port (any free one); URLs may have a path."""
    settings = load_settings(
        env={
            "STREAMPROC_MPARTICLE_LINGER_MS": "0",
            "STREAMPROC_RECEIVER_SHUTDOWN_TIMEOUT_S": "0",
            "STREAMPROC_METRICS_PORT": "0",
            "STREAMPROC_MPARTICLE_BASE_URL": "http://127.0.0.1:8081/",
            "STREAMPROC_TICKETMATIC_BASE_URL": "HTTPS://proxy.example.com/ticketmatic",
        }
    )
    assert settings.mparticle.url() == "http://127.0.0.1:8081"
    assert settings.metrics_port == 0


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    """A misspelt key in the TOML file is an error naming it, not silently ignored."""
    path = tmp_path / "s.toml"
    path.write_text("[kafka]\nbootstrap_server = 'x'\n")
    with pytest.raises(ConfigError, match="bootstrap_server"):
        load_settings(path, env={})


def test_secrets_never_shown() -> None:
    """Passwords and keys are hidden in repr, str and the described settings."""
    settings = load_settings(
        env={
            "STREAMPROC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMPROC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMPROC_KAFKA_SASL_USERNAME": "u",
            "STREAMPROC_KAFKA_SASL_PASSWORD": "hunter2",
            "STREAMPROC_MPARTICLE_API_SECRET": "mp-secret-value",
        }
    )
    shown = repr(settings) + str(settings) + str(describe(settings))
    assert "hunter2" not in shown
    assert "mp-secret-value" not in shown
    assert isinstance(settings.kafka.sasl_password, Secret)
    assert settings.kafka.sasl_password.reveal() == "hunter2"
    assert describe(settings)["kafka"]["sasl_password"] == "***"


def test_to_env_round_trips_every_setting() -> None:
    """Settings written as STREAMPROC_* variables load back equal, secrets included."""
    settings = load_settings(
        env={
            "STREAMPROC_TOPIC_PREFIX": "p.",
            "STREAMPROC_KAFKA_SSL_CHECK_HOSTNAME": "false",
            "STREAMPROC_MPARTICLE_API_SECRET": "mp",
            "STREAMPROC_RECEIVER_SENDERS": '[{"name": "t", "key": "k", "secret": "s"}]',
            "STREAMPROC_TICKETMATIC_EVENTTYPES": '["webshop:pageview"]',
        }
    )
    assert load_settings(env=to_env(settings)) == settings


def test_unreadable_config_files_are_config_errors(tmp_path: Path) -> None:
    """Missing, a directory, not UTF-8, not TOML: each a ConfigError naming the file."""
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'topic_prefix = "caf\xe9"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("topic_prefix = \n", encoding="utf-8")
    for path in (tmp_path / "missing.toml", tmp_path, latin, broken):
        with pytest.raises(ConfigError) as info:
            load_settings(str(path), env={})
        assert info.value.setting == "config"
        assert str(path) in info.value.reason


def test_unknown_variables_are_named_with_the_setting_meant() -> None:
    """A mistyped STREAMPROC_ variable is reported; Kubernetes' service links are not."""
    env = {
        "STREAMPROC_MPARTICLE_API_KEYY": "k",
        "STREAMPROC_NO_SUCH_THING": "1",
        "STREAMPROC_MPARTICLE_API_KEY": "k",  # a setting
        "STREAMPROC_CONFIG": "/etc/streamproc.toml",  # read, not a setting
        "STREAMPROC_CACHE_DIR": "/var/cache/streamproc",
        # What a Service named streamproc-receive puts in every pod of its namespace.
        "STREAMPROC_RECEIVE_SERVICE_HOST": "10.0.0.7",
        "STREAMPROC_RECEIVE_SERVICE_PORT_HTTP": "8080",
        "STREAMPROC_RECEIVE_PORT": "tcp://10.0.0.7:8080",
        "STREAMPROC_RECEIVE_PORT_8080_TCP_ADDR": "10.0.0.7",
        "PATH": "/usr/bin",
    }
    assert unknown_variables(env) == [
        "STREAMPROC_MPARTICLE_API_KEYY is not a setting and is ignored "
        "(did you mean STREAMPROC_MPARTICLE_API_KEY?)",
        "STREAMPROC_NO_SUCH_THING is not a setting and is ignored",
    ]
    del env["STREAMPROC_CONFIG"]
    assert load_settings(env=env).mparticle.api_key == "k"  # the others change nothing
