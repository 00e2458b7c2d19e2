"""Settings: one typed object, from an optional TOML file and ``STREAMPROC_*`` variables.

The environment wins over the file. A top-level field ``x`` is set by ``STREAMPROC_X``, a
field ``y`` of section ``s`` by ``STREAMPROC_S_Y``. Scalars are parsed from their text
("9092", "true"); lists and tables (for example ``STREAMPROC_TICKETMATIC_ACCOUNTS``) take
JSON. Invalid configuration raises :class:`ConfigError` naming the setting, its
environment variable and the reason. Secrets are :class:`Secret` values: their repr, str
and JSON form are ``'***'``, so they never reach a log, an error or ``describe``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import orjson

from streamproc.errors import ConfigError
from streamproc.redact import mask_url

ENV_PREFIX = "STREAMPROC_"
RETENTION_4H_S = 4 * 3600
# The largest record the source and batches topics take (Kafka's default), and the largest
# dead letter: a letter is a record plus headers, so the dead-letter topic takes twice that.
MAX_RECORD_BYTES = 1024 * 1024
MAX_LETTER_BYTES = 2 * MAX_RECORD_BYTES
# The largest push body: its dead letter (the body plus headers) must fit in a record, so
# the receiver's one producer sends nothing larger than the source topic takes.
MAX_BODY_BYTES = MAX_RECORD_BYTES - 16 * 1024

# Bounds that msgspec checks as it reads a setting (its error names the setting).
Seconds = Annotated[float, msgspec.Meta(gt=0)]  # a timeout, an interval
Wait = Annotated[float, msgspec.Meta(ge=0)]  # may be 0: no wait
Count = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: any free port


def _check_url(field: str, url: str) -> None:
    """A base URL must be http(s) with a host: anything else fails at every request.

    Nor may it carry credentials (``user:password@``): each API has credential settings
    of their own, sent in the Authorization header, and aiohttp refuses both at once. The
    message masks them (the refused value may be malformed, so it is masked as a whole).
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        host = None
    shown = mask_url(url)
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ValueError(f"{field}: must be an http:// or https:// URL with a host, not {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{field}: must not carry credentials (user:password@), not {shown!r}; "
            "they have settings of their own"
        )


