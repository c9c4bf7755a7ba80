"""Validation and normalization of schema payloads (pure: no database)."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

import pglast
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from builder.errors import SchemaValidationError, ValidationIssue
from builder.schema import names
from builder.schema.normalize import canonical_json, normalize_schema, schema_hash
from builder.schema.spec import Column, ForeignKey, Index, Schema, Table
from tests.builder.helpers import FIXTURES


def fixture_payload(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / name).read_text())["payload"]
    return payload


def payload(*tables: Any, **extra: Any) -> dict[str, Any]:
    return {"schema_version": "001", "description": "test", "tables": list(tables), **extra}


def table(name: str = "things", *columns: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "columns": list(columns), **extra}


def issues_of(raw: object) -> list[tuple[str, str]]:
    """Return the (path, code) pairs of every issue of `raw` (which must be invalid)."""
    with pytest.raises(SchemaValidationError) as excinfo:
        normalize_schema(raw)
    issues = excinfo.value.issues
    assert issues
    assert all(isinstance(i, ValidationIssue) and i.message for i in issues)
    return [(i.path, i.code) for i in issues]


def col(
    name: str,
    type_: str,
    *,
    not_null: bool = False,
    default: str | None = None,
    unique: bool = False,
    primary_key: bool = False,
    references: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "type": type_,
        "not_null": not_null,
        "default": default,
        "unique": unique,
        "primary_key": primary_key,
        "references": references,
    }


def idx(name: str, *columns: str, unique: bool = False) -> dict[str, Any]:
    return {"name": name, "columns": list(columns), "unique": unique}


ID = col("id", "UUID", not_null=True, default="gen_random_uuid()", primary_key=True)
TENANT_ID = col("tenant_id", "UUID", not_null=True)
CREATED_AT = col("created_at", "TIMESTAMPTZ", not_null=True, default="now()")
UPDATED_AT = col("updated_at", "TIMESTAMPTZ", not_null=True, default="now()")
DELETED_AT = col("deleted_at", "TIMESTAMPTZ")
DEFAULT_COLUMNS = [ID, TENANT_ID, CREATED_AT, UPDATED_AT, DELETED_AT]


def default_indexes(table_name: str) -> list[dict[str, Any]]:
    return [
        idx(f"idx_{table_name}_tenant_id", "tenant_id"),
        idx(f"idx_{table_name}_created_at", "created_at"),
    ]


# --- the reference example and the fixtures ----------------------------------------------------

# The "NORMALIZED TABLE DEFINITION" of the reference note, in our canonical form: default
# expressions are lower case (`now()`), and NOT NULL is explicit on the primary key.
PATIENTS_NORMALIZED = {
    "name": "patients",
    "tenant_scoped": True,
    "columns": [
        *DEFAULT_COLUMNS,
        col("first_name", "TEXT", not_null=True),
        col("last_name", "TEXT", not_null=True),
        col("phone", "TEXT"),
    ],
    "indexes": [*default_indexes("patients"), idx("idx_patients_phone", "phone")],
}


def test_reference_example_normalizes_as_in_the_note() -> None:
    schema = normalize_schema(fixture_payload("seed_patients_minimal.json"))
    assert schema.to_dict() == {
        "version": "001",
        "description": "Patients only",
        "tables": [PATIENTS_NORMALIZED],
    }


def test_reference_example_as_dataclasses() -> None:
    schema = normalize_schema(fixture_payload("seed_patients_minimal.json"))
    patients = schema.table("patients")
    assert patients is not None
    assert patients.columns[0] == Column(
        "id", "UUID", not_null=True, default="gen_random_uuid()", primary_key=True
    )
    assert patients.columns[1] == Column("tenant_id", "UUID", not_null=True)
    assert patients.column("phone") == Column("phone", "TEXT")
    assert patients.indexes == (
        Index("idx_patients_tenant_id", ("tenant_id",)),
        Index("idx_patients_created_at", ("created_at",)),
        Index("idx_patients_phone", ("phone",)),
    )


FOUNDATION_TABLES = [
    "tenants",
    "users",
    "patients",
    "providers",
    "locations",
    "appointments",
    "encounters",
    "claims",
    "payments",
    "audit_events",
]


def test_foundation_v001_normalizes_names_columns_and_defaults() -> None:
    schema = normalize_schema(fixture_payload("foundation_v001.json"))
    assert schema.version == "001"
    assert [t.name for t in schema.tables] == FOUNDATION_TABLES
    tables = schema.to_dict()["tables"]
    by_name = {t["name"]: t for t in tables}
    assert by_name["users"] == {
        "name": "users",
        "tenant_scoped": True,
        "columns": [
            *DEFAULT_COLUMNS,
            col("email", "TEXT", not_null=True),
            col("display_name", "TEXT"),
            col("role", "TEXT", not_null=True, default="'staff'"),
            col("last_login_at", "TIMESTAMPTZ"),
        ],
        "indexes": [*default_indexes("users"), idx("idx_users_email", "email")],
    }
    assert by_name["audit_events"] == {
        "name": "audit_events",
        "tenant_scoped": True,
        "columns": [
            *DEFAULT_COLUMNS,
            col("actor_id", "TEXT"),
            col("action", "TEXT", not_null=True),
            col("details", "JSONB"),
        ],
        "indexes": default_indexes("audit_events"),
    }
    assert by_name["tenants"]["columns"][5:] == [
        col("name", "TEXT", not_null=True),
        col("slug", "TEXT", not_null=True),
        col("plan", "TEXT", default="'starter'"),
    ]
    assert by_name["tenants"]["indexes"][2:] == [idx("idx_tenants_slug", "slug", unique=True)]
    assert by_name["claims"]["columns"][5:] == [
        col("encounter_id", "UUID"),
        col("payer", "TEXT", not_null=True),
        col("amount_billed", "NUMERIC(12,2)", not_null=True, default="0"),
        col("submitted", "BOOLEAN", not_null=True, default="false"),
    ]
    for t in tables:
        assert t["columns"][:5] == DEFAULT_COLUMNS
        assert t["indexes"][:2] == default_indexes(t["name"])


def test_foundation_v002_resolves_references_and_names_unnamed_indexes() -> None:
    schema = normalize_schema(fixture_payload("foundation_v002.json"))
    appointments = schema.table("appointments")
    insurance = schema.table("insurance_policies")
    patients = schema.table("patients")
    assert appointments is not None and insurance is not None and patients is not None
    patient_id = appointments.column("patient_id")
    assert patient_id == Column(
        "patient_id", "UUID", not_null=True, references=ForeignKey("patients", "id", "CASCADE")
    )
    assert insurance.column("patient_id") == Column(
        "patient_id", "UUID", not_null=True, references=ForeignKey("patients", "id", "NO ACTION")
    )
    assert insurance.indexes[2] == Index(
        "idx_insurance_policies_payer_member_id", ("payer", "member_id"), unique=True
    )
    assert patients.indexes[3] == Index("idx_patients_mrn", ("mrn",), unique=True)


def test_fixture_hashes_are_stable_and_distinct() -> None:
    v1 = normalize_schema(fixture_payload("foundation_v001.json"))
    v1_again = normalize_schema(fixture_payload("foundation_v001.json"))
    v2 = normalize_schema(fixture_payload("foundation_v002.json"))
    assert schema_hash(v1) == schema_hash(v1_again)
    assert schema_hash(v1) != schema_hash(v2)


def test_canonical_json_and_hash_are_the_documented_functions() -> None:
    schema = normalize_schema(fixture_payload("seed_patients_minimal.json"))
    text = json.dumps(schema.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(schema) == text
    assert schema_hash(schema) == hashlib.sha256(text.encode()).hexdigest()
    assert len(schema_hash(schema)) == 64


# --- defaults ----------------------------------------------------------------------------------


def test_flags_are_accepted_and_description_is_stripped() -> None:
    schema = normalize_schema(
        {**payload(table()), "description": "  hi  ", "force_apply": True, "dry_run": False}
    )
    assert schema.description == "hi"
    assert schema == Schema("001", "hi", schema.tables)


def test_a_table_without_caller_columns_gets_the_defaults() -> None:
    schema = normalize_schema(payload(table("Things")))
    assert schema.to_dict()["tables"] == [
        {
            "name": "things",
            "tenant_scoped": True,
            "columns": DEFAULT_COLUMNS,
            "indexes": default_indexes("things"),
        }
    ]


def test_not_tenant_scoped_has_no_tenant_column_nor_index() -> None:
    schema = normalize_schema(payload(table("lookup", tenant_scoped=False)))
    assert schema.to_dict()["tables"][0] == {
        "name": "lookup",
        "tenant_scoped": False,
        "columns": [ID, CREATED_AT, UPDATED_AT, DELETED_AT],
        "indexes": [idx("idx_lookup_created_at", "created_at")],
    }


def test_caller_versions_of_default_columns_take_their_place() -> None:
    schema = normalize_schema(
        payload(
            table(
                "things",
                {"name": "label", "type": "text"},
                {"name": "createdAt", "type": "timestamp", "default": "localtimestamp"},
                {"name": "ID", "type": "bigint", "unique": True},
                {"name": "tenant_id", "type": "uuid", "references": {"table": "tenants"}},
            ),
            table("tenants", tenant_scoped=False),
        )
    )
    things = schema.to_dict()["tables"][0]
    assert things["columns"] == [
        col("id", "BIGINT", not_null=True, primary_key=True),
        col(
            "tenant_id",
            "UUID",
            not_null=True,
            references={"table": "tenants", "column": "id", "on_delete": "NO ACTION"},
        ),
        col("created_at", "TIMESTAMP", default="localtimestamp"),
        UPDATED_AT,
        DELETED_AT,
        col("label", "TEXT"),
    ]


def test_caller_tenant_id_in_a_non_tenant_table_is_an_ordinary_column() -> None:
    schema = normalize_schema(
        payload(table("x", {"name": "tenant_id", "type": "text"}, tenant_scoped=False))
    )
    assert schema.tables[0].columns[-1] == Column("tenant_id", "TEXT")


def test_default_indexes_are_skipped_when_the_caller_has_the_same_columns() -> None:
    schema = normalize_schema(
        payload(
            table(
                "t",
                {"name": "x", "type": "int"},
                indexes=[
                    {"name": "by_tenant", "columns": ["tenantId"], "unique": False},
                    {"columns": ["x"]},
                ],
            )
        )
    )
    assert schema.tables[0].indexes == (
        Index("idx_t_created_at", ("created_at",)),
        Index("by_tenant", ("tenant_id",)),
        Index("idx_t_x", ("x",)),
    )


def test_generated_index_names_that_collide_get_a_hash_suffix() -> None:
    schema = normalize_schema(
        payload(
            table(
                "t",
                {"name": "a_b", "type": "int"},
                {"name": "a", "type": "int"},
                {"name": "b", "type": "int"},
                indexes=[
                    {"columns": ["a_b"]},
                    {"columns": ["a", "b"]},
                    {"name": "idx_t_created_at", "columns": ["a"]},
                ],
            )
        )
    )
    indexes = schema.tables[0].indexes
    index_names = [i.name for i in indexes]
    assert len(set(index_names)) == len(index_names)
    assert indexes[2] == Index("idx_t_a_b", ("a_b",))
    assert indexes[3].columns == ("a", "b")
    assert (
        indexes[3].name.startswith("idx_t_a_b_") and len(indexes[3].name) == len("idx_t_a_b_") + 8
    )
    # The caller's name is kept; the generated default index steps aside.
    assert indexes[4] == Index("idx_t_created_at", ("a",))
    assert indexes[1].columns == ("created_at",)
    assert indexes[1].name.startswith("idx_t_created_at_")
    assert all(names.is_valid_identifier(n) for n in index_names)


def test_long_generated_names_fit_in_63_bytes() -> None:
    long_table = "t" * 60
    schema = normalize_schema(payload(table(long_table, {"name": "c" * 60, "type": "int"})))
    for index in schema.tables[0].indexes:
        assert len(index.name.encode()) <= names.MAX_IDENTIFIER_BYTES
    assert len({i.name for i in schema.tables[0].indexes}) == 2


def test_reference_to_a_unique_column_or_unique_index_and_self_references() -> None:
    schema = normalize_schema(
        payload(
            table(
                "nodes",
                {"name": "code", "type": "varchar(20)", "unique": True},
                {"name": "slug", "type": "text"},
                {"name": "parent_id", "type": "uuid", "references": {"table": "nodes"}},
                indexes=[{"columns": ["slug"], "unique": True}],
            ),
            table(
                "links",
                {
                    "name": "node_code",
                    "type": "VARCHAR(20)",
                    "references": {"table": "Nodes", "column": "code", "on_delete": "set  null"},
                },
                {
                    "name": "node_slug",
                    "type": "text",
                    "references": {"table": "nodes", "column": "slug", "on_delete": "Restrict"},
                },
            ),
        )
    )
    nodes, links = schema.tables
    assert nodes.column("parent_id") == Column(
        "parent_id", "UUID", references=ForeignKey("nodes", "id", "NO ACTION")
    )
    assert links.column("node_code") == Column(
        "node_code", "VARCHAR(20)", references=ForeignKey("nodes", "code", "SET NULL")
    )
    assert links.column("node_slug") == Column(
        "node_slug", "TEXT", references=ForeignKey("nodes", "slug", "RESTRICT")
    )


def test_null_optional_fields_count_as_absent() -> None:
    schema = normalize_schema(
        payload(
            table(
                "t",
                {"name": "x", "type": "text", "default": None, "references": None, "unique": None},
                indexes=None,
                tenant_scoped=None,
            ),
            force_apply=None,
        )
    )
    assert schema.tables[0].columns[-1] == Column("x", "TEXT")
    assert schema.tables[0].tenant_scoped is True


# --- every error code, with its path ------------------------------------------------------------

ERROR_CASES: list[tuple[str, object, list[tuple[str, str]]]] = [
    ("payload not an object", [], [("payload", "invalid_type")]),
    ("payload null", None, [("payload", "invalid_type")]),
    (
        "all required payload fields",
        {},
        [
            ("payload.schema_version", "required"),
            ("payload.description", "required"),
            ("payload.tables", "required"),
        ],
    ),
    (
        "unknown payload field",
        payload(table(), tenant="x"),
        [("payload.tenant", "unknown_field")],
    ),
    (
        "odd unknown key",
        payload(table(), **{"a.b": 1}),
        [('payload["a.b"]', "unknown_field")],
    ),
    ("tables is a string", payload() | {"tables": "users"}, [("payload.tables", "invalid_type")]),
    ("tables is empty", payload(), [("payload.tables", "empty")]),
    (
        "too many tables",
        payload(*[table(f"t{i}") for i in range(1001)]),
        [("payload.tables", "too_many")],
    ),
    (
        "version wrong type",
        payload(table()) | {"schema_version": 1},
        [("payload.schema_version", "invalid_type")],
    ),
    (
        "version empty",
        payload(table()) | {"schema_version": ""},
        [("payload.schema_version", "empty")],
    ),
    (
        "version too long",
        payload(table()) | {"schema_version": "1" * 65},
        [("payload.schema_version", "too_long")],
    ),
    (
        "version bad chars",
        payload(table()) | {"schema_version": "1/2"},
        [("payload.schema_version", "invalid_value")],
    ),
    (
        "description blank",
        payload(table()) | {"description": "  "},
        [("payload.description", "empty")],
    ),
    (
        "description too long",
        payload(table()) | {"description": "x" * 1001},
        [("payload.description", "too_long")],
    ),
    (
        "description with NUL",
        payload(table()) | {"description": "a\x00b"},
        [("payload.description", "invalid_value")],
    ),
    ("dry_run not a bool", payload(table(), dry_run="yes"), [("payload.dry_run", "invalid_type")]),
    ("table is a list", payload([]), [("payload.tables[0]", "invalid_type")]),
    ("table without name", payload({"columns": []}), [("payload.tables[0].name", "required")]),
    (
        "table name is a number",
        payload({"name": 5, "columns": []}),
        [("payload.tables[0].name", "invalid_type")],
    ),
    ("table without columns", payload({"name": "t"}), [("payload.tables[0].columns", "required")]),
    (
        "columns is an object",
        payload({"name": "t", "columns": {}}),
        [("payload.tables[0].columns", "invalid_type")],
    ),
    ("unknown table field", payload(table(rls=True)), [("payload.tables[0].rls", "unknown_field")]),
    (
        "tenant_scoped not a bool",
        payload(table(tenant_scoped="no")),
        [("payload.tables[0].tenant_scoped", "invalid_type")],
    ),
    ("table name digit", payload(table("1st")), [("payload.tables[0].name", "invalid_name")]),
    ("table name empty", payload(table("")), [("payload.tables[0].name", "invalid_name")]),
    ("table name symbols", payload(table("!!!")), [("payload.tables[0].name", "invalid_name")]),
    ("table name non-ASCII", payload(table("café")), [("payload.tables[0].name", "invalid_name")]),
    ("table name too long", payload(table("a" * 64)), [("payload.tables[0].name", "invalid_name")]),
    (
        "duplicate table",
        payload(table("Users"), table("users")),
        [("payload.tables[1].name", "duplicate_name")],
    ),
    (
        "column is a list",
        payload(table("t", [])),
        [("payload.tables[0].columns[0]", "invalid_type")],
    ),
    (
        "column without name and type",
        payload(table("t", {})),
        [
            ("payload.tables[0].columns[0].name", "required"),
            ("payload.tables[0].columns[0].type", "required"),
        ],
    ),
    (
        "not_null is a string",
        payload(table("t", {"name": "x", "type": "text", "not_null": "yes"})),
        [("payload.tables[0].columns[0].not_null", "invalid_type")],
    ),
    (
        "unique is a number",
        payload(table("t", {"name": "x", "type": "text", "unique": 1})),
        [("payload.tables[0].columns[0].unique", "invalid_type")],
    ),
    (
        "type is a number",
        payload(table("t", {"name": "x", "type": 5})),
        [("payload.tables[0].columns[0].type", "invalid_type")],
    ),
    (
        "unknown column field",
        payload(table("t", {"name": "x", "type": "text", "primary_key": True})),
        [("payload.tables[0].columns[0].primary_key", "unknown_field")],
    ),
    (
        "system column name",
        payload(table("t", {"name": "xmin", "type": "int"})),
        [("payload.tables[0].columns[0].name", "invalid_name")],
    ),
    (
        "duplicate column after snake_case",
        payload(
            table(
                "t",
                {"name": "display_name", "type": "text"},
                {"name": "displayName", "type": "text"},
            )
        ),
        [("payload.tables[0].columns[1].name", "duplicate_name")],
    ),
    (
        "type outside the allow list",
        payload(table("t", {"name": "x", "type": "serial"})),
        [("payload.tables[0].columns[0].type", "not_allowed")],
    ),
    (
        "default outside the allow list",
        payload(table("t", {"name": "x", "type": "text", "default": "pg_sleep(10)"})),
        [("payload.tables[0].columns[0].default", "not_allowed")],
    ),
    (
        "default is an object",
        payload(table("t", {"name": "x", "type": "jsonb", "default": {}})),
        [("payload.tables[0].columns[0].default", "invalid_type")],
    ),
    (
        "default does not fit the type",
        payload(table("t", {"name": "x", "type": "uuid", "default": "'abc'"})),
        [("payload.tables[0].columns[0].default", "invalid_value")],
    ),
    (
        "tenant_id must be a UUID",
        payload(table("t", {"name": "tenant_id", "type": "text"})),
        [("payload.tables[0].columns[0].type", "invalid_value")],
    ),
    (
        "too many columns",
        payload(table("t", *[{"name": f"c{i}", "type": "int"} for i in range(1596)])),
        [("payload.tables[0].columns", "too_many")],
    ),
    (
        "far too many columns",
        payload(table("t", *[{"name": f"c{i}", "type": "int"} for i in range(1601)])),
        [("payload.tables[0].columns", "too_many")],
    ),
    (
        "references is a string",
        payload(table("t", {"name": "x", "type": "uuid", "references": "users"})),
        [("payload.tables[0].columns[0].references", "invalid_type")],
    ),
    (
        "references without table, with unknown field",
        payload(table("t", {"name": "x", "type": "uuid", "references": {"col": "id"}})),
        [
            ("payload.tables[0].columns[0].references.col", "unknown_field"),
            ("payload.tables[0].columns[0].references.table", "required"),
        ],
    ),
    (
        "references an invalid table name",
        payload(table("t", {"name": "x", "type": "uuid", "references": {"table": "9"}})),
        [("payload.tables[0].columns[0].references.table", "invalid_name")],
    ),
    (
        "references an unknown column",
        payload(
            table(
                "t", {"name": "x", "type": "uuid", "references": {"table": "t", "column": "nope"}}
            )
        ),
        [("payload.tables[0].columns[0].references.column", "unknown_reference")],
    ),
    (
        "references a column that is not unique",
        payload(
            table(
                "t",
                {"name": "code", "type": "text"},
                {"name": "x", "type": "text", "references": {"table": "t", "column": "code"}},
            )
        ),
        [("payload.tables[0].columns[1].references.column", "invalid_value")],
    ),
    (
        "references a column of another type",
        payload(table("t", {"name": "x", "type": "bigint", "references": {"table": "t"}})),
        [("payload.tables[0].columns[0].references", "invalid_value")],
    ),
    (
        "unknown on_delete",
        payload(
            table(
                "t",
                {"name": "x", "type": "uuid", "references": {"table": "t", "on_delete": "drop"}},
            )
        ),
        [("payload.tables[0].columns[0].references.on_delete", "invalid_value")],
    ),
    (
        "SET NULL on a NOT NULL column",
        payload(
            table(
                "t",
                {
                    "name": "x",
                    "type": "uuid",
                    "not_null": True,
                    "references": {"table": "t", "on_delete": "SET NULL"},
                },
            )
        ),
        [("payload.tables[0].columns[0].references.on_delete", "invalid_value")],
    ),
    (
        "indexes is an object",
        payload(table("t", indexes={})),
        [("payload.tables[0].indexes", "invalid_type")],
    ),
    (
        "too many indexes",
        payload(table("t", indexes=[{"columns": ["id"]}] * 101)),
        [("payload.tables[0].indexes", "too_many")],
    ),
    (
        "index without columns",
        payload(table("t", indexes=[{"name": "i"}])),
        [("payload.tables[0].indexes[0].columns", "required")],
    ),
    (
        "index with empty columns",
        payload(table("t", indexes=[{"columns": []}])),
        [("payload.tables[0].indexes[0].columns", "empty")],
    ),
    (
        "index with too many columns",
        payload(
            table(
                "t",
                *[{"name": f"c{i}", "type": "int"} for i in range(33)],
                indexes=[{"columns": [f"c{i}" for i in range(33)]}],
            )
        ),
        [("payload.tables[0].indexes[0].columns", "too_many")],
    ),
    (
        "index column not a string",
        payload(table("t", indexes=[{"columns": ["id", 3]}])),
        [("payload.tables[0].indexes[0].columns[1]", "invalid_type")],
    ),
    (
        "index column unknown",
        payload(table("t", indexes=[{"columns": ["id", "nope"]}])),
        [("payload.tables[0].indexes[0].columns[1]", "unknown_reference")],
    ),
    (
        "index with a bad and an unknown column",
        payload(table("t", indexes=[{"columns": ["id", 3, "nope"]}])),
        [
            ("payload.tables[0].indexes[0].columns[1]", "invalid_type"),
            ("payload.tables[0].indexes[0].columns[2]", "unknown_reference"),
        ],
    ),
    (
        "reference checked in a table with a bad name",
        payload(
            table(
                "9t",
                {"name": "x", "type": "uuid", "references": {"table": "u", "column": "nope"}},
            ),
            table("u"),
        ),
        [
            ("payload.tables[0].name", "invalid_name"),
            ("payload.tables[0].columns[0].references.column", "unknown_reference"),
        ],
    ),
    (
        "index column twice",
        payload(table("t", indexes=[{"columns": ["id", "ID"]}])),
        [("payload.tables[0].indexes[0].columns[1]", "duplicate_name")],
    ),
    (
        "unknown index field",
        payload(table("t", indexes=[{"columns": ["id"], "where": "true"}])),
        [("payload.tables[0].indexes[0].where", "unknown_field")],
    ),
    (
        "index unique not a bool",
        payload(table("t", indexes=[{"columns": ["id"], "unique": "true"}])),
        [("payload.tables[0].indexes[0].unique", "invalid_type")],
    ),
    (
        "index name invalid",
        payload(table("t", indexes=[{"name": "9 lives", "columns": ["id"]}])),
        [("payload.tables[0].indexes[0].name", "invalid_name")],
    ),
    (
        "two indexes with one name",
        payload(
            table(
                "t",
                indexes=[
                    {"name": "i", "columns": ["id"]},
                    {"name": "I", "columns": ["created_at"]},
                ],
            )
        ),
        [("payload.tables[0].indexes[1].name", "duplicate_name")],
    ),
    (
        "index named like a table",
        payload(table("a", indexes=[{"name": "b", "columns": ["id"]}]), table("b")),
        [("payload.tables[0].indexes[0].name", "duplicate_name")],
    ),
    (
        "index named like a primary key",
        payload(table("a", indexes=[{"name": "a_pkey", "columns": ["created_at"]}])),
        [("payload.tables[0].indexes[0].name", "duplicate_name")],
    ),
    (
        "primary key index named like a table",
        payload(table("users"), table("users_pkey")),
        [("payload.tables[0].name", "duplicate_name")],
    ),
    (
        "unique constraint indexes collide",
        payload(
            table("a", {"name": "b_c", "type": "text", "unique": True}),
            table("a_b", {"name": "c", "type": "text", "unique": True}),
        ),
        [("payload.tables[1].columns[0].unique", "duplicate_name")],
    ),
    (
        "drop a column the table defines",
        payload(table("t", {"name": "x", "type": "int"}, drop_columns=["old", "X"])),
        [("payload.tables[0].drop_columns[1]", "conflicting_value")],
    ),
    (
        "drop a table the payload lists",
        payload(table("t"), drop_tables=["T"]),
        [("payload.drop_tables[0]", "conflicting_value")],
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(raw, expected) for _, raw, expected in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_error_codes_and_paths(raw: object, expected: list[tuple[str, str]]) -> None:
    assert issues_of(raw) == expected


def test_every_documented_code_is_covered() -> None:
    codes = {code for _, _, expected in ERROR_CASES for _, code in expected}
    assert codes == {
        "required",
        "invalid_type",
        "unknown_field",
        "invalid_name",
        "duplicate_name",
        "not_allowed",
        "invalid_value",
        "unknown_reference",
        "conflicting_value",
        "too_many",
        "too_long",
        "empty",
    }


def test_duplicate_messages_name_the_earlier_original() -> None:
    with pytest.raises(SchemaValidationError) as excinfo:
        normalize_schema(payload(table("AuditEvents"), table("audit_events")))
    (issue,) = excinfo.value.issues
    assert "'AuditEvents'" in issue.message and "'audit_events'" in issue.message
    assert issue.to_dict() == {
        "path": "payload.tables[1].name",
        "code": "duplicate_name",
        "message": issue.message,
    }


def test_a_payload_with_many_problems_reports_all_of_them() -> None:
    raw = {
        "schema_version": "v 1",
        "description": "",
        "extra": True,
        "tables": [
            {
                "name": "Orders",
                "columns": [
                    {"name": "total", "type": "MONEY"},
                    {"name": "note", "type": "TEXT", "default": "'a' || 'b'"},
                    {"name": "customer_id", "type": "UUID", "references": {"table": "customers"}},
                    {"name": "Note", "type": "TEXT"},
                    "not a column",
                ],
                "indexes": [{"columns": ["missing"]}],
            },
            {"name": "orders", "columns": [{"name": "x", "type": "int", "not_null": "yes"}]},
            42,
        ],
    }
    assert sorted(issues_of(raw)) == sorted(
        [
            ("payload.extra", "unknown_field"),
            ("payload.schema_version", "invalid_value"),
            ("payload.description", "empty"),
            ("payload.tables[0].columns[0].type", "not_allowed"),
            ("payload.tables[0].columns[1].default", "not_allowed"),
            ("payload.tables[0].columns[3].name", "duplicate_name"),
            ("payload.tables[0].columns[4]", "invalid_type"),
            ("payload.tables[0].indexes[0].columns[0]", "unknown_reference"),
            ("payload.tables[1].columns[0].not_null", "invalid_type"),
            ("payload.tables[1].name", "duplicate_name"),
            ("payload.tables[2]", "invalid_type"),
        ]
    )


def test_custom_root_path() -> None:
    with pytest.raises(SchemaValidationError) as excinfo:
        normalize_schema({"tables": []}, path="body")
    assert [i.path for i in excinfo.value.issues] == [
        "body.schema_version",
        "body.description",
        "body.tables",
    ]


# --- injection corpus --------------------------------------------------------------------------

INJECTION_TYPES = [
    "TEXT; DROP TABLE users",
    "TEXT); DROP TABLE users; --",
    "TEXT DEFAULT now()",
    "int references users",
    "pg_catalog.text",
    '"text"',
    'text collate "C"',
    "varchar(80)) , evil int",
    "numeric(12,2) check (true)",
]
INJECTION_DEFAULTS = [
    "now(); drop table x",
    "pg_sleep(10)",
    "(select 1)",
    "'a' || 'b'",
    "'x'; DROP TABLE users; --",
    "'x'::text; drop table x",
    "'x'::regclass",
    "current_user",
    "$$x$$",
    "E'\\x41'",
    "1; drop table x",
    "nextval('s')",
]


@pytest.mark.parametrize("bad_type", INJECTION_TYPES)
def test_injected_types_are_not_allowed(bad_type: str) -> None:
    raw = payload(table("t", {"name": "x", "type": bad_type}))
    assert issues_of(raw) == [("payload.tables[0].columns[0].type", "not_allowed")]


@pytest.mark.parametrize("bad_default", INJECTION_DEFAULTS)
def test_injected_defaults_are_not_allowed(bad_default: str) -> None:
    raw = payload(table("t", {"name": "x", "type": "text", "default": bad_default}))
    assert issues_of(raw) == [("payload.tables[0].columns[0].default", "not_allowed")]


def test_injected_defaults_are_reported_even_when_the_type_is_bad() -> None:
    raw = payload(table("t", {"name": "x", "type": "serial", "default": "pg_sleep(1)"}))
    assert issues_of(raw) == [
        ("payload.tables[0].columns[0].type", "not_allowed"),
        ("payload.tables[0].columns[0].default", "not_allowed"),
    ]


# --- properties --------------------------------------------------------------------------------


def _round_trips_through_the_parser(name: str) -> bool:
    quoted = sql.Identifier(name).as_string(None)
    (statement,) = pglast.parse_sql(f"SELECT 1 AS {quoted}")
    select: Any = statement.stmt
    return bool(select.targetList[0].name == name)


def _check_names(schema: Schema) -> None:
    every = [t.name for t in schema.tables]
    every += [c.name for t in schema.tables for c in t.columns]
    every += [i.name for t in schema.tables for i in t.indexes]
    for name in every:
        assert names.is_valid_identifier(name)
        assert names.to_snake_case(name) == name
        assert _round_trips_through_the_parser(name)


NAME_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="aZ_ -9.", max_size=70),
    st.sampled_from(["id", "tenantId", "xmin", "ID", "HTTPServer", "select", "order", "user"]),
)


@given(NAME_TEXT)
@settings(max_examples=300)
def test_any_table_name_is_rejected_or_becomes_a_valid_identifier(raw: str) -> None:
    try:
        schema = normalize_schema(payload(table(raw, {"name": "x", "type": "text"})))
    except SchemaValidationError as exc:
        assert [(i.path, i.code) for i in exc.issues] == [
            ("payload.tables[0].name", "invalid_name")
        ]
        return
    _check_names(schema)
    again = normalize_schema(payload(table(schema.tables[0].name, {"name": "x", "type": "text"})))
    assert again == schema


@given(NAME_TEXT)
@settings(max_examples=300)
def test_any_column_name_is_rejected_or_becomes_a_valid_identifier(raw: str) -> None:
    try:
        schema = normalize_schema(payload(table("t", {"name": raw, "type": "uuid"})))
    except SchemaValidationError as exc:
        assert [(i.path, i.code) for i in exc.issues] == [
            ("payload.tables[0].columns[0].name", "invalid_name")
        ]
        return
    _check_names(schema)
    name = names.to_snake_case(raw)
    assert schema.tables[0].column(name) is not None
    again = normalize_schema(payload(table("t", {"name": name, "type": "uuid"})))
    assert again == schema


TYPES = ["TEXT", "integer", "NUMERIC(12,2)", "uuid", "jsonb", "boolean", "varchar(80)", "text[]"]
COLUMN_NAMES = ["alpha", "betaGamma", "delta", "Epsilon Zeta", "eta"]
TABLE_NAMES = ["orders", "lineItems", "Customers", "audit log"]


def _snake_name(obj: dict[str, Any]) -> str:
    return names.to_snake_case(str(obj["name"]))


_column_fields: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(COLUMN_NAMES),
    "type": st.sampled_from(TYPES),
}
_column_options: dict[str, st.SearchStrategy[Any]] = {
    "not_null": st.booleans(),
    "unique": st.booleans(),
    "default": st.none(),
}
valid_columns = st.fixed_dictionaries(_column_fields, optional=_column_options)
_table_fields: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(TABLE_NAMES),
    "columns": st.lists(valid_columns, unique_by=_snake_name, max_size=4),
}
valid_tables = st.fixed_dictionaries(
    _table_fields,
    optional={
        "tenant_scoped": st.booleans(),
        "indexes": st.lists(
            st.fixed_dictionaries(
                {"columns": st.just(["created_at"])}, optional={"unique": st.booleans()}
            ),
            max_size=2,
            unique_by=lambda index: index.get("unique", False),
        ),
    },
)
_payload_fields: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.sampled_from(["001", "2.0", "v3-beta"]),
    "description": st.sampled_from(["Foundation", "ünïcode ✓"]),
    "tables": st.lists(valid_tables, min_size=1, max_size=3, unique_by=_snake_name),
}
valid_payloads = st.fixed_dictionaries(_payload_fields, optional={"dry_run": st.booleans()})


def _shuffled(value: Any, rnd: random.Random) -> Any:
    """Return `value` with the keys of every object in a random order (arrays keep theirs)."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@given(valid_payloads, st.randoms(use_true_random=False))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_schema_hash_ignores_key_order_and_sees_type_changes(
    raw: dict[str, Any], rnd: random.Random
) -> None:
    schema = normalize_schema(raw)
    shuffled = _shuffled(raw, rnd)
    assert canonical_json(normalize_schema(shuffled)) == canonical_json(schema)
    assert schema_hash(normalize_schema(shuffled)) == schema_hash(schema)
    with_columns = [t for t in raw["tables"] if t["columns"]]
    if not with_columns:
        return
    changed = copy.deepcopy(raw)
    column = next(t for t in changed["tables"] if t["columns"])["columns"][0]
    column["type"] = "BIGINT" if column["type"] != "BIGINT" else "TEXT"
    assert schema_hash(normalize_schema(changed)) != schema_hash(schema)


