"""The ``streamproc`` command line.

Every role lives in its own module, which exports ``add_arguments(parser)`` and
``async def command(settings, args) -> int`` (the exit code). The module is imported only
when its command runs, so a role that is not built yet says so and exits 2 instead of
pretending to work.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import IO

import orjson
from aiokafka.errors import KafkaConnectionError

from streamproc import config, kafka, topics
from streamproc.errors import ConfigError, Unavailable
from streamproc.redact import MaskingFormatter

log = logging.getLogger(__name__)

# The cyclic garbage collector's youngest generation is scanned every 700 net allocations
# by default. The hot paths (a Kafka record and its headers, a request, a parsed batch)
# allocate many short-lived objects that reference counting frees anyway; scanning them
# that often cost about a tenth of the CPU of consuming a record (3.7 -> 3.3 µs) and of
# delivering a batch. Cycles are still collected, every 50,000 allocations.
GC_FIRST_THRESHOLD = 50_000

# command path -> (module, help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("poll",): (
        "streamproc.sources.ticketmatic.command",
        "poll Ticketmatic's eventstream into Kafka",
    ),
    ("receive",): ("streamproc.sources.ticketure.command", "receive Ticketure pushes into Kafka"),
    ("map",): ("streamproc.mapper.command", "map and dedupe source items into mParticle batches"),
    ("deliver",): (
        "streamproc.sinks.mparticle.command",
        "deliver batches to mParticle's Events API",
    ),
    ("run",): ("streamproc.runner", "every role in one process"),
    ("sim", "ticketmatic"): (
        "streamproc.sim.ticketmatic_command",
        "a Ticketmatic eventstream simulator",
    ),
    ("sim", "ticketure"): ("streamproc.sim.ticketure", "a Ticketure push simulator"),
    ("sim", "mparticle"): ("streamproc.sim.mparticle", "an mParticle Events API simulator"),
    ("dlq", "inspect"): ("streamproc.dlq", "show dead-lettered records and their reasons"),
    ("dlq", "replay"): ("streamproc.dlq", "send dead-lettered records back to their topic"),
}

GROUP_HELP = {
    "sim": "simulators of the outside services, for trying streamproc without credentials",
    "dlq": "the dead-letter topic",
    "topics": "the Kafka topics streamproc uses",
}


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamproc",
        description="Ticketing data from Ticketmatic and Ticketure into mParticle, via Kafka.",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="TOML settings file (or STREAMPROC_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for path, (_module, help_text) in COMMANDS.items():
        if len(path) == 1:
            p = sub.add_parser(path[0], help=help_text, description=help_text)
        else:
            if path[0] not in groups:
                g = sub.add_parser(path[0], help=GROUP_HELP[path[0]])
                groups[path[0]] = g.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", required=True
                )
            p = groups[path[0]].add_parser(path[1], help=help_text, description=help_text)
        p.set_defaults(path=path)
    t = sub.add_parser("topics", help=GROUP_HELP["topics"])
    tsub = t.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    tsub.add_parser("ensure", help="create or align every topic (safe to run again)").set_defaults(
        path=("topics", "ensure")
    )
    tsub.add_parser("describe", help="show every topic's partitions and policy").set_defaults(
        path=("topics", "describe")
    )
    sub.add_parser("config", help="print the effective settings (secrets hidden)").set_defaults(
        path=("config",)
    )
    return parser


async def _topics(settings: config.Settings, action: str) -> int:
    if action == "ensure":
        for line in await topics.ensure(settings):
            print(line)
    else:
        for row in await topics.describe(settings):
            print(orjson.dumps(row).decode())
    return 0


def command_path(argv: Sequence[str]) -> tuple[str, ...]:
    """The command named in ``argv`` (``("sim", "ticketure")``), found without parsing options.

    A role adds its own options only once its module is loaded, so the path must be known
    before argparse sees ``--help`` or a role option.
    """
    words: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("-"):
            words.append(word)
    if not words:
        return ()
    if words[0] in GROUP_HELP and len(words) > 1:
        return (words[0], words[1])
    return (words[0],)


def _stop_early(_signum: int, _frame: object) -> None:
    print("streamproc: stopped (SIGTERM) while starting", file=sys.stderr, flush=True)
    # SystemExit, not an exception of our own: asyncio swallows (and logs) any other
    # exception raised in a callback, and the process would then keep running.
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    # Until a command's event loop takes SIGTERM over (lifecycle.stop_on_signals), a
    # SIGTERM (Kubernetes, `make run`'s Ctrl-C) ends the start-up cleanly, with exit 0,
    # instead of killing the process mid-import.
    previous = signal.signal(signal.SIGTERM, _stop_early)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    path = command_path(argv)
    module: ModuleType | None = None
    if path in COMMANDS:
        module = _load(COMMANDS[path][0])
        if module is None:
            print(f"streamproc {' '.join(path)}: not implemented yet", file=sys.stderr)
            return 2
        _add_role_arguments(parser, path, module)
    args = parser.parse_args(argv)
    path = args.path
    try:
        settings = config.load_settings(args.config)
    except ConfigError as exc:
        print(f"streamproc: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, debug_loggers=settings.debug_loggers)
    for warning in config.unknown_variables():
        logging.getLogger("streamproc.config").warning("%s", warning)
    try:
        if path == ("config",):
            print(orjson.dumps(config.describe(settings), option=orjson.OPT_INDENT_2).decode())
            return 0
        if path[0] == "topics":
            return asyncio.run(_topics(settings, path[1]))
        assert module is not None  # noqa: S101 -- every other path is in COMMANDS
        tune_gc()
        code: int = asyncio.run(module.command(settings, args))
    except ConfigError as exc:
        print(f"streamproc: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"streamproc: {exc}: giving up", file=sys.stderr)
        return 1
    except KafkaConnectionError:
        # One line naming the cause (authentication, TLS, refused), not aiokafka's traceback.
        why = asyncio.run(kafka.diagnose(settings.kafka))
        print(f"streamproc: Kafka at {settings.kafka.bootstrap_servers}: {why}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


# Libraries whose DEBUG lines hold what must not reach a log: aiokafka writes every record
# value it sends and the SASL PLAIN exchange, aiohttp the requests it parses.
LIBRARY_LOGGERS = ("aiokafka", "aiohttp")


def configure_logging(
    level: str, stream: IO[str] | None = None, debug_loggers: Sequence[str] = ()
) -> None:
    """Log lines to ``stream`` (stderr) at ``level``, credentials masked (:mod:`.redact`).

    The library loggers stay at INFO or above whatever ``level`` says, unless a logger is
    named in ``debug_loggers`` (setting ``debug_loggers``): then it, and its children, log
    at DEBUG, record values included.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    floor = max(logging.getLevelNamesMapping()[level], logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(floor)
    for name in debug_loggers:
        logging.getLogger(name).setLevel(logging.DEBUG)


def tune_gc() -> None:
    """Run the garbage collector as every streamproc process does (see GC_FIRST_THRESHOLD)."""
    gc.freeze()  # what start-up built lives as long as the process: never scan it again
    _, *older = gc.get_threshold()
    gc.set_threshold(GC_FIRST_THRESHOLD, *older)


def _add_role_arguments(
    parser: argparse.ArgumentParser, path: tuple[str, ...], module: ModuleType
) -> None:
    add = getattr(module, "add_arguments", None)
    if add is None:
        return
    node = parser
    for part in path:
        action = next(a for a in node._actions if isinstance(a, argparse._SubParsersAction))
        node = action.choices[part]
    add(node)


if __name__ == "__main__":
    sys.exit(main())
