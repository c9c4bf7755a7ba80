"""The allow lists for column types and defaults (pure: no database)."""

from __future__ import annotations

from typing import Any

import pglast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.schema.sqltypes import (
    IncompatibleDefaultError,
    SqlType,
    normalize_default,
    normalize_type,
    parse_type,
)

# --- types -------------------------------------------------------------------------------------

ACCEPTED_TYPES = [
    ("SMALLINT", "SMALLINT"),
    ("integer", "INTEGER"),
    ("int", "INTEGER"),
    ("INT4", "INTEGER"),
    ("bigint", "BIGINT"),
    ("int8", "BIGINT"),
    ("real", "REAL"),
    ("float4", "REAL"),
    ("double precision", "DOUBLE PRECISION"),
    ("  Double \t  PRECISION ", "DOUBLE PRECISION"),
    ("float8", "DOUBLE PRECISION"),
    ("boolean", "BOOLEAN"),
    ("bool", "BOOLEAN"),
    ("text", "TEXT"),
    ("uuid", "UUID"),
    ("date", "DATE"),
    ("time", "TIME"),
    ("timestamp", "TIMESTAMP"),
    ("timestamptz", "TIMESTAMPTZ"),
    ("timestamp with time zone", "TIMESTAMPTZ"),
    ("TIMESTAMP\nWITH  TIME ZONE", "TIMESTAMPTZ"),
    ("interval", "INTERVAL"),
    ("json", "JSON"),
    ("jsonb", "JSONB"),
    ("bytea", "BYTEA"),
    ("inet", "INET"),
    ("cidr", "CIDR"),
    ("macaddr", "MACADDR"),
    ("numeric", "NUMERIC"),
    ("NUMERIC(12,2)", "NUMERIC(12,2)"),
    ("numeric ( 12 , 2 )", "NUMERIC(12,2)"),
    ("decimal(10, 0)", "NUMERIC(10,0)"),
    ("numeric(5)", "NUMERIC(5,0)"),
    ("numeric(1000,1000)", "NUMERIC(1000,1000)"),
    ("varchar(80)", "VARCHAR(80)"),
    ("character varying (80)", "VARCHAR(80)"),
    ("varchar(10485760)", "VARCHAR(10485760)"),
    ("char(2)", "CHAR(2)"),
    ("character(1)", "CHAR(1)"),
    ("varchar(080)", "VARCHAR(80)"),
    ("text[]", "TEXT[]"),
    ("text [ ]", "TEXT[]"),
    ("int[][]", "INTEGER[][]"),
    ("numeric(12,2)[]", "NUMERIC(12,2)[]"),
    ("double precision[]", "DOUBLE PRECISION[]"),
    ("timestamp with time zone[]", "TIMESTAMPTZ[]"),
]


@pytest.mark.parametrize(("raw", "canonical"), ACCEPTED_TYPES)
def test_allowed_types_are_canonicalized(raw: str, canonical: str) -> None:
    assert normalize_type(raw) == canonical
    assert normalize_type(canonical) == canonical


def test_parse_type_exposes_the_parts() -> None:
    assert parse_type("numeric(12, 2)[]") == SqlType("NUMERIC", (12, 2), 1)
    assert parse_type("numeric(12, 2)[]").element == SqlType("NUMERIC", (12, 2), 0)


