"""A malformed-input corpus for `POST /wf106/schema-builder`.

Every case must answer 400 with `result.status == "blocked"` and structured
`validation_errors`, never a 5xx, and the catalog of the target database must be exactly the
same after the whole corpus as before it (a blocked request never touches the target).

The corpus is built from one valid envelope (checked to be valid with the builder first), by
putting wrong JSON types at every level, SQL fragments into every string field, unusable names
(unicode, too long, empty after snake_case), duplicates, unknown keys, huge arrays and nested
garbage into it, plus raw bodies that are not JSON at all.

Names are normalized to snake_case, so a name such as `users; DROP TABLE x` is *valid*: it
becomes the harmless identifier `users_drop_table_x` (see
`test_sql_in_a_name_is_normalized_never_executed`). The SQL fragments in names below are the
ones that cannot be normalized into a usable identifier.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection, transaction
from psycopg import sql
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from builder.pipeline import Prepared, Rejected, prepare
from builder.request.body import find_unusable

URL = "/wf106/schema-builder"
pytestmark = pytest.mark.django_db

DELETE = object()  # as a mutation value: remove the key


@dataclass(frozen=True)
class Case:
    """One malformed request: raw `bytes`, or a JSON-able object sent as JSON.

    `code`, when given, must be among the codes of `result.validation_errors`.
    """

    id: str
    body: object
    code: str | None = None


# --- the valid envelope that the cases break ---------------------------------------------------


def valid_envelope() -> dict[str, Any]:
    """Return a valid request that uses every field of the contract."""
    return {
        "meta": {
            "tenant_id": "t_001",
            "workflow_run_id": "wr_corpus_001",
            "idempotency_key": "corpus-key",
            "workflow_name": "WF106",
        },
        "subject": {"tenant_id": "t_001"},
        "context": {"actor_id": "corpus", "validation_profile": "safe"},
        "payload": {
            "schema_version": "001",
            "description": "malformed-input corpus",
            "dry_run": False,
            "force_apply": False,
            "allow_destructive": False,
            "drop_tables": [],
            "tables": [
                {
                    "name": "orgs",
                    "tenant_scoped": True,
                    "drop_columns": [],
                    "drop_indexes": [],
                    "columns": [
                        {
                            "name": "title",
                            "type": "TEXT",
                            "not_null": True,
                            "unique": True,
                            "default": "'untitled'",
                        },
                        {"name": "code", "type": "VARCHAR(8)"},
                    ],
                    "indexes": [
                        {
                            "name": "idx_orgs_code_created",
                            "columns": ["code", "created_at"],
                            "unique": False,
                        }
                    ],
                },
                {
                    "name": "patients",
                    "columns": [
                        {
                            "name": "org_id",
                            "type": "UUID",
                            "references": {"table": "orgs", "column": "id", "on_delete": "cascade"},
                        },
                        {"name": "birth_date", "type": "DATE", "default": "'2000-01-01'"},
                    ],
                },
            ],
        },
    }


Path = tuple[str | int, ...]
PAYLOAD: Path = ("payload",)
TABLE: Path = (*PAYLOAD, "tables", 0)
COLUMN: Path = (*TABLE, "columns", 0)  # orgs.title
INDEX: Path = (*TABLE, "indexes", 0)
REF_COLUMN: Path = (*PAYLOAD, "tables", 1, "columns", 0)  # patients.org_id
REFERENCES: Path = (*REF_COLUMN, "references")


def with_value(path: Path, value: object) -> dict[str, Any]:
    """Return the valid envelope with the value at `path` replaced (or removed with DELETE)."""
    body = valid_envelope()
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    last = path[-1]
    if isinstance(last, str) and last not in node and value is DELETE:
        raise KeyError(path)  # a typo in the corpus, not a case
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return body


def edited(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """Return the valid envelope after `edit` changed it in place."""
    body = valid_envelope()
    edit(body)
    return body


def payload_of(body: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = body["payload"]
    return payload


def tables_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    tables: list[dict[str, Any]] = payload_of(body)["tables"]
    return tables


def raw_with(path: Path, marker_escape: str) -> bytes:
    """Return the valid envelope as raw JSON with the string at `path` set to a JSON escape.

    Used for what `json.dumps` of a Python value cannot say (or would say differently).
    """
    marker = "__CORPUS_MARKER__"
    text = json.dumps(with_value(path, marker))
    assert text.count(marker) == 1
    return text.replace(marker, marker_escape).encode()


# --- wrong JSON types at every level -----------------------------------------------------------

WRONG_VALUES: dict[str, object] = {
    "null": None,
    "true": True,
    "int": 7,
    "float": 1.5,
    "string": "oops",
    "array": [],
    "object": {},
}

# (label, path, the JSON kinds that are wrong there). An optional field may be null (= absent),
# so null is only wrong where the field is required or an array item.
WRONG_TYPE_SITES: list[tuple[str, Path, tuple[str, ...]]] = [
    ("meta", ("meta",), ("true", "int", "string", "array")),
    ("subject", ("subject",), ("true", "int", "string", "array")),
    ("context", ("context",), ("true", "int", "string", "array")),
    ("payload", PAYLOAD, ("null", "true", "int", "string", "array")),
    ("schema_version", (*PAYLOAD, "schema_version"), ("null", "int", "float", "true", "array")),
    ("description", (*PAYLOAD, "description"), ("null", "int", "true", "array", "object")),
    ("tables", (*PAYLOAD, "tables"), ("null", "string", "object", "int", "true")),
    ("table", TABLE, ("null", "string", "int", "array", "true")),
    ("table.name", (*TABLE, "name"), ("null", "int", "array", "object", "true")),
    ("columns", (*TABLE, "columns"), ("null", "string", "object", "int")),
    ("column", COLUMN, ("null", "string", "int", "array")),
    ("column.name", (*COLUMN, "name"), ("null", "int", "array", "object")),
    ("type", (*COLUMN, "type"), ("null", "int", "array", "object", "true")),
    ("not_null", (*COLUMN, "not_null"), ("int", "string", "array", "object")),
    ("unique", (*COLUMN, "unique"), ("int", "string", "array", "object")),
    ("default", (*COLUMN, "default"), ("array", "object")),
    ("references", REFERENCES, ("string", "int", "array", "true")),
    ("references.table", (*REFERENCES, "table"), ("null", "int", "array", "object")),
    ("references.column", (*REFERENCES, "column"), ("int", "array", "object")),
    ("references.on_delete", (*REFERENCES, "on_delete"), ("int", "array", "object", "true")),
    ("indexes", (*TABLE, "indexes"), ("string", "object", "int", "true")),
    ("index", INDEX, ("null", "string", "int", "array")),
    ("index.name", (*INDEX, "name"), ("int", "array", "object", "true")),
    ("index.columns", (*INDEX, "columns"), ("null", "string", "object", "int")),
    ("index.column", (*INDEX, "columns", 0), ("null", "int", "array", "object")),
    ("index.unique", (*INDEX, "unique"), ("string", "int")),
    ("tenant_scoped", (*TABLE, "tenant_scoped"), ("string", "int", "array", "object")),
    ("dry_run", (*PAYLOAD, "dry_run"), ("string", "int", "array", "object")),
    ("force_apply", (*PAYLOAD, "force_apply"), ("string", "int", "array", "object")),
    ("allow_destructive", (*PAYLOAD, "allow_destructive"), ("string", "int", "array", "object")),
    ("drop_tables", (*PAYLOAD, "drop_tables"), ("string", "object", "int", "true")),
    ("drop_columns", (*TABLE, "drop_columns"), ("string", "object", "int", "true")),
    ("drop_indexes", (*TABLE, "drop_indexes"), ("string", "object", "float", "true")),
    ("meta.tenant_id", ("meta", "tenant_id"), ("int", "array", "object", "true")),
    ("meta.workflow_run_id", ("meta", "workflow_run_id"), ("int", "array", "object")),
    ("meta.idempotency_key", ("meta", "idempotency_key"), ("int", "array", "object")),
    ("meta.workflow_name", ("meta", "workflow_name"), ("int", "array")),
    ("subject.tenant_id", ("subject", "tenant_id"), ("int", "array", "object", "true")),
    ("context.actor_id", ("context", "actor_id"), ("int", "array", "object", "true")),
    ("context.validation_profile", ("context", "validation_profile"), ("int", "array", "true")),
]
# A required field that is null is `required`; every other wrong type is `invalid_type`.
REQUIRED_LABELS = frozenset(
    {
        "payload",
        "schema_version",
        "description",
        "tables",
        "table.name",
        "columns",
        "column.name",
        "type",
        "references.table",
        "index.columns",
    }
)


def wrong_type_cases() -> list[Case]:
    cases = [
        Case(f"type/body/{kind}", value, "invalid_type")
        for kind, value in WRONG_VALUES.items()
        if kind != "object"
    ]
    for label, path, kinds in WRONG_TYPE_SITES:
        for kind in kinds:
            code = "required" if kind == "null" and label in REQUIRED_LABELS else "invalid_type"
            cases.append(Case(f"type/{label}/{kind}", with_value(path, WRONG_VALUES[kind]), code))
    return cases


# --- SQL fragments in every string field -------------------------------------------------------

SQL_IN_STRINGS: list[tuple[str, Path, str, str]] = [
    # Names: only fragments that cannot become a usable snake_case identifier.
    ("table.name/punctuation", (*TABLE, "name"), "'); --", "invalid_name"),
    ("table.name/comment", (*TABLE, "name"), "/**/;", "invalid_name"),
    ("table.name/leading_digit", (*TABLE, "name"), "1; DROP TABLE patients; --", "invalid_name"),
    (
        "table.name/too_long",
        (*TABLE, "name"),
        "orgs; DROP TABLE patients CASCADE; SELECT pg_sleep(100) FROM generate_series(1, 10); --",
        "invalid_name",
    ),
    ("column.name/punctuation", (*COLUMN, "name"), '"; --', "invalid_name"),
    ("column.name/system_column", (*COLUMN, "name"), "xmin; --", "invalid_name"),
    ("column.name/ctid", (*COLUMN, "name"), '"ctid"', "invalid_name"),
    ("column.name/leading_digit", (*COLUMN, "name"), "1 OR 1=1", "invalid_name"),
    ("index.name/punctuation", (*INDEX, "name"), "*/ --", "invalid_name"),
    ("index.name/leading_digit", (*INDEX, "name"), "0; DROP INDEX x", "invalid_name"),
    (
        "index.column/unknown",
        (*INDEX, "columns", 0),
        "code); DROP TABLE orgs; --",
        "unknown_reference",
    ),
    ("index.column/punctuation", (*INDEX, "columns", 0), "');", "invalid_name"),
    # A table outside the request may be referenced, but not by a name that is not usable.
    (
        "references.table/leading_digit",
        (*REFERENCES, "table"),
        "0rgs; DROP TABLE x",
        "invalid_name",
    ),
    ("references.table/punctuation", (*REFERENCES, "table"), "';--", "invalid_name"),
    (
        "references.column/unknown",
        (*REFERENCES, "column"),
        "id) ON DELETE CASCADE; --",
        "unknown_reference",
    ),
    ("references.column/punctuation", (*REFERENCES, "column"), "--", "invalid_name"),
    ("on_delete/drop", (*REFERENCES, "on_delete"), "CASCADE; DROP TABLE orgs", "invalid_value"),
    ("on_delete/comment", (*REFERENCES, "on_delete"), "cascade /* */", "invalid_value"),
    ("on_delete/paren", (*REFERENCES, "on_delete"), "SET NULL) --", "invalid_value"),
    ("on_delete/set_default_cols", (*REFERENCES, "on_delete"), "SET NULL (id)", "invalid_value"),
    # Types: an allow list, parsed by a tokenizer.
    ("type/drop", (*COLUMN, "type"), "TEXT; DROP TABLE orgs", "not_allowed"),
    ("type/default_clause", (*COLUMN, "type"), "TEXT DEFAULT 'x'", "not_allowed"),
    ("type/check", (*COLUMN, "type"), "VARCHAR(10) CHECK (true)", "not_allowed"),
    ("type/collate", (*COLUMN, "type"), 'TEXT COLLATE "C"', "not_allowed"),
    ("type/comment", (*COLUMN, "type"), "TEXT /* */", "not_allowed"),
    ("type/line_comment", (*COLUMN, "type"), "TEXT -- x", "not_allowed"),
    ("type/identity", (*COLUMN, "type"), "INTEGER GENERATED ALWAYS AS IDENTITY", "not_allowed"),
    ("type/qualified", (*COLUMN, "type"), "pg_catalog.text", "not_allowed"),
    ("type/quoted", (*COLUMN, "type"), '"TEXT"', "not_allowed"),
    ("type/paren_escape", (*COLUMN, "type"), "VARCHAR(10)); DROP TABLE orgs; --", "not_allowed"),
    ("type/not_null", (*COLUMN, "type"), "TEXT NOT NULL", "not_allowed"),
    ("type/references", (*COLUMN, "type"), "UUID REFERENCES orgs", "not_allowed"),
    # Defaults: literals and an allow list of functions.
    ("default/drop", (*COLUMN, "default"), "'x'; DROP TABLE orgs; --", "not_allowed"),
    ("default/call_then_drop", (*COLUMN, "default"), "now(); DROP TABLE orgs", "not_allowed"),
    ("default/pg_sleep", (*COLUMN, "default"), "pg_sleep(10)", "not_allowed"),
    ("default/subquery", (*COLUMN, "default"), "(SELECT current_user)", "not_allowed"),
    ("default/current_user", (*COLUMN, "default"), "current_user", "not_allowed"),
    ("default/concat", (*COLUMN, "default"), "'a' || 'b'", "not_allowed"),
    ("default/escape_string", (*COLUMN, "default"), "E'\\x41'", "not_allowed"),
    ("default/dollar_quote", (*COLUMN, "default"), "$$x$$", "not_allowed"),
    ("default/nextval", (*COLUMN, "default"), "nextval('orgs_seq')", "not_allowed"),
    ("default/cast_drop", (*COLUMN, "default"), "'x'::text; DROP TABLE orgs", "not_allowed"),
    ("default/cast_function", (*COLUMN, "default"), "'x'::regclass", "not_allowed"),
    ("default/null_drop", (*COLUMN, "default"), "NULL; DROP TABLE orgs", "not_allowed"),
    ("default/uuid_drop", (*REF_COLUMN, "default"), "'; DROP TABLE orgs; --'", "invalid_value"),
    # Envelope strings with a pattern or an allow list.
    (
        "schema_version/drop",
        (*PAYLOAD, "schema_version"),
        "001'; DROP TABLE orgs; --",
        "invalid_value",
    ),
    ("schema_version/or", (*PAYLOAD, "schema_version"), "001 OR 1=1", "invalid_value"),
    (
        "meta.tenant_id/drop",
        ("meta", "tenant_id"),
        "t'; DROP SCHEMA public CASCADE; --",
        "invalid_value",
    ),
    ("subject.tenant_id/drop", ("subject", "tenant_id"), "t_001' OR '1'='1", "invalid_value"),
    (
        "meta.workflow_run_id/drop",
        ("meta", "workflow_run_id"),
        "wr'; DELETE FROM x; --",
        "invalid_value",
    ),
    (
        "validation_profile/drop",
        ("context", "validation_profile"),
        "safe'; DROP TABLE orgs; --",
        "invalid_value",
    ),
    ("validation_profile/or", ("context", "validation_profile"), "safe OR 1=1", "invalid_value"),
    # Free text: only too long (or with NUL) is invalid there.
    ("actor_id/too_long", ("context", "actor_id"), "x'; DROP TABLE orgs; --" * 10, "too_long"),
    (
        "meta.idempotency_key/too_long",
        ("meta", "idempotency_key"),
        "k'); DROP TABLE orgs; --" * 10,
        "too_long",
    ),
    ("description/too_long", (*PAYLOAD, "description"), "*/ DROP TABLE orgs; /*" * 50, "too_long"),
    ("description/nul", (*PAYLOAD, "description"), "*/ DROP TABLE orgs; /*\x00", "invalid_value"),
]


def sql_fragment_cases() -> list[Case]:
    return [
        Case(f"sql/{label}", with_value(path, value), code)
        for label, path, value, code in SQL_IN_STRINGS
    ]


# --- names: unicode, very long, empty after snake_case -----------------------------------------

BAD_NAMES: dict[str, str] = {
    "accented": "café",
    "cjk": "患者",
    "emoji": "patients_🙂",
    "rtl": "مرضى",
    "rtl_override": "\u202epatients",
    "zero_width_space": "pat\u200bients",
    "zero_width_joiner": "pat\u200dients",
    "fullwidth": "\uff50\uff41\uff54\uff49\uff45\uff4e\uff54\uff53",
    "cyrillic_lookalike": "\u043ergs",  # the first letter is Cyrillic
    "soft_hyphen": "pat\u00adients",
    "lone_surrogate": "pat\ud800ients",
    "underscores": "___",
    "spaces": "   ",
    "empty": "",
    "dashes": "-- --",
    "leading_digit": "1st_table",
    "bytes_64": "a" * 64,
    "chars_10k": "n" * 10_000,
    "camel_too_long": "aB" * 25,  # 50 characters, 74 in snake_case
    "multibyte_64": "é" * 32,
}


def name_cases() -> list[Case]:
    cases = []
    for site, path in (
        ("table", (*TABLE, "name")),
        ("column", (*COLUMN, "name")),
        ("index", (*INDEX, "name")),
    ):
        for label, name in BAD_NAMES.items():
            cases.append(Case(f"name/{site}/{label}", with_value(path, name), "invalid_name"))
    for label in ("cjk", "emoji", "bytes_64", "underscores", "lone_surrogate"):
        name = BAD_NAMES[label]
        cases.append(Case(f"name/index_column/{label}", with_value((*INDEX, "columns", 0), name)))
        cases.append(
            Case(f"name/references.table/{label}", with_value((*REFERENCES, "table"), name))
        )
        cases.append(
            Case(f"name/references.column/{label}", with_value((*REFERENCES, "column"), name))
        )
    return cases


# --- lengths and values of the envelope's strings ----------------------------------------------

BAD_STRINGS: list[tuple[str, Path, str, str]] = [
    ("schema_version/empty", (*PAYLOAD, "schema_version"), "", "empty"),
    ("schema_version/65", (*PAYLOAD, "schema_version"), "1" * 65, "too_long"),
    ("schema_version/space", (*PAYLOAD, "schema_version"), "1.0 beta", "invalid_value"),
    ("schema_version/unicode", (*PAYLOAD, "schema_version"), "v1ü", "invalid_value"),
    ("schema_version/path", (*PAYLOAD, "schema_version"), "../../etc/passwd", "invalid_value"),
    ("description/empty", (*PAYLOAD, "description"), "", "empty"),
    ("description/blank", (*PAYLOAD, "description"), " \t\n ", "empty"),
    ("description/1001", (*PAYLOAD, "description"), "d" * 1001, "too_long"),
    ("description/lone_surrogate", (*PAYLOAD, "description"), "bad \udfff", "invalid_value"),
    ("meta.tenant_id/empty", ("meta", "tenant_id"), "", "invalid_value"),
    ("meta.tenant_id/129", ("meta", "tenant_id"), "t" * 129, "invalid_value"),
    ("meta.tenant_id/space", ("meta", "tenant_id"), "t 001", "invalid_value"),
    ("meta.tenant_id/unicode", ("meta", "tenant_id"), "tenant_é", "invalid_value"),
    ("subject.tenant_id/conflict", ("subject", "tenant_id"), "t_002", "conflicting_value"),
    ("subject.tenant_id/201", ("subject", "tenant_id"), "t" * 201, "too_long"),
    ("workflow_run_id/empty", ("meta", "workflow_run_id"), "", "invalid_value"),
    ("workflow_run_id/slash", ("meta", "workflow_run_id"), "wr/1", "invalid_value"),
    ("workflow_name/201", ("meta", "workflow_name"), "W" * 201, "too_long"),
    (
        "validation_profile/unknown",
        ("context", "validation_profile"),
        "destructive",
        "invalid_value",
    ),
    ("validation_profile/case", ("context", "validation_profile"), "SAFE", "invalid_value"),
    ("validation_profile/empty", ("context", "validation_profile"), "", "invalid_value"),
    ("actor_id/10k", ("context", "actor_id"), "a" * 10_000, "too_long"),
    ("type/empty", (*COLUMN, "type"), "", "not_allowed"),
    ("type/blank", (*COLUMN, "type"), "   ", "not_allowed"),
    ("type/201", (*COLUMN, "type"), "TEXT" + " " * 197, "not_allowed"),
    ("type/serial", (*COLUMN, "type"), "SERIAL", "not_allowed"),
    ("type/money", (*COLUMN, "type"), "MONEY", "not_allowed"),
    ("type/range", (*COLUMN, "type"), "int4range", "not_allowed"),
    ("type/regclass", (*COLUMN, "type"), "regclass", "not_allowed"),
    ("type/varchar_no_length", (*COLUMN, "type"), "VARCHAR", "not_allowed"),
    ("type/varchar_0", (*COLUMN, "type"), "VARCHAR(0)", "not_allowed"),
    ("type/varchar_negative", (*COLUMN, "type"), "VARCHAR(-1)", "not_allowed"),
    ("type/varchar_huge", (*COLUMN, "type"), "VARCHAR(99999999999999999999)", "not_allowed"),
    ("type/numeric_1001", (*COLUMN, "type"), "NUMERIC(1001)", "not_allowed"),
    ("type/numeric_scale", (*COLUMN, "type"), "NUMERIC(5,6)", "not_allowed"),
    ("type/array_3d", (*COLUMN, "type"), "TEXT[][][]", "not_allowed"),
    ("type/array_size", (*COLUMN, "type"), "TEXT[3]", "not_allowed"),
    ("type/cyrillic", (*COLUMN, "type"), "\u0422\u0415\u0425\u0422", "not_allowed"),
    ("type/nul", (*COLUMN, "type"), "TEXT\x00", "not_allowed"),
    ("type/fullwidth", (*COLUMN, "type"), "\uff34\uff25\uff38\uff34", "not_allowed"),
    ("default/10001", (*COLUMN, "default"), "'" + "x" * 10_000 + "'", "not_allowed"),
    ("default/nul_literal", (*COLUMN, "default"), "'a\x00b'", "not_allowed"),
    ("default/surrogate_literal", (*COLUMN, "default"), "'\ud800'", "not_allowed"),
    ("default/unquoted_word", (*COLUMN, "default"), "untitled", "not_allowed"),
    ("on_delete/unknown", (*REFERENCES, "on_delete"), "explode", "invalid_value"),
    (
        "on_delete/unicode",
        (*REFERENCES, "on_delete"),
        "\uff23\uff21\uff33\uff23\uff21\uff24\uff25",
        "invalid_value",
    ),
]


def bad_string_cases() -> list[Case]:
    return [
        Case(f"string/{label}", with_value(path, value), code)
        for label, path, value, code in BAD_STRINGS
    ]


# --- defaults that do not fit their column type ------------------------------------------------

BAD_DEFAULTS: list[tuple[str, str, object]] = [
    ("integer_text", "INTEGER", "'abc'"),
    ("integer_fraction", "INTEGER", 1.5),
    ("integer_bool", "INTEGER", True),
    ("smallint_overflow", "SMALLINT", 40_000),
    ("bigint_overflow", "BIGINT", 2**63),
    ("uuid_text", "UUID", "'not-a-uuid'"),
    ("uuid_now", "UUID", "now()"),
    ("boolean_maybe", "BOOLEAN", "'maybe'"),
    ("boolean_number", "BOOLEAN", 1),
    ("text_now", "TEXT", "now()"),
    ("text_number", "TEXT", 42),
    ("text_bool", "TEXT", False),
    ("varchar_too_long", "VARCHAR(3)", "'abcd'"),
    ("date_invalid", "DATE", "'2024-13-45'"),
    ("date_gen_random_uuid", "DATE", "gen_random_uuid()"),
    ("timestamptz_word", "TIMESTAMPTZ", "'yesterday'"),
    ("jsonb_broken", "JSONB", "'{bad'"),
    ("jsonb_nan", "JSONB", "'NaN'"),
    ("text_array_items", "TEXT[]", "'{a,b}'"),
    ("inet_invalid", "INET", "'999.1.1.1'"),
    ("cidr_host_bits", "CIDR", "'10.0.0.1/8'"),
    ("macaddr_invalid", "MACADDR", "'zz:zz:zz:zz:zz:zz'"),
    ("numeric_overflow", "NUMERIC(3,2)", 12.5),
    ("real_overflow", "REAL", "1e39"),
    ("cast_mismatch", "TEXT", "'1'::INTEGER"),
    ("bytea_text", "BYTEA", "'plain'"),
    ("interval_word", "INTERVAL", "'forever'"),
    ("time_invalid", "TIME", "'25:61'"),
]


def bad_default_cases() -> list[Case]:
    cases = []
    for label, type_text, default in BAD_DEFAULTS:
        body = with_value((*COLUMN, "type"), type_text)
        body["payload"]["tables"][0]["columns"][0]["default"] = default
        # orgs.title is unique: keep that valid for every type (it is, for all of them).
        cases.append(Case(f"default/{label}", body, "invalid_value"))
    return cases


# --- duplicates, collisions, references --------------------------------------------------------


def _add_table(body: dict[str, Any], table: dict[str, Any]) -> None:
    tables_of(body).append(table)


def _orgs(body: dict[str, Any]) -> dict[str, Any]:
    return tables_of(body)[0]


def _org_columns(body: dict[str, Any]) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = _orgs(body)["columns"]
    return columns


def _org_indexes(body: dict[str, Any]) -> list[dict[str, Any]]:
    indexes: list[dict[str, Any]] = _orgs(body)["indexes"]
    return indexes


def _ref(body: dict[str, Any]) -> dict[str, Any]:
    ref: dict[str, Any] = tables_of(body)[1]["columns"][0]["references"]
    return ref


def duplicate_and_reference_cases() -> list[Case]:
    plain = {"name": "extra", "columns": []}
    return [
        Case(
            "dup/table_exact",
            edited(lambda b: _add_table(b, {**plain, "name": "orgs"})),
            "duplicate_name",
        ),
        Case(
            "dup/table_case",
            edited(lambda b: _add_table(b, {**plain, "name": "ORGS"})),
            "duplicate_name",
        ),
        Case(
            "dup/table_snake_case",
            edited(
                lambda b: (
                    _add_table(b, {**plain, "name": "displayName"}),
                    _add_table(b, {**plain, "name": "display_name"}),
                )
            ),
            "duplicate_name",
        ),
        Case(
            "dup/table_separators",
            edited(
                lambda b: (
                    _add_table(b, {**plain, "name": "Display Name"}),
                    _add_table(b, {**plain, "name": "display-name"}),
                )
            ),
            "duplicate_name",
        ),
        Case(
            "dup/column_exact",
            edited(lambda b: _org_columns(b).append({"name": "code", "type": "TEXT"})),
            "duplicate_name",
        ),
        Case(
            "dup/column_snake_case",
            edited(
                lambda b: _org_columns(b).extend(
                    [
                        {"name": "displayName", "type": "TEXT"},
                        {"name": "display_name", "type": "TEXT"},
                    ]
                )
            ),
            "duplicate_name",
        ),
        Case(
            "dup/column_vs_default_column_twice",
            edited(
                lambda b: _org_columns(b).extend(
                    [
                        {"name": "createdAt", "type": "TIMESTAMPTZ"},
                        {"name": "created_at", "type": "TIMESTAMPTZ"},
                    ]
                )
            ),
            "duplicate_name",
        ),
        Case(
            "dup/index_names_in_table",
            edited(
                lambda b: _org_indexes(b).append(
                    {"name": "idx_orgs_code_created", "columns": ["code"]}
                )
            ),
            "duplicate_name",
        ),
        Case(
            "dup/index_names_across_tables",
            edited(
                lambda b: tables_of(b)[1].update(
                    indexes=[{"name": "idxOrgsCodeCreated", "columns": ["birth_date"]}]
                )
            ),
            "duplicate_name",
        ),
        Case(
            "dup/index_named_like_a_table",
            edited(lambda b: _org_indexes(b).append({"name": "patients", "columns": ["code"]})),
            "duplicate_name",
        ),
        Case(
            "dup/index_named_like_the_primary_key",
            edited(lambda b: _org_indexes(b).append({"name": "orgs_pkey", "columns": ["code"]})),
            "duplicate_name",
        ),
        Case(
            "dup/table_named_like_a_unique_constraint",
            edited(lambda b: _add_table(b, {**plain, "name": "orgs_title_key"})),
            "duplicate_name",
        ),
        Case(
            "dup/index_column_twice",
            with_value((*INDEX, "columns"), ["code", "Code"]),
            "duplicate_name",
        ),
        Case(
            "reserved/ledger_table",
            edited(lambda b: _add_table(b, {**plain, "name": "schema_migrations"})),
            "reserved_name",
        ),
        Case(
            "reserved/tenant_id_not_uuid",
            edited(lambda b: _org_columns(b).append({"name": "tenant_id", "type": "TEXT"})),
            "invalid_value",
        ),
        Case(
            "index/unknown_column",
            with_value((*INDEX, "columns"), ["ghost"]),
            "unknown_reference",
        ),
        Case(
            "index/tenant_id_of_unscoped_table",
            edited(
                lambda b: (
                    _orgs(b).update(tenant_scoped=False),
                    _org_indexes(b).append({"columns": ["tenant_id"]}),
                )
            ),
            "unknown_reference",
        ),
        Case("index/no_columns", with_value((*INDEX, "columns"), []), "empty"),
        Case(
            "index/33_columns",
            with_value((*INDEX, "columns"), [f"c{i}" for i in range(33)]),
            "too_many",
        ),
        Case("tables/empty", with_value((*PAYLOAD, "tables"), []), "empty"),
        Case(
            "ref/dropped_table",
            edited(
                lambda b: (
                    _ref(b).update(table="ghosts"),
                    payload_of(b).update(drop_tables=["Ghosts"]),
                )
            ),
            "conflicting_value",
        ),
        Case(
            "ref/cycle_to_dropped_table",
            edited(
                lambda b: (
                    payload_of(b).update(drop_tables=["ghosts"]),
                    _org_columns(b).append(
                        {"name": "parent_id", "type": "UUID", "references": {"table": "patients"}}
                    ),
                    tables_of(b)[1]["columns"].append(
                        {"name": "ghost_id", "type": "UUID", "references": {"table": "ghosts"}}
                    ),
                    _add_table(
                        b,
                        {
                            "name": "ghost_links",
                            "columns": [
                                {"name": "a_id", "type": "UUID", "references": {"table": "ghosts"}},
                            ],
                        },
                    ),
                )
            ),
            "conflicting_value",
        ),
        Case(
            "ref/self_missing_column",
            edited(
                lambda b: _org_columns(b).append(
                    {
                        "name": "parent",
                        "type": "UUID",
                        "references": {"table": "orgs", "column": "uid"},
                    }
                )
            ),
            "unknown_reference",
        ),
        Case(
            "ref/type_mismatch",
            with_value((*REF_COLUMN, "type"), "TEXT"),
            "invalid_value",
        ),
        Case(
            "ref/type_mismatch_bigint",
            with_value((*REF_COLUMN, "type"), "BIGINT"),
            "invalid_value",
        ),
        Case(
            "ref/not_unique_target",
            edited(lambda b: _ref(b).update(column="code")),
            "invalid_value",
        ),
        Case(
            "ref/set_null_on_not_null",
            edited(
                lambda b: (
                    _ref(b).update(on_delete="set null"),
                    tables_of(b)[1]["columns"][0].update(not_null=True),
                )
            ),
            "invalid_value",
        ),
        Case(
            "ref/to_unnamed_table",
            edited(lambda b: _orgs(b).update(name="__")),
            "invalid_name",
        ),
    ]


# --- names to drop ------------------------------------------------------------------------------

DROP_LISTS: list[tuple[str, Path]] = [
    ("drop_tables", (*PAYLOAD, "drop_tables")),
    ("drop_columns", (*TABLE, "drop_columns")),
    ("drop_indexes", (*TABLE, "drop_indexes")),
]
# Entries that no list takes: (label, entry, code).
BAD_DROP_ENTRIES: list[tuple[str, object, str]] = [
    ("null", None, "invalid_type"),
    ("int", 7, "invalid_type"),
    ("array", ["orgs"], "invalid_type"),
    ("object", {"name": "orgs"}, "invalid_type"),
    ("sql_leading_digit", "1; DROP SCHEMA public CASCADE; --", "invalid_name"),
    ("sql_punctuation", "'); --", "invalid_name"),
    ("cjk", BAD_NAMES["cjk"], "invalid_name"),
    ("rtl_override", BAD_NAMES["rtl_override"], "invalid_name"),
    ("bytes_64", BAD_NAMES["bytes_64"], "invalid_name"),
    ("empty", "", "invalid_name"),
]
DROP_LIMITS = {"drop_tables": 1000, "drop_columns": 1600, "drop_indexes": 100}


def drop_cases() -> list[Case]:
    cases = []
    for key, path in DROP_LISTS:
        for label, entry, code in BAD_DROP_ENTRIES:
            cases.append(Case(f"drop/{key}/{label}", with_value(path, ["old", entry]), code))
        cases.append(
            Case(f"drop/{key}/twice", with_value(path, ["oldName", "old_name"]), "duplicate_name")
        )
        too_many = [f"n{i}" for i in range(DROP_LIMITS[key] + 1)]
        cases.append(Case(f"drop/{key}/too_many", with_value(path, too_many), "too_many"))
    conflicts: list[tuple[str, Path, list[str]]] = [
        ("drop_tables/listed_table", (*PAYLOAD, "drop_tables"), ["Patients"]),
        ("drop_columns/defined_column", (*TABLE, "drop_columns"), ["title"]),
        ("drop_columns/automatic_column", (*TABLE, "drop_columns"), ["tenantId"]),
        ("drop_indexes/named_index", (*TABLE, "drop_indexes"), ["idx_orgs_code_created"]),
        ("drop_indexes/automatic_index", (*TABLE, "drop_indexes"), ["idx_orgs_created_at"]),
        ("drop_indexes/primary_key", (*TABLE, "drop_indexes"), ["orgs_pkey"]),
        ("drop_indexes/unique_constraint", (*TABLE, "drop_indexes"), ["orgs_title_key"]),
        ("drop_indexes/other_table", (*TABLE, "drop_indexes"), ["idx_patients_created_at"]),
    ]
    cases += [
        Case(f"drop/{label}", with_value(path, value), "conflicting_value")
        for label, path, value in conflicts
    ]
    cases.append(
        Case(
            "drop/drop_indexes/two_tables",
            edited(
                lambda b: (
                    _orgs(b).update(drop_indexes=["idx_old"]),
                    tables_of(b)[1].update(drop_indexes=["idx_old"]),
                )
            ),
            "duplicate_name",
        )
    )
    return cases


# --- unknown keys at every level ---------------------------------------------------------------

UNKNOWN_KEY_SITES: list[tuple[str, Path, str]] = [
    ("top", (), "extra"),
    ("top_case", (), "Payload"),
    ("subject", ("subject",), "name"),
    ("context", ("context",), "role"),
    ("payload", PAYLOAD, "schema"),
    ("payload_trailing_space", PAYLOAD, "tables "),
    ("payload_sql", PAYLOAD, "'; DROP TABLE orgs; --"),
    ("payload_empty_key", PAYLOAD, ""),
    ("payload_unicode_key", PAYLOAD, "tablés"),
    ("table", TABLE, "primary_key"),
    ("table_schema", TABLE, "schema"),
    ("column", COLUMN, "nullable"),
    ("column_typo", COLUMN, "not_nul"),
    ("column_check", COLUMN, "check"),
    ("references", REFERENCES, "on_update"),
    ("index", INDEX, "where"),
    ("index_method", INDEX, "using"),
    ("payload_10k_key", PAYLOAD, "k" * 10_000),
    ("table_emoji_key", TABLE, "\U0001f4a3"),
    ("column_nul_key", COLUMN, "not_null\x00"),
]


def unknown_key_cases() -> list[Case]:
    cases = []
    for label, path, key in UNKNOWN_KEY_SITES:
        body = valid_envelope()
        node: Any = body
        for step in path:
            node = node[step]
        node[key] = "1; DROP TABLE orgs"
        cases.append(Case(f"unknown_key/{label}", body, "unknown_field"))
    return cases


# --- huge arrays, too large bodies, nested garbage ---------------------------------------------


def _nested_list(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _nested_object(depth: int) -> object:
    value: object = {}
    for _ in range(depth - 1):
        value = {"name": value}
    return value


def size_and_nesting_cases() -> list[Case]:
    def many_tables(count: int) -> dict[str, Any]:
        return with_value(
            (*PAYLOAD, "tables"), [{"name": f"t{i}", "columns": []} for i in range(count)]
        )

    def many_columns(count: int) -> dict[str, Any]:
        columns = [{"name": f"c{i}", "type": "TEXT"} for i in range(count)]
        return with_value((*TABLE, "columns"), columns)

    def many_indexes(count: int) -> dict[str, Any]:
        return with_value((*TABLE, "indexes"), [{"columns": ["code"]} for _ in range(count)])

    return [
        Case("huge/5000_tables", many_tables(5000), "too_many"),
        Case("huge/1001_tables", many_tables(1001), "too_many"),
        Case("huge/2000_columns", many_columns(2000), "too_many"),
        Case("huge/1600_columns_with_defaults", many_columns(1596), "too_many"),
        Case("huge/200_indexes", many_indexes(200), "too_many"),
        Case(
            "huge/4000_digit_default",
            with_value((*COLUMN, "default"), int("9" * 4000)),
            "invalid_value",
        ),
        Case(
            "huge/4000_digit_numeric_default",
            edited(
                lambda b: _org_columns(b).append(
                    {"name": "amount", "type": "NUMERIC", "default": -int("9" * 4000)}
                )
            ),
            "invalid_value",
        ),
        Case("huge/101_indexes", many_indexes(101), "too_many"),
        Case("huge/100k_nulls_as_tables", with_value((*PAYLOAD, "tables"), [None] * 100_000)),
        Case(
            "huge/unknown_key_with_100k_items",
            edited(lambda b: b.update(extra=list(range(100_000)))),
            "unknown_field",
        ),
        Case(
            "huge/body_over_1mib",
            with_value((*PAYLOAD, "description"), "x" * (1024 * 1024 + 10)),
            "too_large",
        ),
        Case(
            "huge/body_over_1mib_in_tables",
            many_tables(40_000),
            "too_large",
        ),
        Case("nested/table_list_50", with_value(TABLE, _nested_list(50)), "invalid_type"),
        Case("nested/table_list_500", with_value(TABLE, _nested_list(500)), "invalid_type"),
        Case("nested/name_object_200", with_value((*TABLE, "name"), _nested_object(200))),
        Case("nested/default_object_300", with_value((*COLUMN, "default"), _nested_object(300))),
        Case(
            "nested/references_chain",
            with_value(
                REFERENCES,
                {"table": {"table": {"table": "orgs"}}, "column": [["id"]], "on_delete": {}},
            ),
            "invalid_type",
        ),
        Case(
            "nested/garbage_tables",
            with_value(
                (*PAYLOAD, "tables"),
                [[{"x": [None, {"y": []}]}], "orgs", 1, True, None, {"": {"": [{}]}}],
            ),
            "invalid_type",
        ),
        Case(
            "nested/garbage_columns",
            with_value(
                (*TABLE, "columns"),
                [{"name": ["title"], "type": {"TEXT": True}}, [[]], "title TEXT", 0.5],
            ),
            "invalid_type",
        ),
        Case("nested/payload_is_envelope", with_value(PAYLOAD, valid_envelope()), "unknown_field"),
        Case(
            "nested/everything_wrong",
            {
                "meta": [],
                "subject": "x",
                "context": 1,
                "payload": {"schema_version": {}, "description": [], "tables": [1, [], "x"]},
                "extra": None,
            },
            "invalid_type",
        ),
        Case(
            "nested/deep_array_in_unknown_key",
            edited(lambda b: b.update(extra=_nested_list(400))),
            "unknown_field",
        ),
    ]


# --- bodies that are not a usable JSON document ------------------------------------------------


def raw_body_cases() -> list[Case]:
    valid = json.dumps(valid_envelope()).encode()
    return [
        Case("raw/empty", b"", "invalid_json"),
        Case("raw/whitespace", b" \n\t ", "invalid_json"),
        Case("raw/not_json", b"{not json", "invalid_json"),
        Case("raw/truncated", valid[: len(valid) // 2], "invalid_json"),
        Case("raw/trailing_garbage", valid + b" x", "invalid_json"),
        Case("raw/two_documents", valid + valid, "invalid_json"),
        Case("raw/trailing_comma", b'{"payload": {},}', "invalid_json"),
        Case("raw/single_quotes", b"{'payload': {}}", "invalid_json"),
        Case("raw/comment", b'// hi\n{"payload": {}}', "invalid_json"),
        Case("raw/unquoted_key", b"{payload: {}}", "invalid_json"),
        Case("raw/bare_word", b"DROP TABLE orgs;", "invalid_json"),
        Case("raw/sql_with_json", b'{"payload": {}}; DROP TABLE orgs; --', "invalid_json"),
        Case("raw/invalid_utf8", b"\xff\xfe\x00", "invalid_json"),
        Case("raw/invalid_utf8_in_string", valid.replace(b"corpus", b"corp\xffus"), "invalid_json"),
        Case("raw/control_char_in_string", valid.replace(b"corpus", b"corp\nus"), "invalid_json"),
        Case("raw/bad_escape", valid.replace(b"corpus", b"corp\\qus"), "invalid_json"),
        Case("raw/deep_arrays", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        Case("raw/deep_objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "invalid_json"),
        Case("raw/unclosed_deep", b"[" * 5_000, "invalid_json"),
        # Around the parser's recursion limit: refused as invalid JSON, or parsed and then
        # blocked (the garbage is in a table), never a crash further on.
        *(
            Case(
                f"raw/nested_table_depth_{depth}",
                raw_with(TABLE, "__X__").replace(b'"__X__"', b"[" * depth + b"]" * depth),
            )
            for depth in (200, *range(600, 1001, 5), 1100, 5000)
        ),
        *(
            Case(
                f"raw/nested_meta_extra_depth_{depth}",
                valid.replace(
                    b'"meta": {', b'"meta": {"x": ' + b"[" * depth + b"]" * depth + b", "
                ).replace(b'"dry_run": false', b'"dry_run": 0'),
            )
            for depth in range(800, 1001, 10)
        ),
        Case("raw/nan", valid.replace(b'"dry_run": false', b'"dry_run": NaN'), "invalid_json"),
        Case(
            "raw/infinity_default",
            raw_with((*COLUMN, "default"), "__X__").replace(b'"__X__"', b"Infinity"),
            "invalid_json",
        ),
        Case(
            "raw/minus_infinity",
            valid.replace(b'"force_apply": false', b'"force_apply": -Infinity'),
            "invalid_json",
        ),
        Case(
            "raw/huge_integer_digits",
            valid.replace(b'"dry_run": false', b'"dry_run": ' + b"9" * 5000),
            "invalid_json",
        ),
        # 1e999 is valid JSON that Python reads as an infinite float (no NaN/Infinity literal).
        Case(
            "raw/overflowing_float_default",
            raw_with((*COLUMN, "default"), "__X__").replace(b'"__X__"', b"-1e999"),
            "not_allowed",
        ),
        Case(
            "raw/overflowing_float_schema_version",
            raw_with((*PAYLOAD, "schema_version"), "__X__").replace(b'"__X__"', b"1e999"),
            "invalid_type",
        ),
        Case(
            "raw/overflowing_float_in_meta_extra",
            valid.replace(b'"meta": {', b'"meta": {"retry_after": 1e999, ').replace(
                b'"dry_run": false', b'"dry_run": 0'
            ),
            "invalid_type",
        ),
        Case("raw/dup_key_top", b'{"payload": {}, "payload": {}}', "invalid_json"),
        Case(
            "raw/dup_key_table_name",
            valid.replace(b'"name": "orgs"', b'"name": "orgs", "name": "x; DROP TABLE orgs"'),
            "invalid_json",
        ),
        Case(
            "raw/dup_key_column_type",
            valid.replace(b'"type": "TEXT"', b'"type": "TEXT", "type": "TEXT; DROP TABLE orgs"'),
            "invalid_json",
        ),
        Case(
            "raw/dup_key_meta",
            valid.replace(
                b'"tenant_id": "t_001"', b'"tenant_id": "t_001", "tenant_id": "t_002"', 1
            ),
            "invalid_json",
        ),
        Case("raw/json_null", b"null", "invalid_type"),
        Case("raw/json_string", b'"payload"', "invalid_type"),
        Case("raw/json_empty_object", b"{}", "required"),
        Case(
            "raw/lone_high_surrogate_name",
            raw_with((*TABLE, "name"), "\\ud800"),
            "invalid_name",
        ),
        Case(
            "raw/lone_low_surrogate_column",
            raw_with((*COLUMN, "name"), "x\\udfffy"),
            "invalid_name",
        ),
        Case(
            "raw/reversed_surrogates_description",
            raw_with((*PAYLOAD, "description"), "\\udc00\\ud800"),
            "invalid_value",
        ),
        Case(
            "raw/nul_escape_description",
            raw_with((*PAYLOAD, "description"), "a\\u0000b"),
            "invalid_value",
        ),
        Case(
            "raw/nul_escape_type",
            raw_with((*COLUMN, "type"), "TEXT\\u0000"),
            "not_allowed",
        ),
        Case(
            "raw/nul_escape_default",
            raw_with((*COLUMN, "default"), "'\\u0000'"),
            "not_allowed",
        ),
        Case(
            "raw/nul_escape_schema_version",
            raw_with((*PAYLOAD, "schema_version"), "001\\u0000"),
            "invalid_value",
        ),
    ]


def build_corpus() -> list[Case]:
    return [
        *wrong_type_cases(),
        *sql_fragment_cases(),
        *name_cases(),
        *bad_string_cases(),
        *bad_default_cases(),
        *duplicate_and_reference_cases(),
        *drop_cases(),
        *unknown_key_cases(),
        *size_and_nesting_cases(),
        *raw_body_cases(),
    ]


# --- the catalog snapshot ----------------------------------------------------------------------

_USER_NAMESPACE = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
    "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
)
CATALOG_QUERIES: dict[str, str] = {
    "namespace": f"""
        SELECT n.oid, n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text
        FROM pg_namespace n WHERE {_USER_NAMESPACE} ORDER BY n.nspname""",
    "class": f"""
        SELECT n.nspname, c.relname, c.oid, c.relkind, c.relpersistence, c.relrowsecurity,
               c.relforcerowsecurity, c.relispartition, c.relnatts, c.relchecks, c.reloptions::text,
               c.relacl::text, pg_get_userbyid(c.relowner), c.reltablespace, c.relreplident
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACE} ORDER BY n.nspname, c.relname""",
    "attribute": f"""
        SELECT n.nspname, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.atthasdef, a.attidentity, a.attgenerated, a.attisdropped,
               a.attcollation, a.attacl::text, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND {_USER_NAMESPACE}
        ORDER BY n.nspname, c.relname, a.attnum""",
    "index": f"""
        SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid), i.indisunique,
               i.indisprimary, i.indisvalid, i.indisready, i.indislive
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACE} ORDER BY n.nspname, c.relname""",
    "constraint": f"""
        SELECT n.nspname, coalesce(c.relname, ''), k.conname, k.contype, k.convalidated,
               pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "policy": f"""
        SELECT n.nspname, c.relname, p.polname, p.polcmd, p.polpermissive, p.polroles::text,
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
        FROM pg_policy p
        JOIN pg_class c ON c.oid = p.polrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "trigger": f"""
        SELECT n.nspname, c.relname, t.tgname, t.tgenabled, pg_get_triggerdef(t.oid)
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "proc": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), p.prokind, p.provolatile, p.prosecdef,
               p.proconfig::text, p.prosrc, p.proacl::text
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "type": f"""
        SELECT n.nspname, t.typname, t.typtype, t.typrelid <> 0
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2""",
    "sequence": f"""
        SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
               s.seqmax, s.seqmin, s.seqcache, s.seqcycle
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2""",
    "view": f"""
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_USER_NAMESPACE} ORDER BY 1, 2""",
    "rule": f"""
        SELECT n.nspname, c.relname, r.rulename, r.ev_type, r.ev_enabled
        FROM pg_rewrite r
        JOIN pg_class c ON c.oid = r.ev_class
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "comment": f"""
        SELECT n.nspname, c.relname, d.objsubid, d.description
        FROM pg_description d
        JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "extension": """
        SELECT e.extname, e.extversion, n.nspname
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1""",
    "event_trigger": """
        SELECT evtname, evtevent, evtenabled, evttags::text FROM pg_event_trigger ORDER BY 1""",
}


