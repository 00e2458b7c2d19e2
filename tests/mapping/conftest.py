"""Validators for produced batches: mParticle's published schema and schemas/mparticle/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft7Validator

from streamproc.schemas import load_schema
from tests.mapping.helpers import CheckBatch


@pytest.fixture(scope="session")
def mparticle_validator(shared_reference: Path) -> Draft7Validator:
    """mParticle's batch schema, draft-07 with format checking on (read from ../shared)."""
    schema = json.loads(
        (shared_reference / "mparticle/mparticle-eventsapi-schema.json").read_text()
    )
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def own_validator() -> Draft7Validator:
    """schemas/mparticle/batch.schema.json, the subset streamproc emits."""
    schema = load_schema("mparticle/batch.schema.json")
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def check_batch(mparticle_validator: Draft7Validator, own_validator: Draft7Validator) -> CheckBatch:
    """Validate encoded batch bytes against both schemas; return the decoded document."""

    def check(raw: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(raw)
        own_validator.validate(doc)
        mparticle_validator.validate(doc)
        return doc

    return check