INJECTION_TYPES = [
    "TEXT; DROP TABLE x",
    "TEXT -- comment",
    "TEXT /* */",
    'text collate "C"',
    "TEXT NOT NULL",
    "TEXT DEFAULT 'x'",
    "TEXT) ; DROP TABLE x; --",
    "pg_catalog.text",
    '"text"',
    "text[]; select 1",
    "numeric(12,2); drop table x",
    "numeric(12,2) check (true)",
    "varchar(80)) , evil int",
    "int references users",
    "int generated always as identity",
]
REJECTED_TYPES = [
    *INJECTION_TYPES,
    "",
    "   ",
    "SERIAL",
    "bigserial",
    "money",
    "xml",
    "tsvector",
    "regclass",
    "oid",
    "int2",
    "unknownword",
    "double",
    "precision",
    "timestamp without time zone",
    "time with time zone",
    "timestamp(3)",
    "varchar",
    "char",
    "character varying",
    "varchar()",
    "varchar(0)",
    "varchar(10485761)",
    "varchar(-1)",
    "varchar(1,2)",
    "varchar(1e3)",
    "numeric(0)",
    "numeric(1001)",
    "numeric(5,6)",
    "numeric(5,-1)",
    "numeric(1,2,3)",
    "numeric(",
    "numeric)",
    "numeric(12,)",
    "numeric(,2)",
    "text[][][]",
    "text[3]",
    "text[",
    "[]",
    "int 4",
    "\u0131nt",  # dotless i upper-cases to I
    "\uff34\uff25\uff38\uff34",  # full-width letters
    "text\u00a0",  # no-break space is not whitespace here
    "varchar(\uff18\uff10)",  # full-width digits
    "text" * 60,
    "varchar(1234567890123)",
]


@pytest.mark.parametrize("raw", REJECTED_TYPES, ids=lambda v: repr(v)[:40])
def test_types_outside_the_allow_list_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_type(raw)


def test_rejection_messages_are_helpful() -> None:
    with pytest.raises(ValueError, match=r"SERIAL.*not allowed.*allowed types"):
        normalize_type("serial")
    with pytest.raises(ValueError, match="needs a length"):
        normalize_type("varchar")
    with pytest.raises(ValueError, match="';'"):
        normalize_type("TEXT; DROP TABLE x")
    with pytest.raises(ValueError, match="scale"):
        normalize_type("numeric(5,6)")


def _column_ast(column_type: str, default: str | None = None) -> dict[str, Any]:
    """Parse `CREATE TABLE t (c <type> [DEFAULT <default>])` and return the column definition."""
    text = f"CREATE TABLE t (c {column_type}" + (f" DEFAULT {default})" if default else ")")
    statements = pglast.parse_sql(text)
    assert len(statements) == 1
    create: Any = statements[0].stmt
    elements = create.tableElts
    assert len(elements) == 1
    result: dict[str, Any] = elements[0]()
    return result


@given(st.text(max_size=40))
@settings(max_examples=300)
def test_any_text_is_rejected_or_becomes_a_parseable_fixed_point(raw: str) -> None:
    try:
        canonical = normalize_type(raw)
    except ValueError:
        return
    assert normalize_type(canonical) == canonical
    column = _column_ast(canonical)
    assert column["colname"] == "c"
    assert not column["constraints"]


@given(
    st.lists(
        st.sampled_from(
            ["int", "numeric", "double", "precision", "(", ")", ",", "12", "2", "[", "]", " "]
        ),
        max_size=10,
    )
)
def test_token_soup_is_rejected_or_parses(tokens: list[str]) -> None:
    try:
        canonical = normalize_type("".join(tokens))
    except ValueError:
        return
    _column_ast(canonical)


# --- defaults ----------------------------------------------------------------------------------

