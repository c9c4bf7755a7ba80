"""Row level security of generated tables, seen by a role that does not own them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import Prepared, apply_prepared, prepare, run_schema_builder
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


# --- isolation by construction: uniqueness and references -----------------------------------

RECORDS = {
    "name": "records",
    "columns": [
        {"name": "email", "type": "TEXT", "unique": True},
        {"name": "code", "type": "TEXT"},
    ],
    "indexes": [{"columns": ["code"], "unique": True}],
}
NOTES = {
    "name": "notes",
    "columns": [
        {"name": "body", "type": "TEXT"},
        {
            "name": "record_id",
            "type": "UUID",
            "references": {"table": "records", "on_delete": "set_null"},
        },
    ],
}
REGIONS = {
    "name": "regions",
    "tenant_scoped": False,
    "columns": [{"name": "slug", "type": "TEXT", "unique": True}],
}


@pytest.fixture
def isolated(target_conn, target_schema) -> str:
    """Apply records, notes (referencing records) and the global regions; return the schema."""
    outcome = run_schema_builder(
        envelope([RECORDS, NOTES, REGIONS]),
        target_conn,
        settings=ApplySettings(target_schema=target_schema),
    )
    assert outcome.status == "applied", outcome.response
    assert outcome.response["result"]["primary_outputs"]["warnings"] == []
    return target_schema


@pytest.fixture
def make_role(target_conn, target_schema) -> Iterator[Any]:
    """Create roles that may read and write the target schema's tables (dropped afterwards)."""
    made: list[sql.Identifier] = []

    def make(*options: str) -> str:
        role = f"app_{uuid.uuid4().hex[:10]}"
        ident, space = sql.Identifier(role), sql.Identifier(target_schema)
        target_conn.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN {}").format(ident, sql.SQL(" ".join(options)))
        )
        made.append(ident)
        target_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(space, ident))
        target_conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
                space, ident
            )
        )
        return role

    yield make
    for ident in made:
        target_conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        target_conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def insert(conn: psycopg.Connection, schema: str, table: str, **values: object) -> str:
    """INSERT one row with `values` (tenant_id included); return its id."""
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(schema, table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join([sql.Placeholder()] * len(values)),
    )
    row = conn.execute(query, list(values.values())).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("column", ["email", "code"])  # a unique column, a unique index
def test_two_tenants_may_hold_one_unique_value_a_tenant_only_once(
    target_dsn, isolated, make_role, column
):
    role = make_role()
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        for tenant in (TENANT_A, TENANT_B):
            as_role(conn, role, tenant)
            insert(conn, isolated, "records", tenant_id=tenant, **{column: "MRN-1"})
        as_role(conn, role, TENANT_A)
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert(conn, isolated, "records", tenant_id=TENANT_A, **{column: "MRN-1"})


def test_a_row_cannot_reference_another_tenants_row_even_for_a_role_that_sees_both(
    target_dsn, isolated, make_role
):
    maintenance = make_role("BYPASSRLS")  # sees every tenant's rows
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        as_role(conn, maintenance, None)
        theirs = insert(conn, isolated, "records", tenant_id=TENANT_B, email="b@example.org")
        ours = insert(conn, isolated, "records", tenant_id=TENANT_A, email="a@example.org")
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(isolated, "records"))
        ).fetchone() == (2,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            insert(conn, isolated, "notes", tenant_id=TENANT_A, record_id=theirs)
        note = insert(conn, isolated, "notes", tenant_id=TENANT_A, record_id=ours)
        # Another tenant's row cannot be pointed at by an UPDATE either.
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                sql.SQL("UPDATE {} SET record_id = %s WHERE id = %s").format(
                    sql.Identifier(isolated, "notes")
                ),
                [theirs, note],
            )
        # ON DELETE SET NULL (record_id): the reference goes, the tenant stays.
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(isolated, "records")),
            [ours],
        )
        row = conn.execute(
            sql.SQL("SELECT tenant_id::text, record_id FROM {} WHERE id = %s").format(
                sql.Identifier(isolated, "notes")
            ),
            [note],
        ).fetchone()
    assert row == (TENANT_A, None)


def test_a_global_table_keeps_global_uniqueness_and_has_no_tenant_column_or_policy(
    target_dsn, target_conn, isolated, make_role
):
    role = make_role()
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        as_role(conn, role, TENANT_A)
        insert(conn, isolated, "regions", slug="eu")
        as_role(conn, role, TENANT_B)
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert(conn, isolated, "regions", slug="eu")
    columns = target_conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'regions'",
        [isolated],
    ).fetchall()
    assert ("tenant_id",) not in columns
    policies = target_conn.execute(
        "SELECT count(*) FROM pg_policies WHERE schemaname = %s AND tablename = 'regions'",
        [isolated],
    ).fetchone()
    assert policies == (0,)


