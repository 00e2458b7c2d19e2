"""``make fuzz``'s second half: generated source records through a live ``streamproc map``.

Draws ``cases`` records with the strategies of the map stage's property tests
(:mod:`tests.mapping.test_record_properties`: any bytes or none, deep nesting, numbers of
thousands of digits, bytes that are not UTF-8, valid items of both sources mutated, under
arbitrary headers) and first runs each through the pure per-record path
(:func:`~streamproc.mapping.record.plan`) in this process: an exception is an escaped one,
and every batch a plan holds is checked against ``schemas/mparticle/batch.schema.json``.

Then it writes the records to both input topics of a fresh prefix (one partition each, so
the order, and with it what dedupe drops, is known; each record of a mapped item id that
was drawn before is left out, so every mapped item must arrive exactly once), runs
``streamproc map`` as a process of its own until it has counted every record, and checks
what a user would: the process never exited (and exits 0 at SIGTERM), its log holds no
traceback, every record the plan maps is one batch with its item id, every record it
cannot map is one dead letter with the plan's reason code, and nothing else was written.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import msgspec
import orjson
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from prometheus_client.parser import text_string_to_metric_families

from streamproc import kafka, topics
from streamproc.config import KafkaSettings, MappingSettings, Settings, TopicSettings
from streamproc.formats import envelope
from streamproc.mapping.record import Plan, RawHeaders, plan
from streamproc.mapping.router import Mapped, MappingContext, Unmappable, map_record
from streamproc.schemas import load_schema
from tests import localkafka
from tests.bench.__main__ import drop_topics
from tests.mapping.test_properties import json_values
from tests.mapping.test_record_properties import (
    bad_utf8,
    beyond_limits,
    documents,
    headers,
    spliced,
)
from tests.procs import Proc, settings_env
from tests.topics import read_topic

# Each record carries its case number here: the dead letter keeps the original headers.
H_CASE = "fuzz_case"
SOURCES = ("ticketmatic", "ticketure")
PROGRESS_EVERY = 10_000

values = (
    st.none()
    | st.binary(max_size=300)
    | json_values.map(msgspec.json.encode)
    | beyond_limits.flatmap(lambda hostile: spliced(hostile[0]))
    | bad_utf8()
    | documents.map(msgspec.json.encode)
)
records = st.tuples(st.sampled_from(SOURCES), headers, values)


@dataclass
class Case:
    number: int
    source: str  # the input topic's source
    headers: list[tuple[str, bytes | None]]
    value: bytes | None
    plan: Plan


@dataclass
class Report:
    cases: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    escaped: int = 0
    invalid_batches: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def problem(self, kind: str, example: object) -> None:
        self.examples.setdefault(kind, repr(example)[:400])


def fuzz_settings(bootstrap: str) -> Settings:
    return Settings(
        topic_prefix=f"fuzzmap{time.time_ns() % 10**9}.",
        metrics_host="127.0.0.1",
        metrics_port=localkafka.free_port(),
        kafka=KafkaSettings(bootstrap_servers=bootstrap, client_id="streamproc-fuzz"),
        topics=TopicSettings(partitions=1, replication_factor=1),
        mapping=MappingSettings(forward_unknown=True),
    )


def draw_records(count: int, at: int | None) -> list[tuple[str, RawHeaders, bytes | None]]:
    """``count`` generated records: (input topic's source, headers, value)."""
    drawn: list[tuple[str, RawHeaders, bytes | None]] = []

    @hypothesis.settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(record=records)
    def generate(record: tuple[str, RawHeaders, bytes | None]) -> None:
        if len(drawn) < count:
            drawn.append(record)

    (seed(at)(generate) if at is not None else generate)()
    return drawn


def plan_cases(
    drawn: list[tuple[str, RawHeaders, bytes | None]], ctx: MappingContext, report: Report
) -> list[Case]:
    """Each record with its plan, made outside hypothesis (which raises the recursion limit
    while a test runs, and with it how deep the decoder goes); escaped exceptions counted."""
    validator = Draft7Validator(load_schema("mparticle/batch.schema.json"))
    mapper = functools.partial(map_record, ctx=ctx)
    cases: list[Case] = []
    for number, (source, raw_headers, value) in enumerate(drawn):
        try:
            result = plan(source, raw_headers, value, mapper)
        except Exception as exc:  # noqa: BLE001 -- what the fuzz is here to find
            report.escaped += 1
            report.problem(f"escaped {type(exc).__name__}", (source, raw_headers, value))
            continue
        outcome = result.outcome
        report.outcomes[type(outcome).__name__] += 1
        if isinstance(outcome, Mapped) and not validator.is_valid(orjson.loads(outcome.batch)):
            report.invalid_batches += 1
            report.problem("invalid batch", outcome.batch)
        with_case = [*raw_headers, (H_CASE, str(number).encode())]
        cases.append(Case(number, source, with_case, value, result))
        if len(cases) % PROGRESS_EVERY == 0:
            print(f"  {len(cases):,} records planned", file=sys.stderr, flush=True)
    return cases


def first_of_each_item(cases: list[Case]) -> list[Case]:
    """The cases without the mapped ones whose item (dedupe hash) came before."""
    seen: set[int] = set()
    kept = []
    for case in cases:
        if isinstance(case.plan.outcome, Mapped):
            if case.plan.dedupe in seen:
                continue
            seen.add(case.plan.dedupe)
        kept.append(case)
    return kept


async def produce(config: Settings, cases: list[Case]) -> None:
    names = topics.Topics.for_prefix(config.topic_prefix)
    topic = {"ticketmatic": names.ticketmatic, "ticketure": names.ticketure}
    producer = kafka.producer(config.kafka)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic[case.source],
                case.value,
                key=str(case.number).encode(),
                headers=case.headers,
            )
            for case in cases
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def counted(metrics_port: int) -> float:
    """The map process's streamproc_map_items_total, summed; -1 while it cannot be read."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return -1
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "streamproc_map_items"
        for sample in family.samples
        if sample.name == "streamproc_map_items_total"
    )


def wait_counted(proc: Proc, metrics_port: int, total: int, timeout_s: float) -> float:
    """Wait until the map process counted ``total`` items, it exits, or time runs out."""
    deadline = time.monotonic() + timeout_s
    seen = counted(metrics_port)
    while seen < total and proc.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = counted(metrics_port)
    return seen


async def compare(config: Settings, cases: list[Case]) -> dict[str, int]:
    """What the output topics hold against what each written case's plan says."""
    names = topics.Topics.for_prefix(config.topic_prefix)
    batches = await read_topic(config, names.batches, timeout_s=600)
    letters = await read_topic(config, names.dlq, timeout_s=600)
    mapped = [c for c in cases if isinstance(c.plan.outcome, Mapped)]
    unmappable = {
        c.number: c.plan.outcome.reason_code
        for c in cases
        if isinstance(c.plan.outcome, Unmappable)
    }
    parked: dict[int, str] = {}
    for letter in letters:
        number = envelope.header(letter.headers, H_CASE)
        reason = envelope.header(letter.headers, envelope.H_REASON) or ""
        parked[int(number) if number is not None else -1] = reason.split(":", 1)[0]
    batch_ids = collections.Counter(envelope.header(r.headers, envelope.H_ITEM_ID) for r in batches)
    want_ids = collections.Counter(
        envelope.header(c.plan.headers, envelope.H_ITEM_ID) for c in mapped
    )
    for n, code in unmappable.items():
        if n in parked and parked[n] != code:
            print(f"  case {n}: planned {code!r}, parked as {parked[n]!r}", file=sys.stderr)
    return {
        "batches": len(batches),
        "mapped, no batch": sum((want_ids - batch_ids).values()),
        "batches not planned": sum((batch_ids - want_ids).values()),
        "letters": len(letters),
        "unmappable, not parked": len(unmappable.keys() - parked.keys()),
        "parked, not unmappable": len(parked.keys() - unmappable.keys()),
        "parked with another reason": sum(
            1 for n, code in unmappable.items() if n in parked and parked[n] != code
        ),
    }


