"""The generated DDL against a real PostgreSQL: it runs, runs again, and does what it says."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from psycopg import sql

from builder.schema import names
from builder.schema.spec import Column, ForeignKey, Index, Schema, Table
from builder.sql.render import Migration, render_migration
from tests.builder.sql.test_render import PATIENTS, random_schemas

ID = Column("id", "UUID", primary_key=True, default="gen_random_uuid()")
TENANT_ID = Column("tenant_id", "UUID", not_null=True)
UPDATED_AT = Column("updated_at", "TIMESTAMPTZ", not_null=True, default="now()")

VISITS = Table(
    name="visits",
    columns=(
        ID,
        TENANT_ID,
        UPDATED_AT,
        Column(
            "patient_id", "UUID", not_null=True, references=ForeignKey("patients", "id", "CASCADE")
        ),
        Column("doctor_id", "UUID", references=ForeignKey("doctors", "id", "SET NULL")),
        Column("notes", "TEXT", default="''"),
    ),
    indexes=(Index("idx_visits_patient_id", ("patient_id",)),),
)
DOCTORS = Table(
    name="doctors",
    columns=(
        ID,
        TENANT_ID,
        Column("license", "VARCHAR(80)", not_null=True, unique=True),
        Column("last_visit_id", "UUID", references=ForeignKey("visits")),  # a cycle with visits
    ),
)
ORDER = Table(
    name="order",
    columns=(
        ID,
        TENANT_ID,
        UPDATED_AT,
        Column("parent_id", "UUID", references=ForeignKey("order")),  # a self-reference
        Column("country_id", "UUID", references=ForeignKey("countries", on_delete="RESTRICT")),
        Column("total", "NUMERIC(12,2)", not_null=True, default="0"),
    ),
    indexes=(Index("idx_order_tenant_id_total", ("tenant_id", "total"), unique=True),),
)
COUNTRIES = Table(
    name="countries",
    columns=(ID, Column("iso_code", "TEXT", not_null=True, unique=True)),
    tenant_scoped=False,
)
CLINIC = Schema(
    version="1",
    description="clinic",
    tables=(VISITS, ORDER, DOCTORS, PATIENTS, COUNTRIES),
)
TENANT_TABLES = {"visits", "order", "doctors", "patients"}

CATALOG_QUERIES = {
    "tables": """
        SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s ORDER BY c.relname""",
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, numeric_precision,
            numeric_scale, character_maximum_length, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = %(schema)s
        ORDER BY table_name, ordinal_position""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_catalog.pg_indexes
        WHERE schemaname = %(schema)s ORDER BY tablename, indexname""",
    "constraints": """
        SELECT r.relname, con.conname, con.contype, pg_catalog.pg_get_constraintdef(con.oid)
        FROM pg_catalog.pg_constraint con
        JOIN pg_catalog.pg_class r ON r.oid = con.conrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
        WHERE n.nspname = %(schema)s ORDER BY r.relname, con.conname""",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text[], cmd, qual, with_check
        FROM pg_catalog.pg_policies WHERE schemaname = %(schema)s
        ORDER BY tablename, policyname""",
    "triggers": """
        SELECT r.relname, t.tgname, t.tgenabled, pg_catalog.pg_get_triggerdef(t.oid)
        FROM pg_catalog.pg_trigger t
        JOIN pg_catalog.pg_class r ON r.oid = t.tgrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
        WHERE n.nspname = %(schema)s AND NOT t.tgisinternal ORDER BY r.relname, t.tgname""",
    "functions": """
        SELECT p.proname, pg_catalog.pg_get_functiondef(p.oid)
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s ORDER BY p.proname""",
}


def catalog(conn: psycopg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Return everything the DDL can create in `schema`, in a comparable form."""
    return {
        name: conn.execute(query, {"schema": schema}).fetchall()
        for name, query in CATALOG_QUERIES.items()
    }


def apply(conn: psycopg.Connection, migration: Migration) -> None:
    """Run the script the way the ledger stores it: one string, in one transaction."""
    with conn.transaction():
        conn.execute(migration.script.encode())