@pytest.mark.parametrize("tenant", [None, "", "not-a-uuid", "42"])
def test_an_unset_or_malformed_tenant_reaches_no_tenants_rows(
    target_dsn, target_conn, patients, app_role, tenant
):
    before = target_conn.execute(
        sql.SQL("SELECT tenant_id, first_name, last_name FROM {} ORDER BY 2").format(patients)
    ).fetchall()
    statements = [
        (sql.SQL("SELECT first_name FROM {}").format(patients), []),
        (sql.SQL("UPDATE {} SET last_name = 'hacked'").format(patients), []),
        (sql.SQL("DELETE FROM {}").format(patients), []),
        (
            sql.SQL(
                "INSERT INTO {} (tenant_id, first_name, last_name) VALUES (%s, 'eve', 'x')"
            ).format(patients),
            [TENANT_A],
        ),
    ]
    with psycopg.connect(target_dsn) as conn:
        for statement, params in statements:
            as_role(conn, app_role, tenant)
            try:
                cursor = conn.execute(statement, params)
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidTextRepresentation):
                conn.rollback()  # refused: an error, never another tenant's rows
                continue
            # Allowed to run: it saw and changed nothing.
            assert cursor.rowcount == 0 and not statement.as_string().startswith("INSERT")
            if cursor.description:
                assert cursor.fetchall() == []
            conn.commit()
    after = target_conn.execute(
        sql.SQL("SELECT tenant_id, first_name, last_name FROM {} ORDER BY 2").format(patients)
    ).fetchall()
    assert after == before


def test_an_apply_names_what_tables_built_before_leave_open_between_tenants(
    target_conn, target_schema
):
    # Tables as built without isolation by construction: a global unique column, a global
    # unique index, a single-column foreign key between tenant tables.
    records, notes = (
        sql.Identifier(target_schema, "records"),
        sql.Identifier(target_schema, "notes"),
    )
    target_conn.execute(
        sql.SQL(
            "CREATE TABLE {records} (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, {times}, "
            "email text UNIQUE, code text);"
            "CREATE UNIQUE INDEX idx_records_code ON {records} (code);"
            "CREATE TABLE {notes} (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, {times}, "
            "body text, record_id uuid CONSTRAINT notes_record_id_fkey REFERENCES {records} (id))"
        ).format(
            records=records,
            notes=notes,
            times=sql.SQL(
                "created_at timestamptz NOT NULL DEFAULT now(), "
                "updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz"
            ),
        )
    )
    settings = ApplySettings(target_schema=target_schema)
    # The payload's unique index on `code` has the name of the hand-made global one: blocked.
    blocked = run_schema_builder(
        envelope([RECORDS, NOTES, REGIONS]), target_conn, settings=settings
    )
    assert blocked.status == "blocked", blocked.response
    errors = blocked.response["result"]["validation_errors"]
    assert [(e["path"], e["code"]) for e in errors] == [("payload.tables[0]", "changed-definition")]
    assert "'idx_records_code' exists with another definition" in errors[0]["message"]

    # Without that index, the plan replaces the single-tenant keys: a review plan, held.
    records_only_email = {**RECORDS, "indexes": []}
    request = envelope([records_only_email, NOTES, REGIONS])
    held = run_schema_builder(request, target_conn, settings=settings)
    assert held.status == "pending_approval", held.response
    risk = held.response["result"]["primary_outputs"]["risk"]
    assert risk["level"] == "review"
    assert {(f["rule"], f["subject"]) for f in risk["findings"]} >= {
        ("changed-definition", "records_email_key"),
        ("changed-definition", "notes_record_id_fkey"),
    }
    assert any("'idx_records_code' of 'records'" in note for note in risk["notes"])

    # Approved, it is applied; what is left open between tenants is named.
    prepared = prepare(request, target_schema=target_schema)
    assert isinstance(prepared, Prepared) and held.migration is not None
    outcome = apply_prepared(
        prepared, target_conn, settings=settings, approved_checksum=held.migration.checksum
    )
    assert outcome.status == "applied", outcome.response
    outputs = outcome.response["result"]["primary_outputs"]
    assert outputs["verification"] == {"ok": True, "differences": []}
    gaps = [w for w in outputs["warnings"] if "left as it is" not in w]
    assert len(gaps) == 1, outputs["warnings"]
    assert "'records' has the unique index 'idx_records_code' (btree (code))" in gaps[0]
    assert "unique across tenants" in gaps[0]
    # Tables made by the builder raise none.
    again = run_schema_builder(envelope([REGIONS], version="002"), target_conn, settings=settings)
    assert again.status == "applied"
    assert again.response["result"]["primary_outputs"]["warnings"] == []
