"""Row level security of generated tables, seen by a role that does not own them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import run_schema_builder
from tests.builder.helpers import PATIENTS, envelope

TENANT_A = "00000000-0000-0000-0000-00000000000a"
TENANT_B = "00000000-0000-0000-0000-00000000000b"


@pytest.fixture
def patients(target_conn, target_schema) -> sql.Composable:
    outcome = run_schema_builder(
        envelope([PATIENTS]), target_conn, settings=ApplySettings(target_schema=target_schema)
    )
    assert outcome.status == "applied", outcome.response
    table = sql.Identifier(target_schema, "patients")
    for tenant, name in ((TENANT_A, "alice"), (TENANT_A, "amir"), (TENANT_B, "bob")):
        target_conn.execute(
            sql.SQL(
                "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, %s, 'x')"
            ).format(table),
            [tenant, name],
        )
    return table


@pytest.fixture
def app_role(target_conn, target_schema) -> Iterator[str]:
    """A role like the application's: may read and write, does not own the tables."""
    role = f"app_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(role)
    target_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
    target_conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(target_schema), ident)
    )
    target_conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(target_schema), ident
        )
    )
    yield role
    target_conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
    target_conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def as_role(conn: psycopg.Connection, role: str, tenant: str | None) -> None:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    if tenant is not None:
        conn.execute("SELECT set_config('app.current_tenant_id', %s, false)", [tenant])


def names(conn: psycopg.Connection, table: sql.Composable) -> list[str]:
    rows = conn.execute(sql.SQL("SELECT first_name FROM {} ORDER BY 1").format(table)).fetchall()
    return [r[0] for r in rows]


def test_tenant_sees_only_its_rows(target_dsn, patients, app_role):
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        as_role(conn, app_role, TENANT_A)
        assert names(conn, patients) == ["alice", "amir"]
        as_role(conn, app_role, TENANT_B)
        assert names(conn, patients) == ["bob"]


def test_no_tenant_set_means_no_rows(target_dsn, patients, app_role):
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        as_role(conn, app_role, None)
        assert names(conn, patients) == []
        as_role(conn, app_role, "")
        assert names(conn, patients) == []


def test_writes_of_another_tenants_rows_are_refused(target_dsn, patients, app_role):
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        as_role(conn, app_role, TENANT_A)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'eve', 'x')"
                ).format(patients),
                [TENANT_B],
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL("UPDATE {} SET tenant_id = %s WHERE first_name = 'alice'").format(patients),
                [TENANT_B],
            )
        # Another tenant's rows are invisible to UPDATE and DELETE: nothing changes.
        assert (
            conn.execute(
                sql.SQL("UPDATE {} SET last_name = 'hacked' WHERE first_name = 'bob'").format(
                    patients
                )
            ).rowcount
            == 0
        )
        assert (
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE first_name = 'bob'").format(patients)
            ).rowcount
            == 0
        )
        # Its own rows it may write.
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'ann', 'x')"
            ).format(patients),
            [TENANT_A],
        )
        assert names(conn, patients) == ["alice", "amir", "ann"]
    with psycopg.connect(target_dsn, autocommit=True) as owner:
        row = owner.execute(
            sql.SQL("SELECT last_name FROM {} WHERE first_name = 'bob'").format(patients)
        ).fetchone()
        assert row == ("x",)


def test_table_owner_is_subject_to_rls_too(target_dsn, target_conn, target_schema, patients):
    """FORCE ROW LEVEL SECURITY: a (non-superuser) owner does not bypass the policy."""
    owner = f"own_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(owner)
    target_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
    try:
        target_conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(target_schema), ident)
        )
        target_conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(patients, ident))
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            as_role(conn, owner, TENANT_B)
            assert names(conn, patients) == ["bob"]
    finally:
        target_conn.execute(sql.SQL("ALTER TABLE {} OWNER TO CURRENT_USER").format(patients))
        target_conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        target_conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_tenant_query_uses_the_tenant_id_index(target_dsn, target_conn, patients, app_role):
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name) "
            "SELECT ('00000000-0000-0000-0000-' || lpad((g % 200)::text, 12, '0'))::uuid, "
            "'n' || g, 'x' FROM generate_series(1, 40000) AS g"
        ).format(patients)
    )
    target_conn.execute(sql.SQL("ANALYZE {}").format(patients))
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        as_role(conn, app_role, "00000000-0000-0000-0000-000000000007")
        [[explain]] = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM {}").format(patients)
        ).fetchall()
    plan = explain if isinstance(explain, list) else json.loads(explain)
    nodes = list(plan_nodes(plan[0]["Plan"]))
    index_names = {n.get("Index Name") for n in nodes}
    assert "idx_patients_tenant_id" in index_names, nodes
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
