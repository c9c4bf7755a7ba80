"""The preview of a plan: highlighted SQL, normalized tables with what was added, the diagram."""

from __future__ import annotations

import dataclasses
import html
import re
from typing import Any

import pytest
from psycopg import sql

from builder.pipeline import Prepared, plan_against, prepare
from revos_schema import drafts, preview, targetcheck
from revos_schema.preview import (
    AUTO_COLUMNS,
    ColumnView,
    TableView,
    build_preview,
    diagram_svg,
    edges_of,
    highlight_sql,
    tables_of,
)
from tests.app.admin_helpers import DRAFTS_URL, staff, two_table_envelope
from tests.builder.helpers import load_fixture


def planned(envelope: dict[str, Any]) -> Prepared:
    result = prepare(envelope)
    assert isinstance(result, Prepared)
    return result


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_the_highlighted_sql_is_the_sql_with_every_statement():
    plan = planned(load_fixture("foundation_v002.json"))

    highlighted = highlight_sql(plan.migration.script)

    assert text_of(highlighted).strip() == plan.migration.script.strip()
    for statement in plan.migration.statements:
        assert statement in text_of(highlighted)
    assert '<span style="color: #008000; font-weight: bold">CREATE</span>' in highlighted
    assert "<script" not in highlighted


def test_the_highlighted_sql_escapes_what_it_shows():
    highlighted = highlight_sql("SELECT '<script>alert(1)</script>';")
    assert "<script>" not in highlighted
    assert text_of(highlighted).strip() == "SELECT '<script>alert(1)</script>';"


def test_the_columns_and_indexes_the_builder_added_are_marked():
    envelope = two_table_envelope()
    # A column of the caller's with an automatic column's name is the caller's.
    envelope["payload"]["tables"][0]["columns"].append({"name": "createdAt", "type": "DATE"})
    envelope["payload"]["tables"][0]["tenant_scoped"] = False
    envelope["payload"]["tables"][1]["tenant_scoped"] = False
    plan = planned(envelope)

    patients, visits = tables_of(plan.schema.to_dict(), envelope["payload"])

    assert [(c.name, c.auto) for c in patients.columns] == [
        ("id", True),
        ("created_at", False),
        ("updated_at", True),
        ("deleted_at", True),
        ("full_name", False),
        ("mrn", False),
    ]
    assert patients.columns[0].primary_key and not patients.tenant_scoped
    assert [(i.name, i.auto) for i in patients.indexes] == [("idx_patients_created_at", True)]
    assert [(i.name, i.auto) for i in visits.indexes] == [
        ("idx_visits_created_at", True),
        ("idx_visits_patient_id_starts_at", False),
    ]
    assert visits.columns[4].reference_text == "patients.id (on delete cascade)"


def test_a_tenant_scoped_table_has_every_automatic_column():
    envelope = two_table_envelope()
    plan = planned(envelope)
    patients = tables_of(plan.schema.to_dict(), envelope["payload"])[0]
    assert tuple(c.name for c in patients.columns if c.auto) == AUTO_COLUMNS
    assert [i.name for i in patients.indexes if i.auto] == [
        "idx_patients_tenant_id",
        "idx_patients_created_at",
    ]


def test_the_diagram_names_every_table_and_draws_one_edge_per_reference():
    envelope = load_fixture("foundation_v002.json")
    plan = planned(envelope)
    tables = tables_of(plan.schema.to_dict(), envelope["payload"])

    svg = diagram_svg(tables)

    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    for table in tables:
        assert f'<g class="wf106-table" data-table="{table.name}">' in svg
        assert f">{table.name}</text>" in svg
    edges = re.findall(r'<path class="wf106-edge" data-from="([^"]+)" data-to="([^"]+)"', svg)
    assert edges == [
        ("appointments.patient_id", "patients.id"),
        ("insurance_policies.patient_id", "patients.id"),
    ]
    assert len(edges_of(tables)) == 2
    assert diagram_svg(tables) == svg  # the same plan draws the same picture


def test_the_diagram_draws_references_to_the_left_to_the_same_column_and_to_itself():
    def table(name: str, *refs: str) -> TableView:
        columns = [ColumnView("id", "UUID", True, None, False, True, None, True)]
        columns += [
            ColumnView(
                f"{ref}_id", "UUID", False, None, False, False, (ref, "id", "NO ACTION"), False
            )
            for ref in refs
        ]
        return TableView(name, True, tuple(columns), ())

    tables = [table("a"), table("b", "a"), table("c"), table("d", "a", "d", "c")]

    svg = diagram_svg(tables)

    paths = re.findall(
        r'data-from="([^"]+)" data-to="([^"]+)" d="M([0-9.]+),[0-9.]+ C[^ ]+ [^ ]+ ([0-9.]+),', svg
    )
    # Boxes: a, b, c in the first row (x 20, 390, 760), d under a; 270 wide.
    assert [(src, dst, float(x1), float(x2)) for src, dst, x1, x2 in paths] == [
        ("b.a_id", "a.id", 390, 290),  # to the left: from b's left side to a's right side
        ("d.a_id", "a.id", 290, 290),  # the same column: a loop on the right
        ("d.d_id", "d.id", 290, 290),  # itself: a loop too
        ("d.c_id", "c.id", 290, 760),  # to the right: from d's right side to c's left side
    ]