def run(bootstrap: str, cases: int, at: int | None, log_dir: Path) -> int:
    """The whole mapping fuzz; prints its report, returns 1 if anything was wrong."""
    config = fuzz_settings(bootstrap)
    report = Report()
    started = time.monotonic()
    drawn = draw_records(cases, at)
    report.cases = len(drawn)
    print(f"  {len(drawn):,} records drawn", file=sys.stderr, flush=True)
    written = first_of_each_item(plan_cases(drawn, MappingContext.from_settings(config), report))
    asyncio.run(topics.ensure(config))
    log_path = log_dir / "map.log"
    print(f"map log: {log_path}, topics {config.topic_prefix}*", file=sys.stderr)
    try:
        asyncio.run(produce(config, written))
        proc = Proc(["map"], settings_env(config), log_path)
        try:
            seen = wait_counted(proc, config.metrics_port, len(written), timeout_s=900)
            exited = None if proc.alive() else proc.popen.returncode
            exit_code = proc.terminate()
        finally:
            proc.kill()
        found = asyncio.run(compare(config, written))
    finally:
        asyncio.run(drop_topics(config))
    elapsed = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    tracebacks = log.count("Traceback")
    outcomes = ", ".join(f"{k}: {n:,}" for k, n in sorted(report.outcomes.items()))
    print(f"mapping cases:                {report.cases:,} in {elapsed:,.0f} s ({outcomes})")
    print(f"escaped exceptions (plan):    {report.escaped:,}")
    print(f"batches off the schema:       {report.invalid_batches:,}")
    print(f"written to the input topics:  {len(written):,} (first of each mapped item)")
    print(f"counted by the map stage:     {seen:,.0f}")
    for what, n in found.items():
        print(f"{what + ':':<30}{n:,}")
    print(f"tracebacks in the map log:    {tracebacks:,}")
    print(f"map exited on its own:        {'no' if exited is None else f'yes, {exited}'}")
    print(f"map exit code:                {exit_code} (SIGTERM)")
    for kind, example in sorted(report.examples.items()):
        print(f"problem {kind}: e.g. {example}")
    mismatches = sum(n for what, n in found.items() if what not in ("batches", "letters"))
    failed = (
        report.escaped
        or report.invalid_batches
        or seen != len(written)
        or mismatches
        or tracebacks
        or exited is not None
        or exit_code
    )
    return 1 if failed else 0
