"""JSON Schema validation for the mParticle simulator: one validator per batch schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft7Validator, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from streamproc.errors import ConfigError
from streamproc.schemas import load_schema

DEFAULT_SCHEMA = "mparticle/batch.schema.json"


def make_validator(schema: dict[str, Any]) -> Validator:
    """A validator for one batch, with format checking, of the schema's own draft."""
    if schema.get("type") == "array":
        raise ConfigError("schema", "give the batch schema, not the bulk (array) schema")
    cls = validator_for(schema, default=Draft7Validator)
    cls.check_schema(schema)
    validator: Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


def describe_error(error: ValidationError) -> str:
    """The most specific reason: for a ``oneOf``, the branch that got furthest."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path.lstrip('.') or '(batch)'}: {error.message[:300]}"


def batch_error(index: int, code: str, message: str) -> dict[str, Any]:
    return {"batch": index, "code": code, "message": f"batch {index}: {message}"}


def load_batch_schema(path: str | None) -> dict[str, Any]:
    """The schema file given, else the project's ``schemas/mparticle/batch.schema.json``."""
    try:
        if path:
            data: dict[str, Any] = orjson.loads(Path(path).read_bytes())
            return data
        return load_schema(DEFAULT_SCHEMA)
    except FileNotFoundError:
        raise ConfigError(
            "--schema", f"{path or DEFAULT_SCHEMA} does not exist (or use --no-validate)"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError("--schema", f"{path} is not JSON: {exc}") from None