@pytest.fixture
def clinic(target_conn: psycopg.Connection, target_schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Apply the clinic schema twice; return the catalog after the first run."""
    migration = render_migration(CLINIC, target_schema=target_schema)
    apply(target_conn, migration)
    before = catalog(target_conn, target_schema)
    apply(target_conn, migration)
    assert catalog(target_conn, target_schema) == before
    return before


def test_script_runs_twice_and_changes_nothing_the_second_time(
    clinic: dict[str, list[tuple[Any, ...]]], target_schema: str
) -> None:
    tables = {row[0]: row[1:] for row in clinic["tables"] if row[1] == "r"}
    assert set(tables) == TENANT_TABLES | {"countries"}
    for name, (_, rls, force) in tables.items():
        assert (rls, force) == ((True, True) if name in TENANT_TABLES else (False, False))
    constraints = {(r[0], r[1]): (r[2], r[3]) for r in clinic["constraints"]}
    # Between tenant-scoped tables a key carries tenant_id; to a global table it does not.
    assert constraints[("visits", "visits_patient_id_fkey")] == (
        "f",
        f"FOREIGN KEY (tenant_id, patient_id) REFERENCES {target_schema}.patients(tenant_id, id) "
        "ON DELETE CASCADE",
    )
    assert constraints[("patients", "patients_tenant_id_id_key")] == (
        "u",
        "UNIQUE (tenant_id, id)",
    )
    assert ("countries", "countries_tenant_id_id_key") not in constraints
    assert constraints[("doctors", "doctors_last_visit_id_fkey")][0] == "f"
    assert constraints[("order", "order_parent_id_fkey")][0] == "f"
    assert constraints[("order", "order_country_id_fkey")][1] == (
        f"FOREIGN KEY (country_id) REFERENCES {target_schema}.countries(id) ON DELETE RESTRICT"
    )
    assert "ON DELETE SET NULL (doctor_id)" in constraints[("visits", "visits_doctor_id_fkey")][1]
    assert constraints[("doctors", "doctors_license_key")] == ("u", "UNIQUE (tenant_id, license)")
    assert constraints[("countries", "countries_pkey")] == ("p", "PRIMARY KEY (id)")
    assert sum(1 for kind, _ in constraints.values() if kind == "f") == 5
    indexes = {row[1] for row in clinic["indexes"]}
    assert {"idx_patients_phone", "idx_visits_patient_id", "idx_order_tenant_id_total"} <= indexes
    triggers = {(row[0], row[1]) for row in clinic["triggers"]}
    assert triggers == {
        ("patients", "patients_set_updated_at"),
        ("visits", "visits_set_updated_at"),
        ("order", "order_set_updated_at"),
    }


def test_tenant_policy_has_using_and_with_check(
    clinic: dict[str, list[tuple[Any, ...]]],
) -> None:
    policies = {row[0]: row[1:] for row in clinic["policies"]}
    assert set(policies) == TENANT_TABLES
    name, permissive, roles, cmd, qual, with_check = policies["order"]
    assert (name, permissive, roles, cmd) == (
        "order_tenant_isolation",
        "PERMISSIVE",
        ["public"],
        "ALL",
    )
    expected = (
        "(tenant_id = ( SELECT (NULLIF(current_setting('app.current_tenant_id'::text, true),"
        " ''::text))::uuid AS \"nullif\"))"
    )
    assert qual == with_check == expected


def test_updated_at_is_maintained_by_the_trigger(
    clinic: dict[str, list[tuple[Any, ...]]], target_conn: psycopg.Connection, target_schema: str
) -> None:
    patients = sql.Identifier(target_schema, "patients")
    (row_id,) = target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name, updated_at)"
            " VALUES (%s, 'Ada', 'L', '2000-01-01T00:00:00Z') RETURNING id"
        ).format(patients),
        [uuid.uuid4()],
    ).fetchone()  # type: ignore[misc]
    target_conn.execute(
        sql.SQL("UPDATE {} SET first_name = 'Grace' WHERE id = %s").format(patients), [row_id]
    )
    changed, is_recent = target_conn.execute(
        sql.SQL(
            "SELECT updated_at > created_at - interval '1 second',"
            " updated_at > now() - interval '1 minute' FROM {} WHERE id = %s"
        ).format(patients),
        [row_id],
    ).fetchone()  # type: ignore[misc]
    assert changed and is_recent


def test_policy_isolates_tenants_for_a_non_superuser(
    clinic: dict[str, list[tuple[Any, ...]]], target_conn: psycopg.Connection, target_schema: str
) -> None:
    # Superusers bypass RLS even when it is forced: act as a throwaway role, all rolled back.
    role = sql.Identifier(f"wf106_test_{uuid.uuid4().hex[:8]}")
    patients = sql.Identifier(target_schema, "patients")
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    insert = sql.SQL(
        "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'x', 'y')"
    ).format(patients)
    count = sql.SQL("SELECT count(*) FROM {}").format(patients)
    with target_conn.transaction(force_rollback=True):
        target_conn.execute(insert, [tenant_a])
        target_conn.execute(insert, [tenant_b])
        target_conn.execute(insert, [tenant_b])
        target_conn.execute(sql.SQL("CREATE ROLE {}").format(role))
        target_conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(target_schema), role)
        )
        target_conn.execute(sql.SQL("GRANT ALL ON {} TO {}").format(patients, role))
        target_conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))

        assert target_conn.execute(count).fetchone() == (0,)  # no tenant set: no rows
        target_conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", [str(tenant_b)])
        assert target_conn.execute(count).fetchone() == (2,)
        target_conn.execute(insert, [tenant_b])
        with pytest.raises(psycopg.errors.InsufficientPrivilege), target_conn.transaction():
            target_conn.execute(insert, [tenant_a])  # WITH CHECK: not another tenant's row

        target_conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in target_conn.execute(sql.SQL("EXPLAIN {}").format(count)))
        assert "InitPlan" in plan
        assert "idx_patients_tenant_id" in plan  # the predicate does not cast the column


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(random_schema=random_schemas())
def test_random_schemas_apply_twice(
    target_conn: psycopg.Connection, target_schema: str, random_schema: Schema
) -> None:
    assume(relation_names_are_distinct(random_schema))
    migration = render_migration(random_schema, target_schema=target_schema)
    try:
        apply(target_conn, migration)
        before = catalog(target_conn, target_schema)
        apply(target_conn, migration)
        assert catalog(target_conn, target_schema) == before
    finally:
        # The fixture's schema is shared by every example: empty it again.
        with target_conn.transaction():
            target_conn.execute(
                sql.SQL("DROP SCHEMA {0} CASCADE; CREATE SCHEMA {0}").format(
                    sql.Identifier(target_schema)
                )
            )


def relation_names_are_distinct(schema: Schema) -> bool:
    """Return True if no table, index or constraint index name is used twice in `schema`.

    Avoiding such collisions is the normalizer's job; random schemas may still contain them.
    """
    relations = []
    for table in schema.tables:
        relations.append(table.name)
        relations.extend(index.name for index in table.indexes)
        relations.append(names.primary_key_name(table.name))
        relations.extend(
            names.unique_constraint_name(table.name, c.name) for c in table.columns if c.unique
        )
    return len(relations) == len(set(relations))
