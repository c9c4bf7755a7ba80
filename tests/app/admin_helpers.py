"""Accounts in the operators' roles, and the POST data of the draft editor's nested forms."""

from __future__ import annotations

import copy
import io
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management import call_command

from revos_schema.forms import split_type

DRAFTS_URL = "/admin/revos_schema/schemadraft/"
SUBMISSIONS_URL = "/admin/revos_schema/schemasubmission/"
PASSWORD = "pw-for-admin-tests"


def staff(name: str, *groups: str, superuser: bool = False) -> User:
    """A staff account (the admin's login needs is_staff) in the groups `setup_roles` makes."""
    if groups and not Group.objects.filter(name=groups[0]).exists():
        call_command("setup_roles", stdout=io.StringIO())
    user = User.objects.create_user(name, password=PASSWORD, is_staff=True, is_superuser=superuser)
    for group in groups:
        user.groups.add(Group.objects.get(name=group))
    return user


def management(prefix: str, total: int, initial: int = 0) -> dict[str, Any]:
    return {
        f"{prefix}-TOTAL_FORMS": total,
        f"{prefix}-INITIAL_FORMS": initial,
        f"{prefix}-MIN_NUM_FORMS": 0,
        f"{prefix}-MAX_NUM_FORMS": 1000,
    }


def draft_post(
    version: str, description: str, tables: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The POST of the draft's add page for new `tables` in the envelope's JSON shape.

    What the browser sends (nested_admin's script fills `position`): the draft's fields, then per
    table its fields and the management forms of its columns and indexes.
    """
    data: dict[str, Any] = {
        "version": version,
        "description": description,
        "validation_profile": "",
        "envelope_extra": "{}",
        **management("tables", len(tables)),
        **extra,
    }
    for i, table in enumerate(tables):
        prefix = f"tables-{i}"
        data[f"{prefix}-name"] = table["name"]
        data[f"{prefix}-position"] = i
        if table.get("tenant_scoped", True):
            data[f"{prefix}-tenant_scoped"] = "on"
        columns = table.get("columns", [])
        data.update(management(f"{prefix}-columns", len(columns)))
        for j, column in enumerate(columns):
            field = f"{prefix}-columns-{j}"
            base, rest = split_type(column["type"])
            data[f"{field}-name"] = column["name"]
            data[f"{field}-type_0"] = base
            data[f"{field}-type_1"] = rest
            data[f"{field}-position"] = j
            data[f"{field}-default"] = column.get("default", "")
            for flag in ("not_null", "unique"):
                if column.get(flag):
                    data[f"{field}-{flag}"] = "on"
            reference = column.get("references") or {}
            data[f"{field}-references_table"] = reference.get("table", "")
            data[f"{field}-references_column"] = reference.get("column", "")
            data[f"{field}-on_delete"] = reference.get("on_delete", "")
        indexes = table.get("indexes", [])
        data.update(management(f"{prefix}-indexes", len(indexes)))
        for k, index in enumerate(indexes):
            field = f"{prefix}-indexes-{k}"
            data[f"{field}-name"] = index.get("name", "")
            data[f"{field}-columns"] = ", ".join(index["columns"])
            data[f"{field}-position"] = k
            if index.get("unique"):
                data[f"{field}-unique"] = "on"
    return data


PATIENTS_AND_VISITS = [
    {
        "name": "patients",
        "columns": [
            {"name": "full_name", "type": "TEXT", "not_null": True},
            {"name": "mrn", "type": "VARCHAR(32)", "unique": True},
        ],
    },
    {
        "name": "visits",
        "columns": [
            {
                "name": "patient_id",
                "type": "UUID",
                "not_null": True,
                "references": {"table": "patients", "on_delete": "cascade"},
            },
            {"name": "starts_at", "type": "TIMESTAMPTZ"},
        ],
        "indexes": [{"columns": ["patient_id", "starts_at"]}],
    },
]


def two_table_envelope(version: str = "042") -> dict[str, Any]:
    return {
        "meta": {"tenant_id": "t_001"},
        "payload": {
            "schema_version": version,
            "description": "Patients and visits",
            "tables": copy.deepcopy(PATIENTS_AND_VISITS),
        },
    }