def catalog_snapshot() -> str:
    """Return a deterministic text dump of the database's catalog outside the system schemas.

    Read through the test's own connection, which sees what other sessions (the builder's pooled
    target connections) committed as well as its own uncommitted changes.
    """
    lines: list[str] = []
    with connection.cursor() as cursor:
        for section, query in CATALOG_QUERIES.items():
            cursor.execute(query)
            lines.extend(f"{section}|{row!r}" for row in cursor.fetchall())
    return "\n".join(lines)


def snapshot_diff(before: str, after: str) -> str:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", n=0)
    return "\n".join(list(diff)[:60])


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture
def client() -> APIClient:
    user = User.objects.create_user("svc-corpus")  # a service account: not staff, no password
    user.user_permissions.add(Permission.objects.get(codename="submit_schema"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api


def send(client: APIClient, body: object) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json")


def problems_of(case: Case, response: Any) -> list[str]:
    """Return what is wrong with the answer to one case (empty if it is right)."""
    if response.status_code != 400:
        return [f"HTTP {response.status_code}: {response.content[:600]!r}"]
    try:
        data = response.json()
    except ValueError:
        return [f"not JSON: {response.content[:300]!r}"]
    if not isinstance(data, dict) or set(data) != {"meta_out", "result", "audit"}:
        return [f"not the output envelope: {str(data)[:300]}"]
    problems = []
    result = data["result"]
    if result.get("status") != "blocked":
        problems.append(f"result.status is {result.get('status')!r}")
    if data["meta_out"].get("success") is not False:
        problems.append("meta_out.success is not false")
    if data["meta_out"].get("workflow_name") != "WF106":
        problems.append("meta_out.workflow_name is not WF106")
    if data["audit"].get("data_written") != []:
        problems.append(f"audit.data_written is {data['audit'].get('data_written')!r}")
    errors = result.get("validation_errors")
    if not isinstance(errors, list) or not errors:
        return [*problems, f"validation_errors is {errors!r}"]
    for error in errors:
        shape_ok = isinstance(error, dict) and set(error) == {"path", "code", "message"}
        if not shape_ok or not all(isinstance(v, str) for v in error.values()):
            problems.append(f"malformed validation error {error!r}")
            break
    else:
        codes = {e["code"] for e in errors}
        expected = http_codes(case)
        if expected and not expected & codes:
            problems.append(f"expected a code in {sorted(expected)}, got {sorted(codes)}")
    return problems


def unstorable_json(body: object) -> bool:
    """Say whether a case holds what the request reader refuses before validation.

    That is a NUL or a lone surrogate in a string, a number that overflows to infinity
    (`1e999`), or nesting too deep (`builder.request.body.find_unusable`).
    """
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return False
    return find_unusable(body) is not None


def http_codes(case: Case) -> set[str]:
    """Return the codes that may answer a case over HTTP.

    The webhook stores every request in a jsonb column, so its JSON reader may refuse what
    that column cannot hold (see `unstorable_json`) as `invalid_json` before the builder sees
    it; the builder's own code for the field is accepted too.
    """
    if case.code is None:
        return set()
    return {case.code, "invalid_json"} if unstorable_json(case.body) else {case.code}


def test_the_valid_envelope_behind_the_corpus_is_valid() -> None:
    """Every case breaks a valid request: the base request itself must pass validation."""
    assert isinstance(prepare(valid_envelope()), Prepared)
    assert isinstance(prepare(with_value((*PAYLOAD, "dry_run"), True)), Prepared)


def test_the_corpus_is_big_and_its_ids_are_unique() -> None:
    corpus = build_corpus()
    ids = [case.id for case in corpus]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, duplicates
    assert len(corpus) >= 100, len(corpus)
    # A raw edit whose pattern was not found would send the valid request unchanged.
    valid, valid_raw = valid_envelope(), json.dumps(valid_envelope()).encode()
    unchanged = [case.id for case in corpus if case.body in (valid, valid_raw)]
    assert not unchanged, unchanged


def test_every_object_case_is_rejected_by_the_builder_itself() -> None:
    """Cross-check without HTTP: each JSON case is refused by `prepare` (the builder service)."""
    accepted, wrong_code = [], []
    for case in build_corpus():
        body = case.body
        if case.code in ("too_large", "invalid_json"):
            continue
        if isinstance(body, bytes):
            try:
                body = json.loads(body)
            except (ValueError, RecursionError):
                continue  # the webhook answers invalid_json
        outcome = prepare(body)
        if not isinstance(outcome, Rejected):
            accepted.append(case.id)
            continue
        codes = {issue.code for issue in outcome.issues}
        if case.code is not None and not http_codes(case) & codes:
            wrong_code.append(f"{case.id}: expected {case.code!r}, got {sorted(codes)}")
    assert not accepted, f"the builder accepts: {accepted}"
    assert not wrong_code, "\n".join(wrong_code)


def test_malformed_corpus_is_blocked_and_leaves_the_catalog_unchanged(
    client: APIClient, target: str
) -> None:
    corpus = build_corpus()
    assert len(corpus) >= 100
    before = catalog_snapshot()
    assert "namespace|" in before and f"'{target}'" in before and "'public'" in before

    failures: list[str] = []
    server_errors: list[str] = []
    for case in corpus:
        try:
            # A savepoint per request, so that one broken request cannot poison the rest.
            with transaction.atomic():
                response = send(client, case.body)
        except Exception as exc:  # a crash is a finding too
            failures.append(f"{case.id}: raised {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if response.status_code >= 500:
            server_errors.append(case.id)
        failures.extend(f"{case.id}: {problem}" for problem in problems_of(case, response))

    after = catalog_snapshot()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s",
            [target],
        )
        relations_in_target = cursor.fetchone()[0]
        cursor.execute("SELECT to_regclass(%s)", [f'"{target}".schema_migrations'])
        ledger = cursor.fetchone()[0]

    report = []
    if server_errors:
        report.append(f"5xx answers ({len(server_errors)}): {server_errors}")
    if failures:
        report.append(f"{len(failures)} of {len(corpus)} cases failed:\n" + "\n".join(failures))
    if ledger is not None:
        report.append("a blocked request created the ledger table in the target schema")
    if relations_in_target:
        report.append(f"{relations_in_target} relations appeared in the target schema")
    if after != before:
        report.append("the catalog changed:\n" + snapshot_diff(before, after))
    assert not report, "\n".join(report)


def test_the_catalog_snapshot_sees_a_change(target: str, target_conn: Any) -> None:
    """Guard against a vacuous snapshot: a new table, column or policy changes it."""
    before = catalog_snapshot()
    table = sql.Identifier(target, "probe")
    target_conn.execute(sql.SQL("CREATE TABLE {} (id uuid)").format(table))
    with_table = catalog_snapshot()
    assert with_table != before
    target_conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
    with_rls = catalog_snapshot()
    assert with_rls != with_table
    target_conn.execute(sql.SQL("DROP TABLE {}").format(table))
    assert catalog_snapshot() == before


def test_a_reference_to_a_table_outside_the_request_is_planned() -> None:
    """A table that the request does not define may exist in the target: it is not refused."""
    body = with_value((*REFERENCES, "table"), "Ghosts")
    prepared = prepare(body)
    assert isinstance(prepared, Prepared), prepared
    assert '"public"."ghosts"' in prepared.migration.script


def test_sql_in_a_name_is_normalized_never_executed(client: APIClient, target: str) -> None:
    """A name made of SQL is not an error: it becomes a harmless snake_case identifier."""
    body = with_value((*TABLE, "name"), "orgs; DROP TABLE patients; --")
    payload_of(body)["dry_run"] = True
    tables_of(body)[1]["columns"][0]["references"]["table"] = "orgs; DROP TABLE patients; --"
    before = catalog_snapshot()
    response = send(client, body)
    assert response.status_code == 200, response.json()
    script = response.json()["result"]["primary_outputs"]["sql"]
    assert '"orgs_drop_table_patients"' in script
    assert "DROP TABLE patients" not in script
    assert catalog_snapshot() == before