ACCEPTED_DEFAULTS: list[tuple[object, str, str | None]] = [
    (None, "TEXT", None),
    ("null", "INTEGER", None),
    ("  NULL ", "UUID", None),
    (True, "BOOLEAN", "true"),
    (False, "bool", "false"),
    ("TRUE", "BOOLEAN", "true"),
    ("False", "BOOLEAN", "false"),
    ("'yes'", "BOOLEAN", "true"),
    ("'off'::boolean", "BOOLEAN", "false"),
    (0, "NUMERIC(12,2)", "0"),
    (5, "INTEGER", "5"),
    (-1, "SMALLINT", "-1"),
    (32767, "SMALLINT", "32767"),
    (2**63 - 1, "BIGINT", "9223372036854775807"),
    (-(2**63), "BIGINT", "-9223372036854775808"),
    (5.0, "INTEGER", "5"),
    (-1.5, "NUMERIC", "-1.5"),
    (-1.5, "DOUBLE PRECISION", "-1.5"),
    (0.1, "REAL", "0.1"),
    (1e20, "DOUBLE PRECISION", "1E+20"),
    (-0.0, "REAL", "-0.0"),
    ("0", "NUMERIC(12,2)", "0"),
    ("-12.5", "NUMERIC", "-12.5"),
    ("0012.50", "NUMERIC(12,2)", "12.50"),
    (".5", "REAL", "0.5"),
    ("1e3", "INTEGER", "1000"),
    ("'42'", "BIGINT", "42"),
    ("'-0.25'::numeric(4,2)", "NUMERIC(4,2)", "-0.25"),
    ("99.994", "NUMERIC(4,2)", "99.994"),
    ("now()", "TIMESTAMPTZ", "now()"),
    ("NOW()", "TIMESTAMP", "now()"),
    ("now ( )", "DATE", "now()"),
    ("CURRENT_TIMESTAMP", "TIMESTAMPTZ", "current_timestamp"),
    ("current_date", "DATE", "current_date"),
    ("current_date", "TIMESTAMPTZ", "current_date"),
    ("current_time", "TIME", "current_time"),
    ("LocalTimestamp", "TIMESTAMP", "localtimestamp"),
    ("clock_timestamp()", "TIMESTAMPTZ", "clock_timestamp()"),
    ("gen_random_uuid()", "UUID", "gen_random_uuid()"),
    ("GEN_RANDOM_UUID()", "uuid", "gen_random_uuid()"),
    ("'staff'", "TEXT", "'staff'"),
    ("  'staff'  ", "TEXT", "'staff'"),
    ("''", "TEXT", "''"),
    ("'it''s'", "TEXT", "'it''s'"),
    ("'a\\b'", "TEXT", "E'a\\\\b'"),
    ("'line\nbreak'", "TEXT", "'line\nbreak'"),
    ("'ünïcødé ✓'", "TEXT", "'ünïcødé ✓'"),
    ("'; DROP TABLE x; --'", "TEXT", "'; DROP TABLE x; --'"),
    ("'x'::text", "TEXT", "'x'::TEXT"),
    ("'ab'", "VARCHAR(2)", "'ab'"),
    ("'ab'", "CHAR(2)", "'ab'"),
    ("'{}'::jsonb", "JSONB", "'{}'::JSONB"),
    ("'{}' :: JSONB", "jsonb", "'{}'::JSONB"),
    ("'{\"a\": [1, 2, null]}'", "JSON", "'{\"a\": [1, 2, null]}'"),
    ("'[]'", "JSONB", "'[]'"),
    ("'{}'", "TEXT[]", "'{}'"),
    ("'{}'::text[]", "TEXT[]", "'{}'::TEXT[]"),
    ("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "UUID", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("'a0eebc999c0b4ef8bb6d6bb9bd380a11'", "UUID", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("'2024-02-29'", "DATE", "'2024-02-29'"),
    ("'2024-02-29'::date", "DATE", "'2024-02-29'::DATE"),
    ("'08:30'", "TIME", "'08:30:00'"),
    ("'2024-01-01T10:00:00Z'", "TIMESTAMPTZ", "'2024-01-01 10:00:00+00:00'"),
    ("'2024-01-01 10:00:00'", "TIMESTAMP", "'2024-01-01 10:00:00'"),
    ("'1 day 2 hours'", "INTERVAL", "'1 day 2 hours'"),
    ("'10.0.0.1'", "INET", "'10.0.0.1'"),
    ("'10.0.0.1/8'", "INET", "'10.0.0.1/8'"),
    ("'::1'", "INET", "'::1'"),
    ("'10.0.0.0/8'", "CIDR", "'10.0.0.0/8'"),
    ("'08-00-2B-01-02-03'", "MACADDR", "'08:00:2b:01:02:03'"),
    ("'\\xDEADbeef'", "BYTEA", "E'\\\\xdeadbeef'"),
]


@pytest.mark.parametrize(("raw", "column_type", "expected"), ACCEPTED_DEFAULTS)
def test_allowed_defaults_are_canonicalized(
    raw: object, column_type: str, expected: str | None
) -> None:
    assert normalize_default(raw, column_type) == expected


@pytest.mark.parametrize(("raw", "column_type", "expected"), ACCEPTED_DEFAULTS)
def test_allowed_defaults_parse_as_one_constant_expression(
    raw: object, column_type: str, expected: str | None
) -> None:
    rendered = normalize_default(raw, column_type)
    if rendered is None:
        return
    column = _column_ast(normalize_type(column_type), rendered)
    (constraint,) = column["constraints"]
    assert _node_kinds(constraint["raw_expr"]) <= SAFE_NODES
    assert _function_names(constraint["raw_expr"]) <= {"now", "clock_timestamp", "gen_random_uuid"}


def test_string_literals_keep_their_value() -> None:
    for value in ["it's", "a\\b", "\\'; drop table x; --", "é\n\t'", "$$ $x$"]:
        raw = "'" + value.replace("'", "''") + "'"
        rendered = normalize_default(raw, "TEXT")
        assert rendered is not None
        expr = _column_ast("TEXT", rendered)["constraints"][0]["raw_expr"]
        assert expr["val"]["sval"] == value


SAFE_NODES = {
    "A_Const",
    "Integer",
    "Float",
    "String",
    "Boolean",
    "TypeCast",
    "TypeName",
    "FuncCall",
    "SQLValueFunction",
}


def _node_kinds(tree: object) -> set[str]:
    """Return the names of every AST node in a pglast dict tree."""
    if isinstance(tree, dict):
        kinds = {tree["@"]} if "@" in tree else set()
        for value in tree.values():
            kinds |= _node_kinds(value)
        return kinds
    if isinstance(tree, list | tuple):
        return set().union(*(_node_kinds(item) for item in tree)) if tree else set()
    return set()


def _function_names(tree: object) -> set[str]:
    """Return the names of every function called in a pglast dict tree."""
    if isinstance(tree, dict):
        found = set()
        if tree.get("@") == "FuncCall":
            found.add(".".join(part["sval"] for part in tree["funcname"]))
        for value in tree.values():
            found |= _function_names(value)
        return found
    if isinstance(tree, list | tuple):
        return set().union(*(_function_names(item) for item in tree)) if tree else set()
    return set()


INJECTION_DEFAULTS = [
    "now(); drop table x",
    "now() ; drop table x",
    "pg_sleep(1)",
    "pg_catalog.now()",
    "(select 1)",
    "(SELECT password FROM users LIMIT 1)",
    "'a' || 'b'",
    "'a'; drop table x; --",
    "'a' -- comment",
    "'a'/*x*/",
    "'x'::text; drop table x",
    "'x'::regclass",
    "'x'::pg_catalog.text",
    "'x')::text",
    "1; drop table x",
    "1 + 1",
    "-(1)",
    "+1",
    "0x10",
    "1_000",
    "E'\\x41'",
    "U&'\\0041'",
    "$$text$$",
    "$tag$x$tag$",
    "B'101'",
    "X'1F'",
    "nextval('seq')",
    "current_user",
    "session_user",
    "version()",
    "now",
    "now(1)",
    "gen_random_uuid(",
    "'unterminated",
    "'a''",
    "'a'''b'",
    "lo_import('/etc/passwd')",
    "NaN",
    "Infinity",
    "'x' COLLATE \"C\"",
    "staff",
    "",
    "   ",
    "'a\x00b'",
    "'\ud800'",
    "'x' " * 3000,
]


def _short_id(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize("raw", INJECTION_DEFAULTS, ids=_short_id)
def test_defaults_outside_the_allow_list_are_not_allowed(raw: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        normalize_default(raw, "TEXT")
    assert not isinstance(excinfo.value, IncompatibleDefaultError)


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), float("-inf"), [], {}, b"x", object()])
def test_non_scalar_or_non_finite_defaults_are_not_allowed(raw: object) -> None:
    with pytest.raises(ValueError) as excinfo:
        normalize_default(raw, "DOUBLE PRECISION")
    assert not isinstance(excinfo.value, IncompatibleDefaultError)