KEYS = [
    "schema_version",
    "description",
    "tables",
    "name",
    "columns",
    "indexes",
    "tenant_scoped",
    "type",
    "not_null",
    "unique",
    "default",
    "references",
    "table",
    "column",
    "on_delete",
    "drop_tables",
    "drop_columns",
    "drop_indexes",
    "allow_destructive",
]
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["id", "TEXT", "uuid", "now()", "'x'", "cascade", "001", "t", "created_at"]),
)
garbage = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=5
        )
    ),
    max_leaves=25,
)


def _only_validation_errors(raw: object) -> None:
    try:
        normalize_schema(raw)
    except SchemaValidationError as exc:
        assert exc.issues
        assert all(isinstance(i, ValidationIssue) for i in exc.issues)


@given(garbage)
@settings(max_examples=300)
def test_garbage_payloads_only_raise_validation_errors(raw: object) -> None:
    _only_validation_errors(raw)


@given(garbage)
@settings(max_examples=300)
def test_garbage_tables_only_raise_validation_errors(raw: object) -> None:
    _only_validation_errors(payload(raw))
    _only_validation_errors(payload(table("t", raw)))
    _only_validation_errors(payload({"name": "t", "columns": [], "indexes": [raw]}))


@given(st.dictionaries(st.sampled_from(KEYS), garbage, max_size=6))
@settings(max_examples=300)
def test_garbage_with_real_keys_only_raises_validation_errors(raw: dict[str, Any]) -> None:
    _only_validation_errors(payload(raw))
    _only_validation_errors(payload(table("t", raw)))
    _only_validation_errors(payload(table("t", {"name": "x", "type": "uuid", "references": raw})))


