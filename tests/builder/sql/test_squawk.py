"""Squawk (PyPI squawk-cli, installed from requirements.txt) run over a plan's statements."""

from __future__ import annotations

import pytest

from builder.sql import squawk

pytestmark = pytest.mark.skipif(squawk.executable() is None, reason="squawk is not installed")

ADD_REQUIRED = 'ALTER TABLE "app"."patients" ADD COLUMN "ssn" TEXT NOT NULL'
DROP = 'ALTER TABLE "app"."patients" DROP COLUMN "phone"'
RETYPE = 'ALTER TABLE "app"."patients" ALTER COLUMN "mrn" TYPE TEXT'
CREATE = 'CREATE TABLE IF NOT EXISTS "app"."visits" (\n    "id" UUID,\n    "note" TEXT\n)'
INDEX_NEW_TABLE = 'CREATE INDEX IF NOT EXISTS "idx_visits_note" ON "app"."visits" ("note")'
CONCURRENT = 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "idx_p_mrn" ON "app"."patients" ("mrn")'
VALIDATE = 'ALTER TABLE "app"."visits" VALIDATE CONSTRAINT "visits_patient_id_fkey"'


def rules(findings: list[squawk.Finding] | None) -> list[tuple[str, str]]:
    assert findings is not None
    return [(f.rule, f.statement) for f in findings]


def test_each_finding_names_its_rule_and_statement():
    found = rules(squawk.lint([CREATE, ADD_REQUIRED, DROP, RETYPE]))
    assert ("adding-required-field", ADD_REQUIRED) in found
    assert ("ban-drop-column", DROP) in found
    assert ("changing-column-type", RETYPE) in found
    assert all(statement != CREATE for _, statement in found)


def test_the_transaction_is_linted_as_one_and_the_timeouts_the_apply_sets_are_not_reported():
    # An index on a table created in the same transaction blocks no one.
    assert rules(squawk.lint([CREATE, INDEX_NEW_TABLE])) == []
    found = rules(squawk.lint([ADD_REQUIRED]))
    assert not any(rule.startswith("require-") and "timeout" in rule for rule, _ in found)


def test_the_steps_after_commit_are_linted_outside_the_transaction():
    assert squawk.lint([], [CONCURRENT, VALIDATE]) == []
    [finding] = squawk.lint([], [CONCURRENT, DROP]) or []
    assert (finding.rule, finding.after_commit, finding.level) == (
        "ban-drop-column",
        True,
        "warning",
    )


def test_without_the_executable_nothing_runs_and_the_report_says_so(monkeypatch):
    monkeypatch.setattr(squawk, "executable", lambda: None)
    assert squawk.lint([DROP]) is None
    assert squawk.report([DROP]) == {"ran": False, "findings": []}
