"""Pure tests of the DDL generator and the parser check: exact SQL, no database."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pglast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.stream import RawStream

from builder.errors import UnsafeSQLError
from builder.schema import names
from builder.schema.spec import ON_DELETE_ACTIONS, Column, ForeignKey, Index, Schema, Table
from builder.sql.check import check_statements
from builder.sql.render import render_migration

PATIENTS = Table(
    name="patients",
    columns=(
        Column("id", "UUID", primary_key=True, default="gen_random_uuid()"),
        Column("tenant_id", "UUID", not_null=True),
        Column("created_at", "TIMESTAMPTZ", not_null=True, default="now()"),
        Column("updated_at", "TIMESTAMPTZ", not_null=True, default="now()"),
        Column("deleted_at", "TIMESTAMPTZ"),
        Column("first_name", "TEXT", not_null=True),
        Column("last_name", "TEXT", not_null=True),
        Column("phone", "TEXT"),
    ),
    indexes=(
        Index("idx_patients_tenant_id", ("tenant_id",)),
        Index("idx_patients_created_at", ("created_at",)),
        Index("idx_patients_phone", ("phone",)),
    ),
)

PATIENTS_SCRIPT = """\
-- WF106 schema v1: Patients registry

CREATE OR REPLACE FUNCTION "public"."wf106_set_updated_at"() RETURNS trigger
    LANGUAGE plpgsql AS $wf106$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$wf106$;

CREATE TABLE IF NOT EXISTS "public"."patients" (
    "id" UUID DEFAULT gen_random_uuid(),
    "tenant_id" UUID NOT NULL,
    "created_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "updated_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "deleted_at" TIMESTAMPTZ,
    "first_name" TEXT NOT NULL,
    "last_name" TEXT NOT NULL,
    "phone" TEXT,
    CONSTRAINT "patients_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "patients_tenant_id_id_key" UNIQUE ("tenant_id", "id")
);

CREATE INDEX IF NOT EXISTS "idx_patients_tenant_id" ON "public"."patients" ("tenant_id");

CREATE INDEX IF NOT EXISTS "idx_patients_created_at" ON "public"."patients" ("created_at");

CREATE INDEX IF NOT EXISTS "idx_patients_phone" ON "public"."patients" ("phone");

ALTER TABLE "public"."patients" ENABLE ROW LEVEL SECURITY;

ALTER TABLE "public"."patients" FORCE ROW LEVEL SECURITY;

DO $wf106$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_policies
        WHERE schemaname = 'public'
            AND tablename = 'patients'
            AND policyname = 'patients_tenant_isolation'
    ) THEN
        CREATE POLICY "patients_tenant_isolation" ON "public"."patients"
            AS PERMISSIVE FOR ALL
            USING ("tenant_id" = (SELECT nullif(current_setting('app.current_tenant_id', true), '')::uuid))
            WITH CHECK ("tenant_id" = (SELECT nullif(current_setting('app.current_tenant_id', true), '')::uuid));
    END IF;
END
$wf106$;

CREATE OR REPLACE TRIGGER "patients_set_updated_at" BEFORE UPDATE ON "public"."patients"
    FOR EACH ROW EXECUTE FUNCTION "public"."wf106_set_updated_at"();