class Secret:
    """A string that never shows itself; ``reveal()`` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class KafkaSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    bootstrap_servers: str = "localhost:9092"
    client_id: str = "streamproc"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    request_timeout_ms: Count = 40_000
    fetch_max_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 100
    # Producers compress each record batch: the JSON streamproc writes shrinks several
    # times over, and a consumer then reads, copies and checksums that much less.
    compression_type: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"
    # A transaction left open by a crashed process blocks read_committed readers until
    # the broker aborts it: keep this short so recovery after a SIGKILL is quick.
    transaction_timeout_ms: Count = 30_000
    # A role started while the broker is away waits this long for it (not ready), then exits.
    startup_timeout_s: Seconds = 600.0

    def __post_init__(self) -> None:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism: required with {self.security_protocol}")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("sasl_username: sasl_username and sasl_password are required")


class TopicSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    partitions: int = 6
    replication_factor: int = 1
    source_retention_ms: int = 7 * 24 * 3600 * 1000
    batches_retention_ms: int = 7 * 24 * 3600 * 1000
    dlq_retention_ms: int = 30 * 24 * 3600 * 1000

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions: must be at least 1")
        if self.replication_factor < 1:
            raise ValueError("replication_factor: must be at least 1")


class TicketmaticAccount(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    access_key: str
    secret_key: Secret
    currency: str = "EUR"
    auth: Literal["hmac", "basic"] = "hmac"
    # Where an account without a cursor starts: None = the oldest item still kept.
    start_ts: str | None = None


class TicketmaticSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    base_url: str = "https://apps.ticketmatic.com"
    accounts: list[TicketmaticAccount] = msgspec.field(default_factory=list)
    poll_interval_s: Seconds = 5.0
    eventtypes: list[str] = msgspec.field(default_factory=list)
    request_timeout_s: Seconds = 30.0
    backoff_max_s: Seconds = 60.0
    auth_retry_s: Seconds = 60.0
    retention_s: Seconds = RETENTION_4H_S
    # A peer's Retry-After is obeyed up to this; a longer one is logged and cut to it.
    retry_after_max_s: Seconds = 300.0
    # An answer larger than this is refused as malformed before it is read whole.
    max_response_bytes: Annotated[int, msgspec.Meta(ge=64 * 1024)] = 16 * 1024 * 1024
    # Item ids and times, and nextid, may run this far ahead of our clock; further is refused.
    max_future_skew_s: Seconds = 300.0
    # /readyz reports an account not ready after this long without a successful request.
    stalled_after_s: Seconds = 300.0

    def __post_init__(self) -> None:
        _check_url("base_url", self.base_url)
        if self.retry_after_max_s >= self.retention_s:
            raise ValueError("retry_after_max_s: must be well under retention_s")


class PushSender(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    auth: Literal["basic", "hmac"] = "basic"
    key: str = ""
    secret: Secret
    # hmac only: the signature covers "<timestamp>.<body>", and the timestamp header (Unix
    # seconds) must be within this many seconds of our clock. None: off (body alone).
    replay_window_s: Seconds | None = None

    def __post_init__(self) -> None:
        # Empty credentials would accept any request that sends empty ones.
        if not self.secret.reveal():
            raise ValueError("secret: must not be empty")
        if self.auth == "basic" and not self.key:
            raise ValueError("key: required with basic auth")
        if self.replay_window_s is not None and self.auth != "hmac":
            raise ValueError("replay_window_s: only hmac senders sign a timestamp")


class ReceiverSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"  # noqa: S104 -- a server in a pod listens on all interfaces
    port: Port = 8080
    senders: list[PushSender] = msgspec.field(default_factory=list)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_BODY_BYTES)] = MAX_BODY_BYTES
    signature_header: str = "X-Signature-SHA256"
    # The signed Unix time of senders with a replay_window_s.
    timestamp_header: str = "X-Signature-Timestamp"
    # A request id the sender keeps across its retries: tells apart id-less events of two
    # pushes of the same content. Empty: not read.
    idempotency_header: str = "Idempotency-Key"
    shutdown_timeout_s: Wait = 10.0
    # From a connection's start, or a request's first byte, to its last header byte.
    header_timeout_s: Seconds = 10.0
    # From the last header byte to the last body byte (408 past it).
    body_timeout_s: Seconds = 30.0
    # An idle connection between requests is closed after this.
    keepalive_timeout_s: Seconds = 75.0
    # Open connections at most; one more is answered 503 with Retry-After and closed.
    max_connections: Count = 1000
    # hmac bodies read before their signature is checked, at most at once (429 past it).
    max_unauthenticated_reads: Count = 32
    # /readyz reports the receiver not ready while open files exceed this share of
    # RLIMIT_NOFILE: new connections would soon fail at accept().
    max_fd_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9


class MappingSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    environment: Literal["production", "development"] = "development"
    ticketure_currency: str = "USD"
    ref_identity: str = "customer_id"
    contact_identity: str = "other_id_2"
    forward_unknown: bool = False
    dedupe_window_s: float = 24 * 3600

    def __post_init__(self) -> None:
        if self.dedupe_window_s < RETENTION_4H_S:
            raise ValueError(
                f"dedupe_window_s: must be at least {RETENTION_4H_S} (Ticketmatic's 4 h retention)"
            )


MPARTICLE_PODS = {
    "US1": "https://s2s.mparticle.com",
    "US2": "https://s2s.us2.mparticle.com",
    "EU1": "https://s2s.eu1.mparticle.com",
    "AU1": "https://s2s.au1.mparticle.com",
}


class MParticleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pod: Literal["US1", "US2", "EU1", "AU1"] = "US1"
    # An explicit base URL (scheme and host, without /v2) wins over the pod.
    base_url: str | None = None
    api_key: str = ""
    api_secret: Secret | None = None
    # The feed's limit (mParticle's is per API key): each deliverer of the group takes the
    # share of the topic's partitions it is assigned.
    rate_limit_batches_per_s: float = 270.0
    max_in_flight: int = 4
    linger_ms: Wait = 20.0
    request_timeout_s: Seconds = 30.0
    backoff_base_s: Seconds = 0.5
    backoff_max_s: Seconds = 60.0
    # While mParticle answers 401/403: time between tries (nothing is dropped meanwhile).
    auth_retry_s: Seconds = 30.0
    # 0: retry 5xx/timeouts without limit; else dead-letter a batch after this many tries.
    max_retries: int = 0
    # A 429's Retry-After is obeyed up to this (every request waits it); longer is logged and cut.
    retry_after_max_s: Seconds = 300.0
    shutdown_timeout_s: Wait = 10.0

    def __post_init__(self) -> None:
        if self.base_url is not None:
            _check_url("base_url", self.base_url)
        if self.rate_limit_batches_per_s <= 0:
            raise ValueError("rate_limit_batches_per_s: must be above 0")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight: must be at least 1")
        if self.max_retries < 0:
            raise ValueError("max_retries: must be 0 (no limit) or more")

    def url(self) -> str:
        """The base URL to post to, from ``base_url`` or the pod."""
        return (self.base_url or MPARTICLE_PODS[self.pod]).rstrip("/")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    topic_prefix: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Library loggers (aiokafka, aiohttp) stay at INFO or above unless named here: at DEBUG
    # they write record values (e-mails, phone numbers) and can write credentials.
    debug_loggers: list[str] = msgspec.field(default_factory=list)
    metrics_host: str = "0.0.0.0"  # noqa: S104 -- scraped from outside the pod
    metrics_port: Port = 9100
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    topics: TopicSettings = msgspec.field(default_factory=TopicSettings)
    ticketmatic: TicketmaticSettings = msgspec.field(default_factory=TicketmaticSettings)
    receiver: ReceiverSettings = msgspec.field(default_factory=ReceiverSettings)
    mapping: MappingSettings = msgspec.field(default_factory=MappingSettings)
    mparticle: MParticleSettings = msgspec.field(default_factory=MParticleSettings)

    def __post_init__(self) -> None:
        if self.topic_prefix and not re.fullmatch(r"[A-Za-z0-9._-]+", self.topic_prefix):
            raise ValueError("topic_prefix: may hold only letters, digits, '.', '_' and '-'")


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str):
            return Secret(obj)
        raise ValueError(f"Expected `str`, got `{type(obj).__name__}`")
    raise NotImplementedError(f"cannot decode {typ}")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return "***"
    raise NotImplementedError(f"cannot encode {type(obj)}")


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable that sets the setting at ``path``."""
    return ENV_PREFIX + "_".join(p.upper() for p in path)