def test_normalized_schemas_are_frozen_tuples() -> None:
    schema = normalize_schema(fixture_payload("foundation_v002.json"))
    assert isinstance(schema.tables, tuple)
    assert all(isinstance(t, Table) and isinstance(t.columns, tuple) for t in schema.tables)


# --- tenant isolation ------------------------------------------------------------------------


def test_a_global_table_may_not_reference_a_tenant_scoped_table() -> None:
    raw = payload(
        table("patients", {"name": "name", "type": "text"}),
        table(
            "countries",
            {"name": "iso", "type": "text", "unique": True},
            tenant_scoped=False,
        ),
        table(
            "stats",
            {"name": "patient_id", "type": "uuid", "references": {"table": "patients"}},
            {"name": "country_id", "type": "uuid", "references": {"table": "countries"}},
            tenant_scoped=False,
        ),
    )
    with pytest.raises(SchemaValidationError) as excinfo:
        normalize_schema(raw)
    [issue] = excinfo.value.issues
    assert (issue.path, issue.code) == (
        "payload.tables[2].columns[0].references.table",
        "cross_tenant_reference",
    )
    assert "'patients'" in issue.message and "tenant-scoped" in issue.message


def test_tenant_scoped_tables_may_reference_global_and_tenant_scoped_tables() -> None:
    schema = normalize_schema(
        payload(
            table(
                "countries", {"name": "iso", "type": "text", "unique": True}, tenant_scoped=False
            ),
            table(
                "patients",
                {"name": "country_id", "type": "uuid", "references": {"table": "countries"}},
            ),
            table(
                "visits",
                {"name": "patient_id", "type": "uuid", "references": {"table": "patients"}},
            ),
        )
    )
    assert [t.tenant_scoped for t in schema.tables] == [False, True, True]


def test_the_tenant_key_takes_its_name_in_the_relation_namespace() -> None:
    raw = payload(
        table(
            "patients",
            {"name": "code", "type": "text"},
            indexes=[{"name": "patients_tenant_id_id_key", "columns": ["code"]}],
        )
    )
    assert issues_of(raw) == [("payload.tables[0].indexes[0].name", "duplicate_name")]