def test_the_diagram_escapes_names():
    column = ColumnView("x<y", "TEXT&", False, None, False, False, None, False)
    svg = diagram_svg([TableView('t"<b>', True, (column,), ())])
    assert "<b>" not in svg and "x<y" not in svg
    assert 'data-table="t&quot;&lt;b&gt;"' in svg and "x&lt;y" in svg and "TEXT&amp;" in svg


def test_build_preview_gathers_it_all():
    envelope = two_table_envelope()
    plan = planned(envelope)

    shown = build_preview(
        plan.schema.to_dict(), envelope["payload"], plan.migration.script, ["careful"]
    )

    assert shown.warnings == ("careful",)
    assert [t.name for t in shown.tables] == ["patients", "visits"]
    assert len(shown.edges) == 1
    assert shown.svg == preview.diagram_svg(shown.tables)


# --- the pages --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_drafts_preview_shows_the_plan_against_the_target_sql_diagram_and_tables(
    client, target, target_conn
):
    # The target already has a table of this name, made by hand: the plan says what it lacks.
    target_conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(target, "visits")))
    draft = drafts.import_envelope(two_table_envelope())
    client.force_login(staff("author", "Authors"))

    page = client.get(f"{DRAFTS_URL}{draft.pk}/preview/")

    assert page.status_code == 200
    body = page.content.decode()
    assert 'class="wf106-diagram"' in body
    assert body.count('class="wf106-edge"') == 1
    keyword = '<span style="color: #008000; font-weight: bold">{}</span>'
    space = '<span style="color: #BBB"> </span>'
    assert keyword.format("CREATE") + space + keyword.format("TABLE") in body
    assert f'"{target}"' in body  # the SQL is for the target's schema
    # The plan: patients is created; visits gets its columns, but not a primary key column.
    shown = page.context["preview"]
    assert shown.plan.against_target and shown.fallback == ""
    assert "create table &#x27;patients&#x27;" in body
    assert "add column &#x27;starts_at&#x27; TIMESTAMPTZ to &#x27;visits&#x27;" in body
    assert "Adding a primary key column to an existing table is not automatically applicable" in (
        html.unescape(body)
    )
    assert shown.plan.decision == "block"
    assert "Column visits.x is in the database but not in the payload" in body
    # The legend, then per table its five automatic columns and two default indexes.
    assert body.count('<span class="wf106-auto">auto</span>') == 1 + 2 * (5 + 2)
    assert 'id="wf106-submit"' in body
    prepared = drafts.plan(draft)
    assert isinstance(prepared, Prepared)
    assert shown.sql == plan_against(target_conn, prepared.schema, target).migration.script


@pytest.mark.django_db
def test_the_preview_of_a_draft_with_errors_lists_them(client, target):
    envelope = two_table_envelope()
    envelope["payload"]["tables"][0]["columns"][0]["type"] = "MONEY"
    draft = drafts.import_envelope(envelope)
    client.force_login(staff("viewer", "Viewers"))

    page = client.get(f"{DRAFTS_URL}{draft.pk}/preview/")

    body = page.content.decode()
    assert "The builder finds 1 problem: there is no SQL yet" in body
    assert "Table 1 (patients), column 1 (full_name), type</strong>: Type &#x27;MONEY&#x27;" in body
    assert page.context["preview"] is None
    assert 'id="wf106-submit"' not in body


@pytest.mark.django_db
def test_a_target_that_cannot_be_read_is_a_warning(target, target_conn):
    # A table in the ledger's place that is not the ledger: reading it fails.
    target_conn.execute(
        sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(target, "schema_migrations"))
    )

    warnings = targetcheck.warnings_for(planned(two_table_envelope()))

    assert len(warnings) == 1
    assert warnings[0].startswith("The target database could not be read, so it was not checked")


@pytest.mark.django_db
def test_the_target_says_whether_the_version_is_applied(target, target_conn):
    envelope = two_table_envelope()
    plan = planned(envelope)
    assert targetcheck.warnings_for(plan) == []
    from revos_schema.services import submit_envelope

    submit_envelope(envelope, source="cli")

    [same] = targetcheck.warnings_for(plan)
    [other] = targetcheck.warnings_for(dataclasses.replace(plan, schema_hash="0" * 64))
    assert same.startswith("Version 042 was applied with this exact definition on ")
    assert same.endswith("applying it again changes nothing (noop).")
    assert other.startswith("Version 042 was applied with a different definition on ")
