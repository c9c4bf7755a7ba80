"""The operators' flow in a real browser: an author writes a schema in the admin's forms and
submits it; an approver opens it, reads its SQL and diagram, and approves (the tables then exist
in PostgreSQL) or rejects it (nothing runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from psycopg import sql

from builder.db.apply import ApplySettings
from builder.pipeline import run_schema_builder
from revos_schema import drafts
from tests.app.admin_helpers import PASSWORD, staff, two_table_envelope
from tests.app.test_approvals import tables_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TENANT = "00000000-0000-0000-0000-00000000000a"


def log_in(page: Any, base: str, user: User) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#logout-form")


def log_out(page: Any) -> None:
    page.click("#logout-form button")
    page.wait_for_selector("text=Logged out")


def add_column(page: Any, table: int, number: int, name: str, type_: str, **extra: Any) -> None:
    """Add a column to the `table`-th table's forms with nested_admin's "Add another" link."""
    page.click(f"#tables-{table}-columns-group .djn-add-handler")
    prefix = f"tables-{table}-columns-{number}"
    page.fill(f"input[name='{prefix}-name']", name)
    base, _, rest = type_.partition("(")
    page.select_option(f"select[name='{prefix}-type_0']", base)
    if rest:
        page.fill(f"input[name='{prefix}-type_1']", "(" + rest)
    if extra.get("not_null"):
        page.check(f"input[name='{prefix}-not_null']")
    if extra.get("unique"):
        page.check(f"input[name='{prefix}-unique']")
    if "references" in extra:
        page.fill(f"input[name='{prefix}-references_table']", extra["references"])
        page.select_option(f"select[name='{prefix}-on_delete']", extra["on_delete"])


def add_table(page: Any, number: int, name: str) -> None:
    page.click(
        "#tables-group > .djn-items + .djn-add-item .djn-add-handler, "
        "#tables-group .djn-add-handler.djn-model-revos_schema-drafttable"
    )
    page.fill(f"input[name='tables-{number}-name']", name)


def test_an_author_writes_and_submits_a_schema_and_an_approver_applies_it(
    page, live_server, target, target_conn, screenshot
):
    base = live_server.url
    author = staff("alice", "Authors")
    approver = staff("bob", "Approvers")

    # The live server serves the admin's static files: nested_admin's script, which adds the
    # forms below, and the preview's stylesheet.
    for asset in ("nested_admin/dist/nested_admin.min.js", "revos_schema/admin.css"):
        assert page.request.get(f"{base}/static/{asset}").status == 200

    # The author writes two tables, the second referencing the first, through the forms.
    log_in(page, base, author)
    page.goto(f"{base}/admin/revos_schema/schemadraft/add/")
    page.fill("#id_version", "042")
    page.fill("#id_description", "Patients and their visits")
    add_table(page, 0, "patients")
    add_column(page, 0, 0, "full_name", "TEXT", not_null=True)
    add_column(page, 0, 1, "mrn", "VARCHAR(32)", unique=True)
    add_table(page, 1, "visits")
    add_column(
        page, 1, 0, "patient_id", "UUID", not_null=True, references="patients", on_delete="cascade"
    )
    add_column(page, 1, 1, "starts_at", "TIMESTAMPTZ", not_null=True)
    screenshot(page, "authoring")

    # Saved, it is previewed: the exact SQL and a diagram of the tables and their reference.
    page.click("#wf106-save-preview")
    page.wait_for_url(re.compile(r"/schemadraft/\d+/preview/$"))
    sql = page.locator(".wf106-sql").inner_text()
    assert f'CREATE TABLE IF NOT EXISTS "{target}"."patients"' in sql
    assert f'CREATE TABLE IF NOT EXISTS "{target}"."visits"' in sql
    assert '"visits_patient_id_fkey"' in sql
    diagram = page.locator("svg.wf106-diagram")
    assert diagram.is_visible()
    assert diagram.locator("g.wf106-table").count() == 2
    assert diagram.locator("path.wf106-edge").count() == 1
    screenshot(page, "preview")

    page.click("#wf106-submit")
    page.wait_for_url(re.compile(r"/schemasubmission/[0-9a-f-]+/change/$"))
    assert page.locator("#wf106-decision h2").inner_text() == "Status: Pending approval"
    assert page.locator("#wf106-approve").count() == 0  # four eyes: not for its author
    submission_url = page.url
    log_out(page)

    # The approver finds it waiting, reads the SQL and the diagram, and approves it.
    log_in(page, base, approver)
    page.goto(f"{base}/admin/revos_schema/schemasubmission/?waiting=me")
    page.click("#result_list tbody tr th a")
    page.wait_for_url(re.compile(re.escape(submission_url) + r"(\?.*)?$"))
    assert f'"{target}"."visits"' in page.locator(".wf106-sql").inner_text()
    assert page.locator("svg.wf106-diagram path.wf106-edge").count() == 1
    screenshot(page, "approval")
    page.fill("#wf106-approve-reason", "Reviewed with the clinic")
    page.click("#wf106-approve")
    page.wait_for_selector(".messagelist .success")
    assert page.locator("#wf106-decision h2").inner_text() == "Status: Applied"
    decided = page.locator("#wf106-decided").inner_text()
    assert decided.startswith("Approved by bob on ")
    assert decided.endswith("because: \u201cReviewed with the clinic\u201d.")
    screenshot(page, "approved")

    assert tables_in(target_conn, target) == ["patients", "schema_migrations", "visits"]


def test_an_imported_schema_is_rejected_with_a_reason_and_nothing_runs(
    page, live_server, target, target_conn, screenshot, tmp_path: Path
):
    base = live_server.url
    author = staff("alice", "Authors")
    approver = staff("bob", "Approvers")
    envelope = tmp_path / "schema_043.json"
    envelope.write_text(json.dumps(two_table_envelope("043")))

    log_in(page, base, author)
    page.goto(f"{base}/admin/revos_schema/schemadraft/import/")
    page.set_input_files("input[name=file]", str(envelope))
    page.click("input[type=submit][value=Import]")
    page.wait_for_url(re.compile(r"/schemadraft/\d+/change/$"))
    assert page.input_value("input[name='tables-1-columns-0-references_table']") == "patients"
    page.click("#wf106-submit-tool")
    page.wait_for_url(re.compile(r"/schemasubmission/[0-9a-f-]+/change/$"))
    log_out(page)

    log_in(page, base, approver)
    page.goto(f"{base}/admin/revos_schema/schemasubmission/?waiting=me")
    page.click("#result_list tbody tr th a")
    page.fill("#wf106-reject-reason", "The MRN must be unique per tenant")
    page.click("#wf106-reject")
    page.wait_for_selector(".messagelist .success")
    assert page.locator("#wf106-decision h2").inner_text() == "Status: Rejected"
    assert page.locator("#wf106-decided").inner_text().startswith("Rejected by bob on ")
    assert page.locator("#wf106-approve").count() == 0
    screenshot(page, "rejected")

    assert tables_in(target_conn, target) == []


def test_a_drafts_problems_are_shown_next_to_its_fields(page, live_server, target, screenshot):
    envelope = two_table_envelope("044")
    visits = envelope["payload"]["tables"][1]
    visits["columns"][0]["references"]["column"] = "mnr"  # a typo
    visits["columns"][1]["type"] = "TIMESTAMPTZZ"
    author = staff("alice", "Authors")
    draft = drafts.import_envelope(envelope, user=author)

    log_in(page, live_server.url, author)
    page.goto(f"{live_server.url}/admin/revos_schema/schemadraft/{draft.pk}/change/")

    assert "finds 2 problems in this draft" in page.locator(".messagelist").inner_text()
    reference = page.locator("#tables-1-columns-group tbody.djn-item").nth(0)
    assert "Table 'patients' has no column 'mnr'." in reference.locator(".errorlist").inner_text()
    type_cell = page.locator("#tables-1-columns-group tbody.djn-item").nth(1)
    assert "Type 'TIMESTAMPTZZ' is not allowed" in type_cell.locator(".errorlist").inner_text()
    screenshot(page, "errors")

    # Submitting it is refused, and says why.
    page.click("#wf106-submit-tool")
    page.wait_for_selector(".messagelist .error")
    assert (
        "was not submitted: the builder finds 2 problems"
        in page.locator(".messagelist").inner_text()
    )


def test_a_schema_evolves_through_the_admin_and_drift_is_shown(
    page, live_server, target, target_conn, screenshot
):
    base = live_server.url
    # Version 041 is in the database, with a patient and a visit.
    applied = run_schema_builder(
        two_table_envelope("041"), target_conn, settings=ApplySettings(target_schema=target)
    )
    assert applied.status == "applied", applied.response
    patient = target_conn.execute(
        sql.SQL("INSERT INTO {} (tenant_id, full_name) VALUES (%s, 'Ada') RETURNING id").format(
            sql.Identifier(target, "patients")
        ),
        [TENANT],
    ).fetchone()[0]
    target_conn.execute(
        sql.SQL("INSERT INTO {} (tenant_id, patient_id, starts_at) VALUES (%s, %s, now())").format(
            sql.Identifier(target, "visits")
        ),
        [TENANT, patient],
    )
    # Version 045 adds a column to patients and an index to visits.
    envelope = two_table_envelope("045")
    patients, visits = envelope["payload"]["tables"]
    patients["columns"].append({"name": "email", "type": "TEXT"})
    visits["indexes"].append({"columns": ["starts_at"]})
    author = staff("alice", "Authors")
    draft = drafts.import_envelope(envelope, user=author)

    log_in(page, base, author)
    page.goto(f"{base}/admin/revos_schema/schemadraft/{draft.pk}/preview/")
    plan = page.locator("#content-main").inner_text()
    assert "add column 'email' TEXT to 'patients'" in plan
    assert "'visits' holds rows: built CONCURRENTLY after COMMIT" in plan
    sql_text = page.locator(".wf106-sql").inner_text()
    assert f'ALTER TABLE "{target}"."patients" ADD COLUMN IF NOT EXISTS "email" TEXT' in sql_text
    assert "CREATE INDEX CONCURRENTLY" in sql_text
    screenshot(page, "evolution-preview")
    page.click("#wf106-submit")
    page.wait_for_url(re.compile(r"/schemasubmission/[0-9a-f-]+/change/$"))
    submission_url = page.url
    log_out(page)

    log_in(page, base, staff("bob", "Approvers"))
    page.goto(submission_url)
    page.click("#wf106-approve")
    page.wait_for_selector(".messagelist .success")
    assert page.locator("#wf106-decision h2").inner_text() == "Status: Applied"
    assert "matches the schema" in page.locator("#wf106-verification").inner_text()
    steps = page.locator("#wf106-steps").inner_text()
    assert "CREATE INDEX CONCURRENTLY" in steps and "ran" in steps
    screenshot(page, "evolution-applied")

    # Someone drops the new index by hand: the drift page names it.
    target_conn.execute(
        sql.SQL("DROP INDEX {}").format(sql.Identifier(target, "idx_visits_starts_at"))
    )
    page.goto(f"{base}/admin/revos_schema/drift/")
    assert page.locator("#wf106-drift-summary h2").inner_text() == "Drift found"
    assert "idx_visits_starts_at" in page.locator("#wf106-differences").inner_text()
    screenshot(page, "drift")
