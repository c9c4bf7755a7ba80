"""Limits on the size of a version, and indexes that repeat another (pure: no database)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from builder import pipeline
from builder.errors import SchemaValidationError
from builder.schema.limits import DEFAULT_LIMITS, SETTINGS, Limits, limit_issues, statement_issues
from builder.schema.normalize import normalize_schema
from builder.schema.spec import Schema
from tests.builder.helpers import envelope, load_fixture


def table(name: str, columns: int = 1, indexes: int = 0, **extra: Any) -> dict[str, Any]:
    """A table of `columns` TEXT columns, with one index on each of the first `indexes`."""
    return {
        "name": name,
        "columns": [{"name": f"c{i}", "type": "TEXT"} for i in range(columns)],
        "indexes": [{"columns": [f"c{i}"]} for i in range(indexes)],
        **extra,
    }


def schema_of(*tables: dict[str, Any]) -> Schema:
    return normalize_schema({"schema_version": "1", "description": "d", "tables": list(tables)})


def found(issues: list[Any]) -> list[tuple[str, str]]:
    return [(i.path, i.code) for i in issues]


@pytest.fixture
def plans():
    pipeline.clear_plan_cache()
    yield
    pipeline.clear_plan_cache()


# --- the limits --------------------------------------------------------------------------------


def test_a_schema_at_every_limit_passes() -> None:
    # Each tenant-scoped table: 5 automatic columns, 2 automatic indexes.
    schema = schema_of(table("a", columns=3, indexes=2), table("b", columns=1))
    limits = Limits(
        tables=2, columns_per_table=8, columns=14, indexes_per_table=4, indexes=6, statements=17
    )

    assert limit_issues(schema, limits) == []
    assert statement_issues(17, limits) == []


@pytest.mark.parametrize(
    ("limit", "value", "path", "code"),
    [
        ("tables", 1, "payload.tables", "too_many_tables"),
        ("columns_per_table", 7, "payload.tables[0].columns", "too_many_columns"),
        ("columns", 13, "payload.tables", "too_many_columns"),
        ("indexes_per_table", 3, "payload.tables[0].indexes", "too_many_indexes"),
        ("indexes", 5, "payload.tables", "too_many_indexes"),
    ],
)
def test_one_over_a_limit_is_one_issue_naming_the_limit_and_its_setting(
    limit: str, value: int, path: str, code: str
) -> None:
    schema = schema_of(table("a", columns=3, indexes=2), table("b", columns=1))
    limits = replace(
        Limits(tables=2, columns_per_table=8, columns=14, indexes_per_table=4, indexes=6),
        **{limit: value},
    )

    issues = limit_issues(schema, limits)

    assert found(issues) == [(path, code)]
    message = issues[0].message
    assert f"at most {value} are allowed" in message
    assert SETTINGS[limit] in message


def test_every_table_over_its_limit_is_named_at_its_own_path() -> None:
    schema = schema_of(table("a", columns=1), table("b", columns=4), table("c", columns=4))

    issues = limit_issues(schema, Limits(columns_per_table=8))

    assert found(issues) == [
        ("payload.tables[1].columns", "too_many_columns"),
        ("payload.tables[2].columns", "too_many_columns"),
    ]
    assert "Table 'b' has 9 columns, the automatic ones included" in issues[0].message
    assert "Raise the limit with the setting WF106_MAX_COLUMNS_PER_TABLE" in issues[0].message


def test_a_total_over_its_limit_suggests_splitting_the_version() -> None:
    issues = limit_issues(schema_of(table("a"), table("b")), Limits(tables=1))

    assert issues[0].message == (
        "The payload has 2 tables; at most 1 are allowed. Split the version into smaller ones, "
        "or raise the limit with the setting WF106_MAX_TABLES."
    )


def test_too_many_statements() -> None:
    issues = statement_issues(16_001)

    assert found(issues) == [("payload.tables", "too_many_statements")]
    assert "16,001 statements; at most 16,000" in issues[0].message
    assert "WF106_MAX_STATEMENTS" in issues[0].message


def test_every_setting_has_a_limit() -> None:
    assert set(SETTINGS) == set(vars(DEFAULT_LIMITS))


@pytest.mark.slow
def test_the_default_limits_let_the_largest_benchmark_schema_through(plans) -> None:
    # bench/sql_generation.py prepares 1,000 tables of 20 columns and 3 indexes with the
    # default limits.
    from bench._common import synthetic_envelope

    prepared = pipeline.prepare(synthetic_envelope(1000))

    assert isinstance(prepared, pipeline.Prepared)
    assert limit_issues(prepared.schema) == []


# --- limits in the pipeline --------------------------------------------------------------------


def test_prepare_reports_a_limit_with_the_request_otherwise_valid(plans) -> None:
    request = envelope([table("a", columns=3, indexes=3), table("b")])

    rejected = pipeline.prepare(request, limits=Limits(indexes_per_table=4, statements=5))

    assert isinstance(rejected, pipeline.Rejected)
    assert found(rejected.issues) == [("payload.tables[0].indexes", "too_many_indexes")]


def test_the_statement_limit_is_checked_on_the_rendered_migration(plans) -> None:
    request = load_fixture("foundation_v001.json")
    allowed = pipeline.prepare(request)
    assert isinstance(allowed, pipeline.Prepared)
    count = len(allowed.migration.statements)

    rejected = pipeline.prepare(request, limits=Limits(statements=count - 1))

    assert isinstance(rejected, pipeline.Rejected)
    assert found(rejected.issues) == [("payload.tables", "too_many_statements")]


def test_a_limit_is_reported_only_once_the_rest_is_valid(plans) -> None:
    request = envelope([table("a"), table("b", extra_key=1)])

    rejected = pipeline.prepare(request, limits=Limits(tables=1))

    assert isinstance(rejected, pipeline.Rejected)
    assert found(rejected.issues) == [("payload.tables[1].extra_key", "unknown_field")]


def test_a_plan_cached_under_some_limits_is_not_served_under_lower_ones(plans) -> None:
    request = envelope([table("a"), table("b")])
    first = pipeline.prepare(request)

    lower = pipeline.prepare(request, limits=Limits(tables=1))
    again = pipeline.prepare(request)

    assert isinstance(first, pipeline.Prepared) and isinstance(again, pipeline.Prepared)
    assert isinstance(lower, pipeline.Rejected)
    assert found(lower.issues) == [("payload.tables", "too_many_tables")]
    assert again.migration is first.migration


# --- duplicate indexes -------------------------------------------------------------------------


def duplicates(*tables: dict[str, Any]) -> list[tuple[str, str, str]]:
    with pytest.raises(SchemaValidationError) as excinfo:
        schema_of(*tables)
    return [(i.path, i.code, i.message) for i in excinfo.value.issues]


CODE = {"name": "code", "type": "TEXT"}


def test_two_indexes_on_the_same_columns_are_refused_whatever_their_names() -> None:
    issues = duplicates(
        {
            "name": "things",
            "columns": [CODE],
            "indexes": [
                {"name": "by_code", "columns": ["code"]},
                {"name": "code_again", "columns": ["Code"]},
            ],
        }
    )

    assert issues == [
        (
            "payload.tables[0].indexes[1]",
            "duplicate_index",
            "index 'code_again' of table 'things' is the same as the index 'by_code' "
            "(payload.tables[0].indexes[0]): on (code)",
        )
    ]


def test_a_unique_index_that_repeats_a_unique_column_is_refused() -> None:
    issues = duplicates(
        {
            "name": "things",
            "columns": [{**CODE, "unique": True}],
            "indexes": [{"columns": ["code"], "unique": True}],
        }
    )

    assert [(path, code) for path, code, _ in issues] == [
        ("payload.tables[0].indexes[0]", "duplicate_index")
    ]
    assert (
        "the unique constraint 'things_code_key' (payload.tables[0].columns[0].unique)"
        in (issues[0][2])
    )
    assert "unique, on (tenant_id, code)" in issues[0][2]


def test_a_unique_index_on_id_repeats_the_builders_keys() -> None:
    tenant = duplicates(
        {"name": "things", "columns": [], "indexes": [{"columns": ["id"], "unique": True}]}
    )
    shared = duplicates(
        {
            "name": "kinds",
            "tenant_scoped": False,
            "columns": [],
            "indexes": [{"columns": ["id"], "unique": True}],
        }
    )

    assert "the unique constraint 'things_tenant_id_id_key'" in tenant[0][2]
    assert "the primary key 'kinds_pkey'" in shared[0][2]


def test_a_tenant_tables_unique_index_leads_with_tenant_id_however_it_is_written() -> None:
    issues = duplicates(
        {
            "name": "things",
            "columns": [CODE],
            "indexes": [
                {"columns": ["code"], "unique": True},
                {"columns": ["code", "tenant_id"], "unique": True},
            ],
        }
    )

    assert [(path, code) for path, code, _ in issues] == [
        ("payload.tables[0].indexes[1]", "duplicate_index")
    ]


def test_one_issue_per_repeated_key_counts_the_other_repeats() -> None:
    repeated = [{"columns": ["code"]}] * 4

    issues = duplicates({"name": "things", "columns": [CODE], "indexes": repeated})

    assert [(path, code) for path, code, _ in issues] == [
        ("payload.tables[0].indexes[1]", "duplicate_index")
    ]
    assert issues[0][2].endswith("on (code) (repeated 2 more times in this table)")


def test_indexes_that_differ_in_uniqueness_order_or_table_are_not_duplicates() -> None:
    columns = [CODE, {"name": "kind", "type": "TEXT"}]
    indexes = [
        {"columns": ["code"]},
        {"columns": ["code"], "unique": True},
        {"columns": ["code", "kind"]},
        {"columns": ["kind", "code"]},
        {"columns": ["tenant_id", "code"]},
    ]

    schema = schema_of(
        {"name": "a", "columns": columns, "indexes": indexes},
        {"name": "b", "columns": columns, "indexes": indexes},
    )

    assert [len(t.indexes) for t in schema.tables] == [7, 7]  # with tenant_id and created_at


def test_an_index_on_an_automatic_index_column_replaces_it() -> None:
    schema = schema_of({"name": "a", "columns": [], "indexes": [{"columns": ["tenant_id"]}]})

    assert [i.columns for i in schema.tables[0].indexes] == [("created_at",), ("tenant_id",)]


def test_a_list_cut_at_the_contracts_maximum_reports_only_that() -> None:
    issues = duplicates(
        {"name": "things", "columns": [CODE], "indexes": [{"columns": ["code"]}] * 101}
    )

    assert [(path, code) for path, code, _ in issues] == [("payload.tables[0].indexes", "too_many")]