def _setting_fields() -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, type) of every setting: ("log_level",), ("kafka", "bootstrap_servers")..."""
    for field in msgspec.structs.fields(Settings):
        sub = field.type if isinstance(field.type, type) else None
        if sub is not None and issubclass(sub, msgspec.Struct):
            for sf in msgspec.structs.fields(sub):
                yield (field.name, sf.name), sf.type
        else:
            yield (field.name,), field.type


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings named by ``STREAMPROC_*`` variables, as a nested dict."""
    out: dict[str, Any] = {}
    for path, typ in _setting_fields():
        name = env_name(path)
        if name in env:
            *sections, key = path
            target = out
            for section in sections:
                target = target.setdefault(section, {})
            target[key] = _env_value(env[name], typ, name)
    return out


# STREAMPROC_* variables that are not settings but are read elsewhere.
_OTHER_VARIABLES = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "CACHE_DIR"})
# What Kubernetes sets in every pod for a Service in the namespace (a Service named
# "streamproc-receive" gives STREAMPROC_RECEIVE_SERVICE_HOST, STREAMPROC_RECEIVE_PORT...).
_SERVICE_LINK = re.compile(r".+_(SERVICE_HOST|SERVICE_PORT(_.+)?|PORT_\d+_(TCP|UDP|SCTP)(_.+)?)")


