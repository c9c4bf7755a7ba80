"""The plan and the risk gate without a database: catalogs written by hand."""

from __future__ import annotations

import pytest

from builder.db.introspect import Catalog, LiveColumn, LiveTable
from builder.evolve.compare import binary_compatible_change, catalog_type, same_default
from builder.evolve.plan import make_plan
from builder.evolve.risk import Decision, Risk, gate
from builder.pipeline import Prepared, prepare
from tests.builder.helpers import PATIENTS, envelope


def schema_of(*tables: dict) -> Prepared:
    prepared = prepare(envelope(list(tables)), target_schema="app")
    assert isinstance(prepared, Prepared), prepared
    return prepared


def live_patients(**changes: LiveColumn) -> LiveTable:
    """`patients` as the builder creates it, with some columns replaced or added."""
    columns = {
        "id": LiveColumn("id", "uuid", True, "gen_random_uuid()"),
        "tenant_id": LiveColumn("tenant_id", "uuid", True, None),
        "created_at": LiveColumn("created_at", "timestamp with time zone", True, "now()"),
        "updated_at": LiveColumn("updated_at", "timestamp with time zone", True, "now()"),
        "deleted_at": LiveColumn("deleted_at", "timestamp with time zone", False, None),
        "first_name": LiveColumn("first_name", "text", True, None),
        "last_name": LiveColumn("last_name", "text", True, None),
        "phone": LiveColumn("phone", "text", False, None),
        "mrn": LiveColumn("mrn", "text", False, None),
    }
    columns.update(changes)
    return LiveTable(name="patients", columns=tuple(columns.values()))


# --- the gate -------------------------------------------------------------------------------

GATE = [
    # level, profile, allow_destructive, decision
    (Risk.SAFE, "safe", False, Decision.APPLY),
    (Risk.REVIEW, "safe", False, Decision.HOLD),
    (Risk.DESTRUCTIVE, "safe", False, Decision.BLOCK),
    (Risk.DESTRUCTIVE, "safe", True, Decision.HOLD),
    (Risk.SAFE, "review", False, Decision.HOLD),
    (Risk.REVIEW, "review", False, Decision.HOLD),
    (Risk.DESTRUCTIVE, "review", False, Decision.HOLD),
    (Risk.SAFE, "permissive", False, Decision.APPLY),
    (Risk.REVIEW, "permissive", False, Decision.APPLY),
    (Risk.DESTRUCTIVE, "permissive", False, Decision.HOLD),
    (Risk.DESTRUCTIVE, "permissive", True, Decision.HOLD),
]


@pytest.mark.parametrize(("level", "profile", "allow_destructive", "decision"), GATE)
def test_the_gate_follows_the_profile_table(level, profile, allow_destructive, decision):
    verdict = gate(level, blockers=0, profile=profile, allow_destructive=allow_destructive)
    assert verdict.decision == decision


@pytest.mark.parametrize("profile", ["safe", "review", "permissive"])
def test_a_blocker_blocks_under_every_profile_even_when_approved(profile):
    verdict = gate(Risk.SAFE, blockers=1, profile=profile, allow_destructive=True, approved=True)
    assert verdict.decision == Decision.BLOCK


def test_hold_and_approval_override_the_profile():
    def decide(level: Risk, profile: str, **flags: bool) -> Decision:
        return gate(level, blockers=0, profile=profile, allow_destructive=False, **flags).decision

    assert decide(Risk.SAFE, "permissive", hold=True) == Decision.HOLD
    assert decide(Risk.REVIEW, "review", approved=True) == Decision.APPLY
    assert decide(Risk.DESTRUCTIVE, "review", approved=True) == Decision.APPLY


# --- comparing types and defaults ----------------------------------------------------------


@pytest.mark.parametrize(
    ("live", "wanted", "compatible"),
    [
        ("character varying(20)", "VARCHAR(40)", True),
        ("character varying(20)", "TEXT", True),
        ("character varying(40)", "VARCHAR(20)", False),
        ("numeric(10,2)", "NUMERIC(12,2)", True),
        ("numeric(10,2)", "NUMERIC(12,3)", False),
        ("text", "INTEGER", False),
        ("integer", "BIGINT", False),
    ],
)
def test_binary_compatible_type_changes(live, wanted, compatible):
    assert binary_compatible_change(live, wanted) is compatible


