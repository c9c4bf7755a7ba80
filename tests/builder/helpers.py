"""Small builders of request envelopes for tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

# Example requests: the foundation schema (two versions) and a minimal seed.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    """Return a fixture envelope by file name."""
    return json.loads((FIXTURES / name).read_text())


def envelope(tables: list[dict[str, Any]], version: str = "001", **payload: Any) -> dict[str, Any]:
    """Return a request envelope with `tables` as its payload."""
    return {
        "meta": {"tenant_id": "t_001"},
        "payload": {
            "schema_version": version,
            "description": f"test schema v{version}",
            "tables": copy.deepcopy(tables),
            **payload,
        },
        "context": {"actor_id": "tester"},
    }


PATIENTS = {
    "name": "patients",
    "columns": [
        {"name": "first_name", "type": "TEXT", "not_null": True},
        {"name": "last_name", "type": "TEXT", "not_null": True},
        {"name": "phone", "type": "TEXT"},
        {"name": "mrn", "type": "TEXT"},
    ],
    "indexes": [{"name": "idx_patients_phone", "columns": ["phone"]}],
}