def setting_names() -> list[str]:
    """Every ``STREAMPROC_*`` variable that sets a setting."""
    return [env_name(path) for path, _ in _setting_fields()]


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """``STREAMPROC_*`` variables in ``env`` that set nothing, each with the likely meant one.

    Not an error, unlike an unknown key in the file: Kubernetes adds ``STREAMPROC_*``
    variables of its own to pods (service links, left out here when they look like one).
    """
    env = os.environ if env is None else env
    known = setting_names()
    out = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in _OTHER_VARIABLES or name in known:
            continue
        if _SERVICE_LINK.fullmatch(name) or (name.endswith("_PORT") and "://" in value):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{name} is not a setting and is ignored{hint}")
    return out


def _env_value(text: str, typ: Any, name: str) -> Any:
    origin = getattr(typ, "__origin__", None)
    if origin in (list, dict):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(name, f"expected JSON ({exc})") from None
    return text


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _setting_name(message: str) -> tuple[str, str]:
    """Split msgspec's "reason - at `$.a.b`" into ("a.b (STREAMPROC_A_B)", reason).

    A ``__post_init__`` check names its field first ("field: reason"), which is appended.
    """
    match = re.search(r" - at `\$\.?([^`]*)`$", message)
    reason = message[: match.start()] if match else message
    path = tuple(p for p in re.split(r"[.\[\]]+", match.group(1)) if p) if match else ()
    field = re.match(r"(\w+): ", reason)
    if field:
        path, reason = (*path, field.group(1)), reason[field.end() :]
    if not path:
        return "settings", reason
    dotted = ".".join(path)
    named = [p for p in path if not p.isdigit()][:2]
    return f"{dotted} ({env_name(tuple(named))})", reason


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the TOML file (``config_path`` or ``STREAMPROC_CONFIG``) and ``env``.

    Raises :class:`ConfigError` naming the first invalid setting.
    """
    env = os.environ if env is None else env
    path = config_path or env.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", f"file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError("config", f"{path} is not UTF-8 text") from None
        except OSError as exc:  # a directory, no permission...
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    data = _merge(data, _env_overrides(env))
    try:
        return msgspec.convert(data, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        setting, reason = _setting_name(str(exc))
        raise ConfigError(setting, reason) from None


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret shown as ``'***'``."""
    result: dict[str, Any] = msgspec.to_builtins(settings, enc_hook=_enc_hook)
    return result


def to_env(settings: Settings) -> dict[str, str]:
    """``STREAMPROC_*`` variables that reproduce ``settings``, secrets revealed.

    For handing settings to a child process (tests, benchmarks, ``make run``); never log
    the result.
    """
    env: dict[str, str] = {}
    for field in msgspec.structs.fields(Settings):
        value = getattr(settings, field.name)
        if isinstance(value, msgspec.Struct):
            for sub in msgspec.structs.fields(value):
                raw = getattr(value, sub.name)
                if raw is not None:
                    env[env_name((field.name, sub.name))] = _env_text(raw)
        elif value is not None:
            env[env_name((field.name,))] = _env_text(value)
    return env


def _revealed(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, list):
        return [_revealed(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return {f.name: _revealed(getattr(value, f.name)) for f in msgspec.structs.fields(value)}
    return value


def _env_text(value: Any) -> str:
    plain = _revealed(value)
    if isinstance(plain, str):
        return plain
    if isinstance(plain, bool):
        return "true" if plain else "false"
    return orjson.dumps(plain).decode()