def test_catalog_types_and_defaults_compare_as_postgresql_prints_them():
    assert catalog_type("VARCHAR(20)") == "character varying(20)"
    assert catalog_type("TIMESTAMPTZ") == "timestamp with time zone"
    assert same_default("'starter'", "'starter'::text")
    assert same_default("0", "0")
    assert not same_default("'a'", "'b'::text")


# --- the plan -------------------------------------------------------------------------------


def test_an_empty_catalog_plans_every_table_as_safe_creations():
    prepared = schema_of(PATIENTS)
    plan = make_plan(prepared.schema, Catalog(schema="app"), occupied=())
    assert [op.action for op in plan.operations] == ["create_function", "create_table"]
    assert plan.risk == Risk.SAFE
    assert not plan.after_commit_statements


def test_an_extra_live_column_is_reported_and_never_dropped():
    prepared = schema_of(PATIENTS)
    live = live_patients(legacy=LiveColumn("legacy", "text", False, None))
    plan = make_plan(prepared.schema, Catalog(schema="app", tables={"patients": live}))
    assert not any(op.action.startswith("drop") for op in plan.operations)
    assert any("legacy" in note for note in plan.notes), plan.notes


def test_a_missing_nullable_column_is_added_safely():
    prepared = schema_of(
        {**PATIENTS, "columns": [*PATIENTS["columns"], {"name": "email", "type": "TEXT"}]}
    )
    plan = make_plan(prepared.schema, Catalog(schema="app", tables={"patients": live_patients()}))
    [add] = [op for op in plan.operations if op.action == "add_column"]
    assert (add.subject, add.risk) == ("email", Risk.SAFE)
    assert add.statements == ('ALTER TABLE "app"."patients" ADD COLUMN IF NOT EXISTS "email" TEXT',)


def test_a_required_column_without_default_on_rows_is_a_blocker():
    prepared = schema_of(
        {
            **PATIENTS,
            "columns": [*PATIENTS["columns"], {"name": "ssn", "type": "TEXT", "not_null": True}],
        }
    )
    catalog = Catalog(schema="app", tables={"patients": live_patients()})
    on_rows = make_plan(prepared.schema, catalog, occupied={"patients"})
    [add] = [op for op in on_rows.operations if op.subject == "ssn"]
    assert add.blocker and add.rule == "adding-required-field"
    # On an empty table the same column is added as it is.
    empty = make_plan(prepared.schema, catalog, occupied=())
    [add] = [op for op in empty.operations if op.subject == "ssn"]
    assert add.blocker is None and "NOT NULL" in add.statements[0]


def test_a_type_change_needs_review_unless_binary_compatible():
    rewrite = schema_of(
        {
            **PATIENTS,
            "columns": [
                {**c, "type": "INTEGER"} if c["name"] == "mrn" else c for c in PATIENTS["columns"]
            ],
        }
    )
    catalog = Catalog(schema="app", tables={"patients": live_patients()})
    [change] = [op for op in make_plan(rewrite.schema, catalog).operations if op.subject == "mrn"]
    assert (change.risk, change.rule) == (Risk.REVIEW, "changing-column-type")
    widen = schema_of(
        {
            **PATIENTS,
            "columns": [
                {**c, "type": "VARCHAR(40)"} if c["name"] == "mrn" else c
                for c in PATIENTS["columns"]
            ],
        }
    )
    narrow_live = live_patients(mrn=LiveColumn("mrn", "character varying(20)", False, None))
    catalog = Catalog(schema="app", tables={"patients": narrow_live})
    [change] = [op for op in make_plan(widen.schema, catalog).operations if op.subject == "mrn"]
    assert change.risk == Risk.SAFE


def test_a_drop_the_payload_asks_for_is_destructive():
    prepared = schema_of(
        {
            **PATIENTS,
            "columns": [c for c in PATIENTS["columns"] if c["name"] != "mrn"],
            "drop_columns": ["mrn"],
        }
    )
    plan = make_plan(prepared.schema, Catalog(schema="app", tables={"patients": live_patients()}))
    [drop] = [op for op in plan.operations if op.action == "drop_column"]
    assert (drop.risk, drop.rule) == (Risk.DESTRUCTIVE, "ban-drop-column")
    assert plan.risk == Risk.DESTRUCTIVE
