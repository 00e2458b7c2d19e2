"""Where the project's JSON Schemas (``schemas/`` at the top of the repository) are found.

In a checkout (and an editable install) they are read from ``schemas/``; a built wheel
carries the same files as ``streamproc/_schemas/`` (see pyproject's force-include).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

_HERE = Path(__file__).resolve().parent


def schema_dir() -> Path:
    for candidate in (_HERE.parent / "schemas", _HERE / "_schemas"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the schemas/ folder is missing from this installation")


def schema_path(relative: str) -> Path:
    """``schema_path("mparticle/batch.schema.json")``."""
    return schema_dir() / relative


def load_schema(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(schema_path(relative).read_bytes())
    return data