def test_a_bare_word_default_suggests_quoting() -> None:
    with pytest.raises(ValueError, match="quote it: 'staff'"):
        normalize_default("staff", "TEXT")


INCOMPATIBLE_DEFAULTS: list[tuple[object, str]] = [
    (True, "INTEGER"),
    (True, "TEXT"),
    ("true", "TEXT"),
    (True, "BOOLEAN[]"),
    (5, "TEXT"),
    ("5", "TEXT"),
    (5, "BOOLEAN"),
    (5, "INTEGER[]"),
    (1.5, "INTEGER"),
    ("1.5", "BIGINT"),
    (32768, "SMALLINT"),
    (2**63, "BIGINT"),
    ("1e99999999999", "NUMERIC"),
    (1e39, "REAL"),
    ("1e-50", "REAL"),
    ("1e309", "DOUBLE PRECISION"),
    (1000, "NUMERIC(5,2)"),
    ("999.995", "NUMERIC(5,2)"),
    ("'abc'", "INTEGER"),
    ("'abc'", "UUID"),
    ("'a0eebc99-9c0b-4ef8-bb6d'", "UUID"),
    ("'2024-02-30'", "DATE"),
    ("'today'", "DATE"),
    ("'20240101'", "DATE"),
    ("'now'", "TIMESTAMPTZ"),
    ("'2024-01-01 10:00+02:00'", "TIMESTAMP"),
    ("'25:00'", "TIME"),
    ("'{x'", "JSONB"),
    ("'NaN'", "JSON"),
    ('\'{"a": "\\u0000"}\'', "JSONB"),
    ("'" + "[" * 5000 + "'", "JSON"),
    ("'abc'", "VARCHAR(2)"),
    ("'maybe'", "BOOLEAN"),
    ("'{a,b}'", "TEXT[]"),
    ("'x'::json", "JSONB"),
    ("'1'::integer", "BIGINT"),
    ("'x'::varchar(3)", "VARCHAR(4)"),
    ("'10.0.0.1/8'", "CIDR"),
    ("'fe80::1%eth0'", "INET"),
    ("'999.1.1.1'", "INET"),
    ("'08:00:2b'", "MACADDR"),
    ("'hello'", "BYTEA"),
    ("';drop'", "INTERVAL"),
    ("now()", "TEXT"),
    ("now()", "INTERVAL"),
    ("now()", "TIMESTAMPTZ[]"),
    ("current_time", "TIMESTAMP"),
    ("current_date", "TIME"),
    ("gen_random_uuid()", "TEXT"),
    ("clock_timestamp()", "UUID"),
]


