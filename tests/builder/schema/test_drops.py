"""The names a payload drops (`drop_tables`, `drop_columns`, `drop_indexes`), `allow_destructive`,
and references to tables that the payload does not define (pure: no database)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from builder.errors import SchemaValidationError
from builder.schema.normalize import (
    MAX_COLUMNS,
    MAX_INDEXES,
    MAX_TABLES,
    PAYLOAD_KEYS,
    TABLE_KEYS,
    normalize_schema,
    schema_hash,
)
from builder.schema.spec import Column, ForeignKey, Schema
from tests.builder.helpers import FIXTURES

# The hash of foundation_v001's payload as it was before the drop keys existed: a payload that
# does not use them must keep its canonical JSON, and so its hash (applied versions are compared
# by it).
FOUNDATION_V001_HASH = "536c2c9dae44ce67089a38f28c2fc1641183987a0d011faf1b14583f6b554845"


def foundation_v001() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / "foundation_v001.json").read_text())["payload"]
    return payload


def payload(*tables: Any, **extra: Any) -> dict[str, Any]:
    return {"schema_version": "001", "description": "test", "tables": list(tables), **extra}


def table(name: str = "t", *columns: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "columns": list(columns), **extra}


def issues_of(raw: object) -> list[tuple[str, str]]:
    with pytest.raises(SchemaValidationError) as excinfo:
        normalize_schema(raw)
    return [(i.path, i.code) for i in excinfo.value.issues]


def messages_of(raw: object) -> list[str]:
    with pytest.raises(SchemaValidationError) as excinfo:
        normalize_schema(raw)
    return [i.message for i in excinfo.value.issues]


# --- the keys are part of the contract ---------------------------------------------------------


def test_the_new_keys_are_allowed_where_they_belong() -> None:
    assert {"drop_tables", "allow_destructive"} <= set(PAYLOAD_KEYS)
    assert {"drop_columns", "drop_indexes"} <= set(TABLE_KEYS)
    assert issues_of(payload(table("t", drop_tables=[]), drop_columns=[])) == [
        ("payload.drop_columns", "unknown_field"),
        ("payload.tables[0].drop_tables", "unknown_field"),
    ]


# --- the hash of existing payloads ---------------------------------------------------------------


def test_the_hash_of_a_payload_without_the_new_keys_is_unchanged() -> None:
    schema = normalize_schema(foundation_v001())
    assert schema_hash(schema) == FOUNDATION_V001_HASH
    assert set(schema.to_dict()) == {"version", "description", "tables"}
    assert all(
        set(t) == {"name", "tenant_scoped", "columns", "indexes"}
        for t in schema.to_dict()["tables"]
    )


@pytest.mark.parametrize("empty", [None, []], ids=["null", "empty"])
def test_empty_drops_and_no_consent_leave_the_hash_as_it_was(empty: object) -> None:
    raw = foundation_v001()
    raw["drop_tables"] = empty
    raw["allow_destructive"] = None if empty is None else False
    for t in raw["tables"]:
        t["drop_columns"] = empty
        t["drop_indexes"] = empty
    schema = normalize_schema(raw)
    assert schema_hash(schema) == FOUNDATION_V001_HASH
    assert schema.drop_tables == () and schema.allow_destructive is False
    assert all(t.drop_columns == () and t.drop_indexes == () for t in schema.tables)


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("payload", "drop_tables", ["legacy"]),
        ("payload", "allow_destructive", True),
        ("table", "drop_columns", ["legacy_code"]),
        ("table", "drop_indexes", ["idx_legacy"]),
    ],
)
def test_each_key_that_says_something_changes_the_hash(where: str, key: str, value: Any) -> None:
    raw = foundation_v001()
    (raw if where == "payload" else raw["tables"][0])[key] = value
    schema = normalize_schema(raw)
    assert schema_hash(schema) != FOUNDATION_V001_HASH
    form = schema.to_dict()
    assert (form if where == "payload" else form["tables"][0])[key] == value


# --- valid drops -------------------------------------------------------------------------------


def test_drops_are_normalized_and_kept_in_the_callers_order() -> None:
    schema = normalize_schema(
        payload(
            table(
                "Patients",
                {"name": "mrn", "type": "text"},
                drop_columns=["zetaCode", "Alpha Name", "legacy_mrn"],
                drop_indexes=["idx_patients_zeta", "IdxPatientsAlpha"],
            ),
            table("visits", drop_columns=None, drop_indexes=[]),
            drop_tables=["Zeta Archive", "alphaLog", "mid"],
            allow_destructive=True,
        )
    )
    patients, visits = schema.tables
    assert patients.drop_columns == ("zeta_code", "alpha_name", "legacy_mrn")
    assert patients.drop_indexes == ("idx_patients_zeta", "idx_patients_alpha")
    assert visits.drop_columns == () and visits.drop_indexes == ()
    assert schema.drop_tables == ("zeta_archive", "alpha_log", "mid")
    assert schema.allow_destructive is True
    form = schema.to_dict()
    assert form["drop_tables"] == ["zeta_archive", "alpha_log", "mid"]
    assert form["allow_destructive"] is True
    assert form["tables"][0]["drop_columns"] == ["zeta_code", "alpha_name", "legacy_mrn"]
    assert form["tables"][0]["drop_indexes"] == ["idx_patients_zeta", "idx_patients_alpha"]
    assert "drop_columns" not in form["tables"][1] and "drop_indexes" not in form["tables"][1]


def test_drops_alone_do_not_need_consent_here() -> None:
    # Whether a drop may run without allow_destructive is decided when the request is planned.
    schema = normalize_schema(payload(table("t", drop_columns=["old"]), drop_tables=["legacy"]))
    assert schema.allow_destructive is False
    assert "allow_destructive" not in schema.to_dict()


def test_the_schema_defaults_say_nothing_is_dropped() -> None:
    schema = Schema("1", "d")
    assert schema.drop_tables == () and schema.allow_destructive is False
    assert schema.to_dict() == {"version": "1", "description": "d", "tables": []}


def test_a_global_table_may_drop_a_tenant_id_column_it_does_not_have() -> None:
    schema = normalize_schema(payload(table("t", tenant_scoped=False, drop_columns=["tenant_id"])))
    assert schema.tables[0].drop_columns == ("tenant_id",)


def test_the_limits_are_inclusive() -> None:
    schema = normalize_schema(
        payload(
            table(
                "t",
                drop_columns=[f"c{i}" for i in range(MAX_COLUMNS)],
                drop_indexes=[f"i{i}" for i in range(MAX_INDEXES)],
            ),
            drop_tables=[f"old{i}" for i in range(MAX_TABLES)],
        )
    )
    assert len(schema.tables[0].drop_columns) == MAX_COLUMNS
    assert len(schema.tables[0].drop_indexes) == MAX_INDEXES
    assert len(schema.drop_tables) == MAX_TABLES


def test_tables_stay_required_and_not_empty() -> None:
    raw: dict[str, Any] = {"schema_version": "1", "description": "d", "drop_tables": ["old"]}
    assert issues_of(raw) == [("payload.tables", "required")]
    assert issues_of({**raw, "tables": []}) == [("payload.tables", "empty")]


# --- invalid drops -----------------------------------------------------------------------------

TABLE_DROP_KEYS = ["drop_columns", "drop_indexes"]


@pytest.mark.parametrize("key", TABLE_DROP_KEYS)
@pytest.mark.parametrize("value", ["old", {"old": True}, 3, True])
def test_a_table_drop_list_must_be_an_array(key: str, value: object) -> None:
    assert issues_of(payload(table("t", **{key: value}))) == [
        (f"payload.tables[0].{key}", "invalid_type")
    ]


@pytest.mark.parametrize("value", ["old", {"old": True}, 3, True])
def test_drop_tables_must_be_an_array(value: object) -> None:
    assert issues_of(payload(table(), drop_tables=value)) == [
        ("payload.drop_tables", "invalid_type")
    ]


@pytest.mark.parametrize("value", ["yes", 1, 0, [], {}])
def test_allow_destructive_must_be_a_boolean(value: object) -> None:
    assert issues_of(payload(table(), allow_destructive=value)) == [
        ("payload.allow_destructive", "invalid_type")
    ]


ENTRY_CASES: list[tuple[str, object, str]] = [
    ("number", 3, "invalid_type"),
    ("null", None, "invalid_type"),
    ("array", ["old"], "invalid_type"),
    ("object", {"name": "old"}, "invalid_type"),
    ("leading_digit", "1st", "invalid_name"),
    ("empty", "", "invalid_name"),
    ("punctuation", "');--", "invalid_name"),
    ("non_ascii", "café", "invalid_name"),
    ("too_long", "a" * 64, "invalid_name"),
]


@pytest.mark.parametrize(("label", "entry", "code"), ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
@pytest.mark.parametrize("key", TABLE_DROP_KEYS)
def test_a_bad_entry_of_a_table_drop_list(label: str, entry: object, code: str, key: str) -> None:
    raw = payload(table("t", **{key: ["old", entry, "older"]}))
    assert issues_of(raw) == [(f"payload.tables[0].{key}[1]", code)]


@pytest.mark.parametrize(("label", "entry", "code"), ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_a_bad_entry_of_drop_tables(label: str, entry: object, code: str) -> None:
    raw = payload(table(), drop_tables=["old", entry])
    assert issues_of(raw) == [("payload.drop_tables[1]", code)]


def test_a_system_column_cannot_be_named_in_drop_columns() -> None:
    assert issues_of(payload(table("t", drop_columns=["xmin"]))) == [
        ("payload.tables[0].drop_columns[0]", "invalid_name")
    ]


@pytest.mark.parametrize("key", TABLE_DROP_KEYS)
def test_duplicates_within_a_table_list(key: str) -> None:
    raw = payload(table("t", **{key: ["legacyCode", "other", "legacy_code", "Legacy Code"]}))
    assert issues_of(raw) == [
        (f"payload.tables[0].{key}[2]", "duplicate_name"),
        (f"payload.tables[0].{key}[3]", "duplicate_name"),
    ]
    assert "'legacyCode'" in messages_of(raw)[0]


def test_duplicates_within_drop_tables() -> None:
    raw = payload(table(), drop_tables=["Archive", "archive", "log"])
    assert issues_of(raw) == [("payload.drop_tables[1]", "duplicate_name")]


def test_the_same_column_may_be_dropped_from_two_tables() -> None:
    schema = normalize_schema(
        payload(table("a", drop_columns=["old"]), table("b", drop_columns=["old"]))
    )
    assert [t.drop_columns for t in schema.tables] == [("old",), ("old",)]


def test_an_index_dropped_by_two_tables_is_a_duplicate() -> None:
    # Index names are unique per PostgreSQL schema: only one table can have it.
    raw = payload(table("a", drop_indexes=["idx_old"]), table("b", drop_indexes=["IdxOld"]))
    assert issues_of(raw) == [("payload.tables[1].drop_indexes[0]", "duplicate_name")]


@pytest.mark.parametrize(
    ("key", "limit", "size"),
    [
        ("drop_columns", MAX_COLUMNS, MAX_COLUMNS + 1),
        ("drop_indexes", MAX_INDEXES, MAX_INDEXES + 1),
        ("drop_indexes", MAX_INDEXES, 5000),
    ],
)
def test_too_many_entries_in_a_table_list(key: str, limit: int, size: int) -> None:
    raw = payload(table("t", **{key: [f"n{i}" for i in range(size)]}))
    assert issues_of(raw) == [(f"payload.tables[0].{key}", "too_many")]
    assert str(limit) in messages_of(raw)[0]


def test_too_many_entries_in_drop_tables() -> None:
    raw = payload(table(), drop_tables=[f"old{i}" for i in range(MAX_TABLES + 1)])
    assert issues_of(raw) == [("payload.drop_tables", "too_many")]


# --- conflicts with what the payload defines ---------------------------------------------------


def test_drop_columns_may_not_name_a_column_of_the_table() -> None:
    columns = [{"name": "mrn", "type": "text"}, {"name": "note", "type": "text"}]
    raw = payload(table("t", *columns, drop_columns=["old", "MRN", "note"]))
    assert issues_of(raw) == [
        ("payload.tables[0].drop_columns[1]", "conflicting_value"),
        ("payload.tables[0].drop_columns[2]", "conflicting_value"),
    ]
    message = messages_of(raw)[0]
    assert "'mrn'" in message and "'MRN'" in message and "payload.tables[0].columns[0]" in message


@pytest.mark.parametrize(
    "name", ["id", "tenant_id", "created_at", "updated_at", "deleted_at", "createdAt", "ID"]
)
def test_drop_columns_may_not_name_an_automatic_column(name: str) -> None:
    raw = payload(table("t", drop_columns=[name]))
    assert issues_of(raw) == [("payload.tables[0].drop_columns[0]", "conflicting_value")]
    assert "automatic" in messages_of(raw)[0]


def test_drop_columns_may_not_name_the_callers_version_of_an_automatic_column() -> None:
    raw = payload(table("t", {"name": "created_at", "type": "timestamp"}, drop_columns=["old"]))
    assert normalize_schema(raw).tables[0].drop_columns == ("old",)
    raw["tables"][0]["drop_columns"] = ["created_at"]
    assert issues_of(raw) == [("payload.tables[0].drop_columns[0]", "conflicting_value")]


def test_drop_columns_are_checked_in_a_table_whose_name_is_invalid() -> None:
    raw = payload(table("9t", {"name": "x", "type": "int"}, drop_columns=["x"]))
    assert issues_of(raw) == [
        ("payload.tables[0].name", "invalid_name"),
        ("payload.tables[0].drop_columns[0]", "conflicting_value"),
    ]


def _indexed_table(**extra: Any) -> dict[str, Any]:
    return table(
        "t",
        {"name": "a", "type": "int"},
        {"name": "code", "type": "text", "unique": True},
        indexes=[
            {"name": "by_a", "columns": ["a"]},
            {"columns": ["a", "code"]},
            {"name": "idx_t_created_at", "columns": ["code"]},
        ],
        **extra,
    )


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("by_a", "a named index of the table"),
        ("ByA", "a named index, as written by the caller"),
        ("idx_t_a_code", "an index the table names itself"),
        ("idx_t_tenant_id", "an automatic index"),
        ("idx_t_created_at", "an index named by the caller like an automatic one"),
        ("t_pkey", "the primary key index"),
        ("t_tenant_id_id_key", "the tenant key index"),
        ("t_code_key", "a unique constraint's index"),
        ("t", "the table itself"),
    ],
)
def test_drop_indexes_may_not_name_a_relation_the_table_defines(name: str, what: str) -> None:
    raw = payload(_indexed_table(drop_indexes=["idx_old", name]))
    assert issues_of(raw) == [("payload.tables[0].drop_indexes[1]", "conflicting_value")], what


def test_drop_indexes_may_not_name_a_hash_suffixed_generated_index() -> None:
    raw = payload(_indexed_table())
    indexes = normalize_schema(raw).tables[0].indexes
    suffixed = next(i.name for i in indexes if i.columns == ("created_at",))
    assert suffixed.startswith("idx_t_created_at_")
    raw["tables"][0]["drop_indexes"] = [suffixed]
    assert issues_of(raw) == [("payload.tables[0].drop_indexes[0]", "conflicting_value")]
    assert "generated index" in messages_of(raw)[0]


def test_drop_indexes_may_not_name_a_relation_of_another_table() -> None:
    raw = payload(
        table("a", drop_indexes=["idx_b_created_at", "b", "b_pkey", "idx_c_created_at"]),
        table("b"),
    )
    assert issues_of(raw) == [
        ("payload.tables[0].drop_indexes[0]", "conflicting_value"),
        ("payload.tables[0].drop_indexes[1]", "conflicting_value"),
        ("payload.tables[0].drop_indexes[2]", "conflicting_value"),
    ]


def test_drop_tables_may_not_name_a_table_of_the_payload() -> None:
    raw = payload(table("patients"), table("Visit Notes"), drop_tables=["legacy", "visitNotes"])
    assert issues_of(raw) == [("payload.drop_tables[1]", "conflicting_value")]
    message = messages_of(raw)[0]
    assert "'visit_notes'" in message and "'visitNotes'" in message
    assert "payload.tables[1]" in message


# --- references to tables that the payload does not define -------------------------------------


def test_a_reference_to_a_table_outside_the_payload_is_accepted() -> None:
    schema = normalize_schema(
        payload(
            table(
                "visits",
                {"name": "patient_id", "type": "uuid", "references": {"table": "Patients"}},
                {
                    "name": "clinic_code",
                    "type": "text",
                    "not_null": True,
                    "references": {"table": "clinics", "column": "Code", "on_delete": "cascade"},
                },
            ),
            table(
                "globals",
                {"name": "patient_id", "type": "bigint", "references": {"table": "patients"}},
                tenant_scoped=False,
            ),
        )
    )
    visits, globals_ = schema.tables
    assert visits.column("patient_id") == Column(
        "patient_id", "UUID", references=ForeignKey("patients", "id", "NO ACTION")
    )
    assert visits.column("clinic_code") == Column(
        "clinic_code", "TEXT", not_null=True, references=ForeignKey("clinics", "code", "CASCADE")
    )
    # Its column, type, uniqueness and tenant scope are for the planner to check.
    assert globals_.column("patient_id") == Column(
        "patient_id", "BIGINT", references=ForeignKey("patients", "id", "NO ACTION")
    )


def test_the_rules_of_the_referencing_column_still_apply_to_an_outside_table() -> None:
    raw = payload(
        table(
            "t",
            {
                "name": "x",
                "type": "uuid",
                "not_null": True,
                "references": {"table": "ext", "on_delete": "set null"},
            },
            {"name": "y", "type": "uuid", "references": {"table": "ext", "on_delete": "drop"}},
        )
    )
    assert issues_of(raw) == [
        ("payload.tables[0].columns[1].references.on_delete", "invalid_value"),
        ("payload.tables[0].columns[0].references.on_delete", "invalid_value"),
    ]


@pytest.mark.parametrize("name", ["1ext", "');--", "café", "", "a" * 64])
def test_a_reference_table_name_must_still_be_usable(name: str) -> None:
    raw = payload(table("t", {"name": "x", "type": "uuid", "references": {"table": name}}))
    assert issues_of(raw) == [("payload.tables[0].columns[0].references.table", "invalid_name")]


def test_a_reference_column_name_of_an_outside_table_must_still_be_usable() -> None:
    raw = payload(
        table("t", {"name": "x", "type": "uuid", "references": {"table": "ext", "column": "9"}})
    )
    assert issues_of(raw) == [("payload.tables[0].columns[0].references.column", "invalid_name")]


def test_references_inside_the_payload_keep_every_check() -> None:
    raw = payload(
        table("a", {"name": "code", "type": "text"}),
        table(
            "b",
            {"name": "a_id", "type": "uuid", "references": {"table": "a", "column": "nope"}},
            {"name": "a_code", "type": "text", "references": {"table": "a", "column": "code"}},
            {"name": "a_ref", "type": "bigint", "references": {"table": "a"}},
        ),
        table(
            "g", {"name": "a_id", "type": "uuid", "references": {"table": "a"}}, tenant_scoped=False
        ),
    )
    assert issues_of(raw) == [
        ("payload.tables[1].columns[0].references.column", "unknown_reference"),
        ("payload.tables[1].columns[1].references.column", "invalid_value"),
        ("payload.tables[1].columns[2].references", "invalid_value"),
        ("payload.tables[2].columns[0].references.table", "cross_tenant_reference"),
    ]


def test_a_reference_to_a_dropped_table_is_a_conflict() -> None:
    raw = payload(
        table("t", {"name": "old_id", "type": "uuid", "references": {"table": "Legacy"}}),
        drop_tables=["legacy"],
    )
    assert issues_of(raw) == [
        ("payload.tables[0].columns[0].references.table", "conflicting_value")
    ]
    assert "drop_tables" in messages_of(raw)[0]
