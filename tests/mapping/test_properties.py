"""Property tests: whatever a source sends maps to a valid batch or to a reason, never an
exception.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.formats.mparticle import MAX_BATCH_BYTES
from streamproc.formats.ticketmatic import KNOWN_TYPES
from streamproc.formats.ticketure import (
    GATEWAY_ACTIONS,
    TICKET_ACTIONS,
    GatewayAttributes,
    TicketAttributes,
)
from streamproc.mapping.router import (
    MapOutcome,
    Mapped,
    MappingContext,
    Unknown,
    Unmappable,
    map_record,
)
from tests.mapping.helpers import CheckBatch

TRUNCATION_KINDS = {
    "name",
    "attribute_name",
    "attribute_value",
    "attributes",
    "invalid_value",
    "products",
    "batch_size",
}
REASON_CODES = {"undecodable", "missing_field", "bad_field", "too_large"}
LABEL = re.compile(r"^[a-z0-9:_]{1,64}$")
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ids = st.none() | st.text(max_size=12) | st.integers(-(2**70), 2**70)
amounts = (
    st.none()
    | st.sampled_from(["20", "12.50", "-40.00", "", " 7 ", "1e400", "NaN", "-Infinity", "abc"])
    | st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
)
names = st.none() | st.text(max_size=30)
extra = {"extra": json_values}

tickets = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "price": amounts,
        "servicecharge": amounts,
        "tickettypepriceid": ids,
        "tickettypeid": ids,
        "tickettypename": names,
        "pricetypeid": ids,
        "pricetypename": names,
        "eventid": ids,
        "eventname": names,
    },
)
products = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "productid": ids,
        "price": amounts,
        "producttype": ids,
        "productname": names,
    },
)
orders = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "saleschannelid": ids,
        "customerid": ids,
        "deliveryscenarioid": ids,
        "paymentscenarioid": ids,
        "totalamount": amounts,
        "tickets": st.lists(tickets, max_size=4),
        "products": st.lists(products, max_size=3),
    },
)
datas = st.fixed_dictionaries(
    {},
    optional={
        "ref": st.none() | st.text(max_size=20) | st.just("user12345"),
        "tickets": st.lists(tickets, max_size=4),
        "products": st.lists(products, max_size=3),
        "order": st.none() | orders,
        "page": names,
        "params": st.dictionaries(
            st.text(max_size=10),
            st.none()
            | st.text(max_size=20)
            | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.booleans(),
            max_size=5,
        ),
        "orderid": ids,
        "customerid": ids,
        **extra,
    },
)
item_types = (
    st.sampled_from([f"webshop:{t}" for t in KNOWN_TYPES])
    | st.sampled_from(KNOWN_TYPES).map(lambda t: f"WebShop_{t.upper()}")
    | st.text(max_size=20)
    | st.text(max_size=20).map(lambda t: f"webshop:{t}")
)
times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2024-05-01t12:30:15z"]
item_ts = (
    st.sampled_from(EDGE_TIMES)
    | times.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S"))
    | times.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S+0000"))
    | st.text(max_size=25)
)
item_ids = st.tuples(st.integers(0, 10**13), st.integers(0, 99)).map(
    lambda t: f"{t[0]}-{t[1]}"
) | st.text(max_size=15)
noisy_items = st.fixed_dictionaries(
    {"id": item_ids, "ts": item_ts, "type": item_types},
    optional={"data": datas, **extra},
)

good_times = st.datetimes(min_value=datetime(1970, 1, 2)).map(lambda d: d.isoformat())

# Well-formed items (every field a known type maps from is usable), so that the
# properties also cover the mapped paths, not only the refusals.
digits = st.integers(1, 10**6).map(str)
good_amounts = st.decimals(-(10**6), 10**6, places=2, allow_nan=False).map(str)
good_tickets = st.fixed_dictionaries(
    {
        "id": digits,
        "price": good_amounts,
        "servicecharge": good_amounts,
        "tickettypepriceid": digits,
        "tickettypeid": digits,
        "tickettypename": st.text(max_size=20),
        "pricetypename": st.text(max_size=20),
        "eventid": digits,
        "eventname": st.text(max_size=40),
    }
)
good_products = st.fixed_dictionaries(
    {"id": digits, "productid": digits, "price": good_amounts, "productname": st.text(max_size=20)}
)
good_orders = st.fixed_dictionaries(
    {
        "id": digits,
        "customerid": st.none() | digits,
        "deliveryscenarioid": st.none() | digits,
        "paymentscenarioid": st.none() | digits,
        "totalamount": good_amounts,
        "tickets": st.lists(good_tickets, max_size=4),
        "products": st.lists(good_products, max_size=3),
    }
)
good_datas = st.fixed_dictionaries(
    {
        "ref": st.text(min_size=1, max_size=30),
        "tickets": st.lists(good_tickets, min_size=1, max_size=3),
        "products": st.lists(good_products, min_size=1, max_size=3),
        "order": good_orders,
        "page": st.text(min_size=1, max_size=30),
        "params": st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=20)),
    }
)
good_items = st.fixed_dictionaries(
    {
        "id": st.tuples(st.integers(0, 10**13), st.integers(0, 99)).map(lambda t: f"{t[0]}-{t[1]}"),
        "ts": good_times,
        "type": st.sampled_from([f"webshop:{t}" for t in KNOWN_TYPES]),
        "data": good_datas,
    }
)
tm_items = good_items | noisy_items


def attributes(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    scalars = amounts | st.text(max_size=20)
    return st.fixed_dictionaries({}, optional=dict.fromkeys(names, scalars)) | st.dictionaries(
        st.text(max_size=10), json_values, max_size=3
    )


audit_times = (
    st.sampled_from(EDGE_TIMES)
    | times.map(lambda d: d.replace(tzinfo=UTC).isoformat())
    | times.map(lambda d: str(int(d.replace(tzinfo=UTC).timestamp())))
    | st.text(max_size=20)
    | st.just("")
)
good_audit_records = st.fixed_dictionaries(
    {
        "type": st.just("ticket_audit"),
        "action": st.sampled_from(TICKET_ACTIONS),
        "occurred_at": good_times,
        "email": st.text(max_size=20),
        "attributes": st.fixed_dictionaries(
            {n: good_amounts | st.text(max_size=20) for n in TicketAttributes.__struct_fields__}
        ),
    }
) | st.fixed_dictionaries(
    {
        "type": st.just("gateway_audit"),
        "action": st.sampled_from(GATEWAY_ACTIONS),
        "occurred_at": good_times,
        "mobile_number": st.text(max_size=20),
        "attributes": st.fixed_dictionaries({"cart_id": digits, "total_amount": good_amounts}),
    }
)
noisy_audit_records = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["ticket_audit", "gateway_audit"]) | st.text(max_size=12),
        "action": st.sampled_from([*TICKET_ACTIONS, *GATEWAY_ACTIONS]) | st.text(max_size=12),
        "occurred_at": audit_times,
    },
    optional={
        "event_id": st.none() | st.text(max_size=10),
        "email": st.none() | st.text(max_size=20),
        "mobile_number": st.none() | st.text(max_size=12),
        "attributes": attributes(
            TicketAttributes.__struct_fields__ + GatewayAttributes.__struct_fields__
        ),
    },
)
audit_records = good_audit_records | noisy_audit_records
contexts = st.builds(
    MappingContext,
    environment=st.sampled_from(["development", "production"]),
    forward_unknown=st.booleans(),
    currencies=st.just({"acme": "EUR", "dollars": "USD"}),
)
accounts = st.none() | st.sampled_from(["acme", "dollars", "gone"])


def check_outcome(outcome: MapOutcome, ctx: MappingContext, check_batch: CheckBatch) -> None:
    """What every outcome must satisfy, whatever the input."""
    assert LABEL.match(outcome.item_type), outcome
    if isinstance(outcome, Mapped):
        assert len(outcome.batch) <= MAX_BATCH_BYTES
        check_batch(outcome.batch)
        assert outcome.key
        assert outcome.item_time_ms >= 0
        assert set(outcome.truncations) <= TRUNCATION_KINDS
        assert all(n > 0 for n in outcome.truncations.values())
        assert not outcome.forwarded or ctx.forward_unknown
    elif isinstance(outcome, Unknown):
        assert not ctx.forward_unknown
    else:
        assert isinstance(outcome, Unmappable)
        assert outcome.reason_code in REASON_CODES
        assert outcome.reason


def tm(item: dict[str, Any], account: str | None, ctx: MappingContext) -> MapOutcome:
    return map_record("ticketmatic", msgspec.json.encode(item), str(item["id"]), account, ctx)


def tu(record: dict[str, Any], ctx: MappingContext) -> MapOutcome:
    return map_record("ticketure", msgspec.json.encode(record), "push-1", None, ctx)


@PROPERTY
@given(item=tm_items, account=accounts, ctx=contexts)
def test_any_ticketmatic_item_maps_or_gives_a_reason(
    item: dict[str, Any], account: str | None, ctx: MappingContext, check_batch: CheckBatch
) -> None:
    """Any Ticketmatic item: a valid batch, Unknown, or Unmappable with a reason."""
    check_outcome(tm(item, account, ctx), ctx, check_batch)


@PROPERTY
@given(record=audit_records, ctx=contexts)
def test_any_audit_record_maps_or_gives_a_reason(
    record: dict[str, Any], ctx: MappingContext, check_batch: CheckBatch
) -> None:
    """Any Ticketure record: a valid batch, Unknown, or Unmappable with a reason."""
    check_outcome(tu(record, ctx), ctx, check_batch)


@PROPERTY
@given(
    source=st.sampled_from(["ticketmatic", "ticketure"]),
    raw=st.binary(max_size=200) | json_values.map(msgspec.json.encode),
    ctx=contexts,
)
def test_any_bytes_give_an_outcome(
    source: str, raw: bytes, ctx: MappingContext, check_batch: CheckBatch
) -> None:
    """Arbitrary bytes never raise."""
    check_outcome(map_record(source, raw, "1-0", "acme", ctx), ctx, check_batch)


COVERAGE = settings(max_examples=1500, database=None, deadline=None, derandomize=True)
CTX = MappingContext()


def test_generators_reach_every_outcome() -> None:
    """The generators above reach every outcome and every known type mapped, so the
    properties cover the mapping itself and not only the refusals.
    """
    seen: set[str] = set()

    @COVERAGE
    @given(item=tm_items, record=audit_records)
    def sample(item: dict[str, Any], record: dict[str, Any]) -> None:
        for outcome in (tm(item, "acme", CTX), tu(record, CTX)):
            seen.add(type(outcome).__name__)
            if isinstance(outcome, Mapped):
                seen.add(outcome.item_type)

    sample()
    assert {"Mapped", "Unknown", "Unmappable"} <= seen
    assert {f"webshop:{t}" for t in KNOWN_TYPES} <= seen
    assert {f"ticket_audit:{a}" for a in TICKET_ACTIONS} <= seen
    assert {f"gateway_audit:{a}" for a in GATEWAY_ACTIONS} <= seen