@pytest.mark.parametrize(("raw", "column_type"), INCOMPATIBLE_DEFAULTS)
def test_defaults_that_do_not_fit_the_column_type_are_incompatible(
    raw: object, column_type: str
) -> None:
    with pytest.raises(IncompatibleDefaultError):
        normalize_default(raw, column_type)


def test_huge_integers_are_rejected_without_converting_them_to_text() -> None:
    with pytest.raises(IncompatibleDefaultError):
        normalize_default(10**5000, "NUMERIC")


def test_the_column_type_itself_must_be_allowed() -> None:
    with pytest.raises(ValueError):
        normalize_default("0", "SERIAL")


SCALAR_TYPES = ["TEXT", "INTEGER", "NUMERIC(6,2)", "BOOLEAN", "UUID", "DATE", "JSONB", "TEXT[]"]


@given(
    raw=st.one_of(
        st.text(max_size=30),
        st.builds(lambda s: "'" + s.replace("'", "''") + "'", st.text(max_size=30)),
        st.builds(lambda s: "'" + s + "'::jsonb", st.text(max_size=10)),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
    ),
    column_type=st.sampled_from(SCALAR_TYPES),
)
@settings(max_examples=400)
def test_any_default_is_rejected_or_renders_a_safe_constant(raw: object, column_type: str) -> None:
    try:
        rendered = normalize_default(raw, column_type)
    except ValueError:
        return
    if rendered is None:
        return
    (constraint,) = _column_ast(column_type, rendered)["constraints"]
    assert _node_kinds(constraint["raw_expr"]) <= SAFE_NODES
    assert _function_names(constraint["raw_expr"]) <= {"now", "clock_timestamp", "gen_random_uuid"}
