"""Migration 0003 moves each stored plan to SchemaPlan, once per digest, and back."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from revos_schema.models import SchemaPlan

APP = "revos_schema"
BEFORE = [(APP, "0002_holds_permission_function")]
AFTER = [(APP, "0003_schema_plan")]


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.fixture
def back_to_latest():
    yield
    # Whatever the test left, the next tests get the current schema: the app's newest migration.
    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes(APP))


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("back_to_latest")
def test_0003_moves_each_plan_once_and_back():
    old = migrate(BEFORE).loader.project_state(BEFORE).apps.get_model(APP, "SchemaSubmission")
    schema = {"version": "001", "tables": [{"name": "patients"}]}
    rows = [
        old.objects.create(
            source="api",
            envelope={},
            schema_hash="sha256:aa",
            normalized_schema=schema,
            generated_sql="CREATE TABLE a ();",
        )
        for _ in range(2)
    ]
    other = old.objects.create(
        source="cli",
        envelope={},
        schema_hash="sha256:aa",
        normalized_schema=schema,
        generated_sql="CREATE TABLE b ();",
    )
    unplanned = old.objects.create(source="api", envelope={}, status="blocked")

    new = migrate(AFTER).loader.project_state(AFTER).apps.get_model(APP, "SchemaSubmission")

    plans = new.objects.values_list("id", "plan_id")
    digest_a = SchemaPlan.digest_of("sha256:aa", "CREATE TABLE a ();")
    digest_b = SchemaPlan.digest_of("sha256:aa", "CREATE TABLE b ();")
    assert dict(plans) == {
        rows[0].id: digest_a,
        rows[1].id: digest_a,
        other.id: digest_b,
        unplanned.id: None,
    }
    stored = {p.digest: p for p in SchemaPlan.objects.all()}
    assert set(stored) == {digest_a, digest_b}
    assert stored[digest_a].normalized_schema == schema
    assert stored[digest_b].generated_sql == "CREATE TABLE b ();"

    old = migrate(BEFORE).loader.project_state(BEFORE).apps.get_model(APP, "SchemaSubmission")
    back = {r.id: (r.normalized_schema, r.generated_sql) for r in old.objects.all()}
    assert back[rows[1].id] == (schema, "CREATE TABLE a ();")
    assert back[other.id] == (schema, "CREATE TABLE b ();")
    assert back[unplanned.id] == (None, "")