"""  # noqa: E501

ID = Column("id", "UUID", primary_key=True, default="gen_random_uuid()")
TENANT_ID = Column("tenant_id", "UUID", not_null=True)


def fk(table: str, on_delete: str = "NO ACTION") -> ForeignKey:
    return ForeignKey(table=table, on_delete=on_delete)


def table(name: str, *columns: Column, tenant: bool = True, **kwargs: Any) -> Table:
    base = (ID, TENANT_ID) if tenant else (ID,)
    return Table(name=name, columns=(*base, *columns), tenant_scoped=tenant, **kwargs)


def schema(*tables: Table, version: str = "1", description: str = "test") -> Schema:
    return Schema(version=version, description=description, tables=tables)


def create_table_position(statements: tuple[str, ...], name: str) -> int:
    prefix = f'CREATE TABLE IF NOT EXISTS "public"."{name}" ('
    return next(i for i, s in enumerate(statements) if s.startswith(prefix))


# --- the reference example -------------------------------------------------------------------


def test_patients_example_renders_exact_sql() -> None:
    migration = render_migration(schema(PATIENTS, description="Patients registry"))

    assert migration.script == PATIENTS_SCRIPT
    assert migration.script == (
        "-- WF106 schema v1: Patients registry\n\n"
        + "\n\n".join(f"{s};" for s in migration.statements)
        + "\n"
    )
    assert len(migration.statements) == 9


def test_patients_example_avoids_the_reference_mistakes() -> None:
    script = render_migration(schema(PATIENTS)).script

    assert "pgcrypto" not in script
    assert "IF NOT EXISTS patients_tenant_isolation" not in script
    assert "::text" not in script
    assert "BEGIN;" not in script and "COMMIT" not in script


def test_target_schema_is_quoted_everywhere() -> None:
    migration = render_migration(schema(PATIENTS), target_schema="Tenant Space")

    assert '"public"' not in migration.script
    assert 'CREATE TABLE IF NOT EXISTS "Tenant Space"."patients" (' in migration.statements[1]
    assert "WHERE schemaname = 'Tenant Space'" in migration.script
    assert 'EXECUTE FUNCTION "Tenant Space"."wf106_set_updated_at"()' in migration.script


@pytest.mark.parametrize("target_schema", ["", "s" * 64])
def test_invalid_target_schema_is_rejected(target_schema: str) -> None:
    with pytest.raises(ValueError, match="target schema"):
        render_migration(schema(PATIENTS), target_schema=target_schema)


# --- quoting ---------------------------------------------------------------------------------


def test_reserved_words_are_quoted() -> None:
    user = table("user", Column("email", "TEXT", not_null=True))
    order = table(
        "order",
        Column("user", "UUID", references=fk("user")),
        Column("select", "TEXT"),
        indexes=(Index("idx_order_user", ("user",)),),
    )
    migration = render_migration(schema(user, order))

    assert migration.statements[0].startswith('CREATE TABLE IF NOT EXISTS "public"."user" (')
    assert migration.statements[4] == (
        'CREATE TABLE IF NOT EXISTS "public"."order" (\n'
        '    "id" UUID DEFAULT gen_random_uuid(),\n'
        '    "tenant_id" UUID NOT NULL,\n'
        '    "user" UUID,\n'
        '    "select" TEXT,\n'
        '    CONSTRAINT "order_pkey" PRIMARY KEY ("id"),\n'
        '    CONSTRAINT "order_tenant_id_id_key" UNIQUE ("tenant_id", "id")\n'
        ")"
    )
    assert migration.statements[5] == (
        'CREATE INDEX IF NOT EXISTS "idx_order_user" ON "public"."order" ("user")'
    )
    assert migration.statements[-1] == (
        "DO $wf106$\n"
        "BEGIN\n"
        "    IF NOT EXISTS (\n"
        "        SELECT 1 FROM pg_catalog.pg_constraint\n"
        '        WHERE conrelid = \'"public"."order"\'::regclass\n'
        "            AND conname = 'order_user_fkey'\n"
        "    ) THEN\n"
        '        ALTER TABLE "public"."order" ADD CONSTRAINT "order_user_fkey"\n'
        '            FOREIGN KEY ("tenant_id", "user") '
        'REFERENCES "public"."user" ("tenant_id", "id") ON DELETE NO ACTION;\n'
        "    END IF;\n"
        "END\n"
        "$wf106$"
    )


def test_embedded_double_quotes_and_single_quotes_are_escaped() -> None:
    # The normalizer never produces such names; the generator must still quote them correctly.
    weird = table("it's", Column('we"ird', "TEXT", unique=True))
    migration = render_migration(schema(weird))

    create = migration.statements[0]
    assert '    "we""ird" TEXT,\n' in create
    # Unique per tenant: the table is tenant-scoped.
    assert 'CONSTRAINT "it\'s_we""ird_key" UNIQUE ("tenant_id", "we""ird")' in create
    assert "AND tablename = 'it''s'" in migration.statements[3]
    assert "AND policyname = 'it''s_tenant_isolation'" in migration.statements[3]


def test_dollar_tag_inside_a_name_gets_another_tag() -> None:
    sneaky = table("x$wf106$y")
    policy = render_migration(schema(sneaky)).statements[3]

    assert policy.startswith("DO $wf106_1$\n") and policy.endswith("\n$wf106_1$")
    assert "'x$wf106$y'" in policy


# --- table kinds -----------------------------------------------------------------------------


def test_non_tenant_table_has_no_rls_and_no_policy() -> None:
    countries = table("countries", Column("iso_code", "TEXT", not_null=True), tenant=False)
    migration = render_migration(schema(countries))

    assert migration.statements == (
        'CREATE TABLE IF NOT EXISTS "public"."countries" (\n'
        '    "id" UUID DEFAULT gen_random_uuid(),\n'
        '    "iso_code" TEXT NOT NULL,\n'
        '    CONSTRAINT "countries_pkey" PRIMARY KEY ("id")\n'
        ")",
    )
    assert "wf106_set_updated_at" not in migration.script


def test_tenant_scoped_table_without_tenant_column_is_a_bug() -> None:
    broken = Table(name="broken", columns=(ID,), tenant_scoped=True)

    with pytest.raises(ValueError, match="tenant_id"):
        render_migration(schema(broken))


def test_unique_column_becomes_a_named_constraint() -> None:
    users = table(
        "users",
        Column("email", "TEXT", not_null=True, unique=True),
        Column("login", "VARCHAR(80)", unique=True, default="''"),
        tenant=False,
    )
    create = render_migration(schema(users)).statements[0]

    assert create == (
        'CREATE TABLE IF NOT EXISTS "public"."users" (\n'
        '    "id" UUID DEFAULT gen_random_uuid(),\n'
        '    "email" TEXT NOT NULL,\n'
        "    \"login\" VARCHAR(80) DEFAULT '',\n"
        '    CONSTRAINT "users_pkey" PRIMARY KEY ("id"),\n'
        '    CONSTRAINT "users_email_key" UNIQUE ("email"),\n'
        '    CONSTRAINT "users_login_key" UNIQUE ("login")\n'
        ")"
    )


def test_unique_index_and_multi_column_index() -> None:
    events = table(
        "events",
        Column("kind", "TEXT"),
        Column("at", "TIMESTAMPTZ"),
        indexes=(Index("idx_events_kind_at", ("kind", "at"), unique=True),),
        tenant=False,
    )
    statements = render_migration(schema(events)).statements

    assert statements[1] == (
        'CREATE UNIQUE INDEX IF NOT EXISTS "idx_events_kind_at" ON "public"."events" ("kind", "at")'
    )


def test_composite_primary_key() -> None:
    link = Table(
        name="links",
        columns=(
            Column("a", "UUID", primary_key=True, not_null=True),
            Column("b", "UUID", primary_key=True),
        ),
        tenant_scoped=False,
    )
    create = render_migration(schema(link)).statements[0]

    assert '    "a" UUID,\n' in create
    assert 'CONSTRAINT "links_pkey" PRIMARY KEY ("a", "b")' in create


def test_unknown_on_delete_action_is_a_bug() -> None:
    bad = table("bad", Column("other", "UUID", references=fk("bad", "DROP TABLE x")))

    with pytest.raises(ValueError, match="ON DELETE"):
        render_migration(schema(bad))


# --- ordering and deferred foreign keys ------------------------------------------------------


def test_tables_keep_the_input_order_and_every_foreign_key_follows_them() -> None:
    c = table("c", Column("b_id", "UUID", references=fk("b")), tenant=False)
    b = table("b", Column("a_id", "UUID", references=fk("a")), tenant=False)
    a = table("a", Column("outside_id", "UUID", references=fk("not_in_this_schema")), tenant=False)
    statements = render_migration(schema(c, b, a)).statements

    # No CREATE TABLE depends on another: a table may reference one created after it.
    assert [s.split(" (")[0] for s in statements[:3]] == [
        'CREATE TABLE IF NOT EXISTS "public"."c"',
        'CREATE TABLE IF NOT EXISTS "public"."b"',
        'CREATE TABLE IF NOT EXISTS "public"."a"',
    ]
    assert all("FOREIGN KEY" in s for s in statements[3:]) and len(statements) == 6


def test_foreign_keys_of_a_cycle_and_a_self_reference_are_deferred() -> None:
    a = table("a", Column("b_id", "UUID", references=fk("b", "CASCADE")), tenant=False)
    b = table("b", Column("a_id", "UUID", references=fk("a", "SET NULL")), tenant=False)
    tree = table("tree", Column("parent_id", "UUID", references=fk("tree")), tenant=False)
    statements = render_migration(schema(a, b, tree)).statements

    assert [s.split(" (")[0] for s in statements[:3]] == [
        'CREATE TABLE IF NOT EXISTS "public"."a"',
        'CREATE TABLE IF NOT EXISTS "public"."b"',
        'CREATE TABLE IF NOT EXISTS "public"."tree"',
    ]
    assert all("FOREIGN KEY" not in s for s in statements[:3])
    foreign_keys = statements[3:]
    assert len(foreign_keys) == 3
    assert all(s.startswith("DO $wf106$") for s in foreign_keys)
    assert 'REFERENCES "public"."b" ("id") ON DELETE CASCADE;' in foreign_keys[0]
    assert 'REFERENCES "public"."a" ("id") ON DELETE SET NULL;' in foreign_keys[1]
    assert 'ADD CONSTRAINT "tree_parent_id_fkey"' in foreign_keys[2]
    assert 'REFERENCES "public"."tree" ("id") ON DELETE NO ACTION;' in foreign_keys[2]


def test_foreign_key_to_a_non_default_column() -> None:
    codes = table("codes", Column("code", "TEXT", unique=True), tenant=False)
    uses = table(
        "uses", Column("code", "TEXT", references=ForeignKey("codes", "code")), tenant=False
    )
    statements = render_migration(schema(codes, uses)).statements

    assert create_table_position(statements, "codes") == 0
    assert 'FOREIGN KEY ("code") REFERENCES "public"."codes" ("code")' in statements[-1]


# --- determinism and names -------------------------------------------------------------------


def test_rendering_is_deterministic_and_checksummed() -> None:
    first = render_migration(schema(PATIENTS))
    second = render_migration(schema(PATIENTS))

    assert first == second
    assert first.checksum == hashlib.sha256(first.script.encode()).hexdigest()
    assert len(first.checksum) == 64
    other = render_migration(schema(PATIENTS), target_schema="other")
    assert other.checksum != first.checksum
    assert render_migration(schema(PATIENTS, version="2")).checksum != first.checksum


def test_header_is_a_safe_single_line_comment() -> None:
    description = "Patients\nDROP TABLE x; */ still\u2028a comment\x00 \t end"
    script = render_migration(schema(PATIENTS, version="3\n4", description=description)).script

    header, rest = script.split("\n", 1)
    assert header == "-- WF106 schema v3 4: Patients DROP TABLE x; * / still a comment end"
    assert rest.startswith("\nCREATE OR REPLACE FUNCTION")
    assert pglast.parse_sql(script)[0].stmt.__class__.__name__ == "CreateFunctionStmt"


def test_long_names_stay_within_63_bytes() -> None:
    long_table = "t" * 63
    long_column = "c" * 63
    long = table(
        long_table,
        Column(long_column, "UUID", unique=True, references=fk(long_table)),
        Column("updated_at", "TIMESTAMPTZ"),
        indexes=(Index(names.index_name(long_table, (long_column,)), (long_column,)),),
    )
    migration = render_migration(schema(long))

    quoted = re.findall(r'"((?:[^"]|"")*)"', migration.script)
    quoted += re.findall(r"'((?:[^']|'')*)'", migration.script)
    identifiers = {q.replace('""', '"') for q in quoted if q and not q.startswith('"')}
    assert {len(i.encode()) for i in identifiers} <= set(range(1, 64))
    generated = [
        names.primary_key_name(long_table),
        names.unique_constraint_name(long_table, long_column),
        names.foreign_key_name(long_table, long_column),
        names.policy_name(long_table),
        names.updated_at_trigger_name(long_table),
        names.index_name(long_table, (long_column,)),
    ]
    assert len(set(generated)) == len(generated)
    for name in generated:
        assert len(name.encode()) == 63
        assert f'"{name}"' in migration.script


# --- pglast round trip -----------------------------------------------------------------------


def _without_locations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_locations(v) for k, v in value.items() if "location" not in k}
    if isinstance(value, list | tuple):
        return [_without_locations(v) for v in value]
    return value


def assert_round_trips(statement: str) -> None:
    (raw,) = pglast.parse_sql(statement)
    (again,) = pglast.parse_sql(RawStream()(raw))
    first: Any = raw.stmt
    second: Any = again.stmt
    assert _without_locations(second(skip_none=True)) == _without_locations(first(skip_none=True))


ROUND_TRIP_SCHEMAS = {
    "patients": schema(PATIENTS),
    "reserved": schema(
        table("order", Column("user_id", "UUID", references=fk("user", "CASCADE"))),
        table("user", Column("order_id", "UUID", references=fk("order", "SET NULL"))),
    ),
    "unique": schema(
        table("t", Column("x", "NUMERIC(12,2)", unique=True, default="0"), tenant=False)
    ),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_SCHEMAS))
def test_every_statement_survives_a_pglast_round_trip(name: str) -> None:
    for statement in render_migration(ROUND_TRIP_SCHEMAS[name]).statements:
        assert_round_trips(statement)


# --- random schemas --------------------------------------------------------------------------

RESERVED_WORDS = ("order", "user", "select", "table", "group", "check", "default", "limit")
SYSTEM_COLUMNS = {"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"}
BASE_COLUMNS = {"id", "tenant_id", "updated_at"}
TYPES_AND_DEFAULTS = (
    ("TEXT", "''"),
    ("VARCHAR(80)", "'n/a'"),
    ("INTEGER", "0"),
    ("BIGINT", "42"),
    ("NUMERIC(12,2)", "0.00"),
    ("BOOLEAN", "false"),
    ("DATE", "current_date"),
    ("TIMESTAMPTZ", "now()"),
    ("UUID", "gen_random_uuid()"),
    ("JSONB", "'{}'::jsonb"),
    ("TEXT[]", "'{}'::text[]"),
)

identifiers = st.sampled_from(RESERVED_WORDS) | st.from_regex(
    r"[a-z_][a-z0-9_]{0,62}", fullmatch=True
)


@st.composite
def columns_for(draw: st.DrawFn, table_names: list[str]) -> list[Column]:
    column_names = draw(
        st.lists(
            identifiers.filter(lambda n: n not in BASE_COLUMNS | SYSTEM_COLUMNS),
            max_size=5,
            unique=True,
        )
    )
    columns = []
    for name in column_names:
        target = draw(st.none() | st.sampled_from(table_names)) if table_names else None
        if target is not None:
            on_delete = draw(st.sampled_from(ON_DELETE_ACTIONS))
            columns.append(Column(name, "UUID", references=ForeignKey(target, "id", on_delete)))
            continue
        type_, default = draw(st.sampled_from(TYPES_AND_DEFAULTS))
        columns.append(
            Column(
                name,
                type_,
                not_null=draw(st.booleans()),
                default=draw(st.sampled_from([None, default])),
                unique=draw(st.booleans()),
            )
        )
    return columns


@st.composite
def random_schemas(draw: st.DrawFn) -> Schema:
    table_names = draw(st.lists(identifiers, min_size=1, max_size=4, unique=True))
    tenancy = {name: draw(st.booleans()) for name in table_names}
    tables = []
    for name, tenant in tenancy.items():
        columns = [ID, *([TENANT_ID] if tenant else [])]
        if draw(st.booleans()):
            columns.append(Column("updated_at", "TIMESTAMPTZ", not_null=True, default="now()"))
        # A global table may only reference global tables (the normalizer refuses the rest).
        referable = [n for n in table_names if tenant or not tenancy[n]]
        columns.extend(draw(columns_for(referable)))
        column_names = [c.name for c in columns]
        indexed = draw(
            st.lists(
                st.lists(st.sampled_from(column_names), min_size=1, max_size=3, unique=True),
                max_size=3,
                unique_by=tuple,
            )
        )
        # ("a_b",) and ("a", "b") get the same generated name: keep the first, as a normalizer must.
        by_name = {names.index_name(name, cols): tuple(cols) for cols in reversed(indexed)}
        indexes = tuple(
            Index(index, cols, unique=draw(st.booleans())) for index, cols in by_name.items()
        )
        tables.append(
            Table(name=name, columns=tuple(columns), indexes=indexes, tenant_scoped=tenant)
        )
    version = draw(st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3})?", fullmatch=True))
    return Schema(version=version, description=draw(st.text(max_size=40)), tables=tuple(tables))


@settings(max_examples=150, deadline=None)
@given(random_schemas())
def test_random_schemas_pass_the_parser_check(random_schema: Schema) -> None:
    migration = render_migration(random_schema)

    check_statements(migration.statements)
    assert len(pglast.parse_sql(migration.script)) == len(migration.statements)
    first_fk = next(
        (i for i, s in enumerate(migration.statements) if "FOREIGN KEY" in s),
        len(migration.statements),
    )
    assert all(not s.startswith("CREATE TABLE") for s in migration.statements[first_fk:])
    for statement in migration.statements:
        assert_round_trips(statement)


# --- the parser check itself -----------------------------------------------------------------

GOOD = 'CREATE TABLE IF NOT EXISTS "s"."t" ("id" UUID)'


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ('CREATE TABLE "t" ("id" UUID); DROP TABLE "t"', "exactly one statement, found 2"),
        ("", "exactly one statement, found 0"),
        ("CREATE TABLE (", "syntax error"),
        ("this is not sql", "syntax error"),
        ('DROP TABLE "x"', "DropStmt is not allowed"),
        ("SELECT 1", "SelectStmt is not allowed"),
        ("GRANT ALL ON t TO public", "GrantStmt is not allowed"),
        ("ALTER TABLE t DROP COLUMN c", "AT_DropColumn is not allowed"),
        ("ALTER TABLE t DISABLE ROW LEVEL SECURITY", "AT_DisableRowSecurity is not allowed"),
        ("DO $$ BEGIN DROP TABLE t; END $$", "DropStmt is not allowed"),
        ("DO $$ BEGIN IF true THEN DROP TABLE t; END IF; END $$", "DropStmt is not allowed"),
        (
            "DO $$ BEGIN IF true THEN ALTER TABLE t ENABLE ROW LEVEL SECURITY; "
            "ELSE BEGIN PERFORM 1; END; END IF; END $$",
            "PLpgSQL_stmt_perform is not allowed",
        ),
        ("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", "PLpgSQL_stmt_dynexecute is not allowed"),
        ("DO $$ BEGIN IF true THEN CREATE POLICY p; END IF; END $$", "syntax error"),
        ("DO $$ BEGIN FOR i IN 1..3 LOOP END LOOP; END $$", "PLpgSQL_stmt_fori is not allowed"),
        ("DO $$ BEGIN ALTER TABLE t OWNER TO x; END $$", "AT_ChangeOwner is not allowed"),
        ("DO LANGUAGE plperl $$ system('rm') $$", "language plperl is not allowed"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            "only LANGUAGE plpgsql",
        ),
        (
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.x := 1 +; END $$",
            "syntax error",
        ),
    ],
)
def test_check_statements_rejects(statement: str, message: str) -> None:
    with pytest.raises(UnsafeSQLError, match=re.escape(message)) as excinfo:
        check_statements([GOOD, statement])

    assert str(excinfo.value).startswith("statements[1]: ")


def test_check_statements_rejects_a_comment_that_would_swallow_the_separator() -> None:
    with pytest.raises(UnsafeSQLError, match="statements joined: syntax error"):
        check_statements([f"{GOOD} -- a comment", 'CREATE INDEX "i" ON "s"."t" ("id")'])


@pytest.mark.parametrize(
    "statements",
    [
        # Two statements in one string, and an empty one so that the counts still agree.
        ['CREATE TABLE "a" ("x" int); CREATE TABLE "b" ("y" int)', ""],
        # Leading whitespace or a comment: the parser's statement does not start where ours does.
        ['CREATE TABLE "a" ("x" int)', ' CREATE TABLE "b" ("y" int)'],
        ['CREATE TABLE "a" ("x" int)', '/* c */ CREATE TABLE "b" ("y" int)'],
    ],
)
def test_check_statements_rejects_statements_that_do_not_line_up(statements: list[str]) -> None:
    with pytest.raises(UnsafeSQLError, match="not see it as one whole statement"):
        check_statements(statements)


def test_check_statements_counts_locations_in_bytes() -> None:
    check_statements(['CREATE TABLE "tablé" ("x" int)', 'CREATE INDEX "i" ON "tablé" ("x")'])


def test_check_statements_accepts_the_generated_sql() -> None:
    check_statements(render_migration(schema(PATIENTS)).statements)
    check_statements([])


# --- tenant isolation by construction --------------------------------------------------------


def test_uniqueness_in_a_tenant_table_is_per_tenant_and_global_in_a_global_table() -> None:
    users = table(
        "users",
        Column("email", "TEXT", unique=True),
        Column("code", "TEXT"),
        indexes=(Index("idx_users_code", ("code",), unique=True),),
    )
    tenants = table(
        "tenants",
        Column("slug", "TEXT", unique=True),
        indexes=(Index("idx_tenants_slug", ("slug",), unique=True),),
        tenant=False,
    )
    statements = render_migration(schema(users, tenants)).statements

    create_users = statements[create_table_position(statements, "users")]
    assert 'CONSTRAINT "users_tenant_id_id_key" UNIQUE ("tenant_id", "id")' in create_users
    assert 'CONSTRAINT "users_email_key" UNIQUE ("tenant_id", "email")' in create_users
    assert (
        'CREATE UNIQUE INDEX IF NOT EXISTS "idx_users_code" ON "public"."users" '
        '("tenant_id", "code")'
    ) in statements
    create_tenants = statements[create_table_position(statements, "tenants")]
    assert 'CONSTRAINT "tenants_slug_key" UNIQUE ("slug")' in create_tenants
    assert "tenant_id" not in create_tenants
    assert (
        'CREATE UNIQUE INDEX IF NOT EXISTS "idx_tenants_slug" ON "public"."tenants" ("slug")'
    ) in statements


def test_a_unique_index_naming_tenant_id_later_is_led_by_it() -> None:
    users = table(
        "users", Column("code", "TEXT"), indexes=(Index("i", ("code", "tenant_id"), True),)
    )
    statements = render_migration(schema(users)).statements
    assert 'CREATE UNIQUE INDEX IF NOT EXISTS "i" ON "public"."users" ("tenant_id", "code")' in (
        statements
    )


@pytest.mark.parametrize(
    ("on_delete", "rendered"),
    [
        ("CASCADE", "ON DELETE CASCADE"),
        ("SET NULL", 'ON DELETE SET NULL ("patient_id")'),
        ("SET DEFAULT", 'ON DELETE SET DEFAULT ("patient_id")'),
    ],
)
def test_a_reference_between_tenant_tables_is_composite(on_delete: str, rendered: str) -> None:
    patients = table("patients")
    visits = table("visits", Column("patient_id", "UUID", references=fk("patients", on_delete)))
    key = render_migration(schema(patients, visits)).statements[-1]

    assert (
        'FOREIGN KEY ("tenant_id", "patient_id") REFERENCES "public"."patients" '
        f'("tenant_id", "id") {rendered};'
    ) in key


def test_a_reference_to_a_global_table_stays_a_plain_foreign_key() -> None:
    countries = table("countries", tenant=False)
    patients = table(
        "patients", Column("country_id", "UUID", references=fk("countries", "SET NULL"))
    )
    key = render_migration(schema(countries, patients)).statements[-1]

    assert (
        'FOREIGN KEY ("country_id") REFERENCES "public"."countries" ("id") ON DELETE SET NULL;'
    ) in key


def test_a_global_table_referencing_a_tenant_table_is_a_bug() -> None:
    patients = table("patients")
    stats = table("stats", Column("patient_id", "UUID", references=fk("patients")), tenant=False)
    with pytest.raises(ValueError, match="global table 'stats'"):
        render_migration(schema(patients, stats))
