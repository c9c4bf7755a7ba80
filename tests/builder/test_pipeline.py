"""The service and the envelope contract without a database (blocked and preview never need one)."""

from __future__ import annotations

import re

import pytest

from builder import pipeline as service
from builder.pipeline import run_schema_builder
from builder.request.envelope import parse_envelope
from tests.builder.helpers import PATIENTS, envelope, load_fixture


def paths_and_codes(outcome) -> set[tuple[str, str]]:
    return {(e["path"], e["code"]) for e in outcome.validation_errors}


@pytest.mark.parametrize("body", [None, [], "x", 3, True])
def test_a_body_that_is_not_an_object_is_blocked(body):
    outcome = run_schema_builder(body, None)
    assert outcome.status == "blocked"
    assert outcome.http_status == 400
    assert ("", "invalid_type") in paths_and_codes(outcome)


def test_missing_payload_and_unknown_top_level_key_are_both_reported():
    outcome = run_schema_builder({"meta": {}, "extra": 1}, None)
    assert paths_and_codes(outcome) == {("payload", "required"), ("extra", "unknown_field")}
    result = outcome.response["result"]
    assert result["status"] == "blocked"
    assert result["validation_errors"] == outcome.validation_errors


def test_envelope_and_payload_errors_are_reported_together():
    request = envelope([{**PATIENTS, "columns": [{"name": "x", "type": "TEXT; DROP TABLE y"}]}])
    request["subject"] = {"tenant_id": "t_002"}
    request["context"]["validation_profile"] = "yolo"
    outcome = run_schema_builder(request, None)
    codes = paths_and_codes(outcome)
    assert ("subject.tenant_id", "conflicting_value") in codes
    assert ("context.validation_profile", "invalid_value") in codes
    assert ("payload.tables[0].columns[0].type", "not_allowed") in codes


def test_the_ledger_table_name_is_reserved():
    outcome = run_schema_builder(envelope([{"name": "SchemaMigrations", "columns": []}]), None)
    assert paths_and_codes(outcome) == {("payload.tables[0].name", "reserved_name")}


def test_the_ledger_table_is_never_dropped():
    request = envelope([PATIENTS], drop_tables=["old", "schema_migrations"], allow_destructive=True)
    outcome = run_schema_builder(request, None)
    assert outcome.status == "blocked"
    assert paths_and_codes(outcome) == {("payload.drop_tables[1]", "reserved_name")}


def test_meta_defaults_are_filled_and_run_id_is_kept():
    parsed = parse_envelope({"payload": {}})
    assert parsed.meta["workflow_name"] == "WF106"
    assert re.fullmatch(r"wr_[0-9a-f]{32}", parsed.workflow_run_id)
    assert parsed.meta["timestamp_utc"].endswith("Z")
    assert parsed.tenant_id == "global"
    kept = parse_envelope({"meta": {"workflow_run_id": "wr_abc", "source": "crm"}, "payload": {}})
    assert kept.workflow_run_id == "wr_abc"
    assert kept.meta["source"] == "crm"  # extra orchestration fields pass through


def test_blocked_response_has_the_output_envelope_shape():
    request = {"meta": {"workflow_run_id": "wr_shape"}, "payload": {"tables": "nope"}}
    response = run_schema_builder(request, None).response
    assert set(response) == {"meta_out", "result", "audit"}
    meta_out = response["meta_out"]
    assert meta_out["workflow_name"] == "WF106"
    assert meta_out["workflow_run_id"] == "wr_shape"
    assert meta_out["success"] is False
    assert re.fullmatch(r"sha256_[0-9a-f]{64}", meta_out["inputs_hash"])
    assert re.fullmatch(r"sha256_[0-9a-f]{64}", meta_out["outputs_hash"])
    assert response["audit"] == {"phi_touched": False, "data_written": [], "external_calls": []}


def test_applying_without_a_connection_is_a_programming_error():
    with pytest.raises(ValueError, match="connection"):
        run_schema_builder(load_fixture("foundation_v001.json"), None)


def test_dry_run_is_a_preview_with_the_sql_and_plan():
    request = load_fixture("foundation_v001.json")
    request["payload"]["dry_run"] = True
    outcome = run_schema_builder(request, None)
    assert outcome.status == "preview"
    outputs = outcome.response["result"]["primary_outputs"]
    assert outputs["sql"] == outcome.migration.script
    assert outputs["table_count"] == 10
    steps = [(step["action"], step["table"] or step["subject"]) for step in outputs["plan"]]
    assert steps[:3] == [
        ("create_function", "wf106_set_updated_at"),
        ("create_table", "tenants"),
        ("create_table", "users"),
    ]
    assert outputs["risk"]["level"] == "safe"
    # Squawk finds nothing to say about creating new tables in one transaction.
    assert outputs["squawk"] == {"ran": True, "findings": []}
    assert outcome.idempotency_key == f"idem:wf106:t_001:001:{outcome.schema_hash}"


def test_same_request_gives_same_hashes_and_sql():
    one = run_schema_builder(envelope([PATIENTS], dry_run=True), None)
    two = run_schema_builder(envelope([PATIENTS], dry_run=True), None)
    assert one.schema_hash == two.schema_hash
    assert one.migration.checksum == two.migration.checksum
    assert one.response["meta_out"]["inputs_hash"] == two.response["meta_out"]["inputs_hash"]


# --- the plan cache: identical payloads are planned once -----------------------------------------


@pytest.fixture
def plans():
    service.clear_plan_cache()
    yield
    service.clear_plan_cache()


def test_an_identical_payload_reuses_its_plan_whatever_the_key_order(plans):
    first = service.prepare(load_fixture("foundation_v001.json"))
    reordered = load_fixture("foundation_v001.json")
    reordered["payload"] = dict(reversed(list(reordered["payload"].items())))
    reordered["meta"]["workflow_run_id"] = "wr_retry"
    again = service.prepare(reordered)

    assert isinstance(first, service.Prepared) and isinstance(again, service.Prepared)
    assert again.migration is first.migration
    assert again.schema is first.schema
    # The envelope is the request's own.
    assert again.envelope.workflow_run_id == "wr_retry"
    assert again.envelope.inputs_hash != first.envelope.inputs_hash


def test_plans_are_per_target_schema_and_per_payload(plans):
    request = load_fixture("foundation_v001.json")
    public = service.prepare(request)
    other = service.prepare(request, target_schema="tenant_a")
    changed = load_fixture("foundation_v001.json")
    changed["payload"]["description"] = "changed"
    described = service.prepare(changed)

    assert isinstance(public, service.Prepared) and isinstance(other, service.Prepared)
    assert isinstance(described, service.Prepared)
    assert '"tenant_a".' in other.migration.script and '"tenant_a".' not in public.migration.script
    assert described.migration is not public.migration
    assert described.schema.description == "changed"


def test_an_apply_reuses_the_plan_of_its_preview(plans):
    preview = load_fixture("foundation_v001.json")
    preview["payload"]["dry_run"] = True
    planned = service.prepare(preview)
    applied = service.prepare(load_fixture("foundation_v001.json"))
    forced = load_fixture("foundation_v001.json")
    forced["payload"].update(dry_run=False, force_apply=True)
    reapplied = service.prepare(forced)

    assert isinstance(planned, service.Prepared) and isinstance(applied, service.Prepared)
    assert isinstance(reapplied, service.Prepared)
    assert applied.migration is planned.migration and reapplied.migration is planned.migration
    assert len(service.PLAN_CACHE) == 1
    # The flags still reach the envelope: only the plan is shared.
    assert planned.envelope.dry_run and not applied.envelope.dry_run
    assert reapplied.envelope.force_apply


def test_a_flag_that_is_not_a_boolean_is_rejected_even_when_its_payload_was_planned(plans):
    assert isinstance(service.prepare(load_fixture("foundation_v001.json")), service.Prepared)
    wrong = load_fixture("foundation_v001.json")
    wrong["payload"]["dry_run"] = "yes"

    outcome = service.prepare(wrong)

    assert isinstance(outcome, service.Rejected)
    assert [i.path for i in outcome.issues] == ["payload.dry_run"]


def test_invalid_payloads_are_not_cached_and_still_report_every_issue(plans):
    request = envelope([{**PATIENTS, "columns": [{"name": "x", "type": "TEXT; DROP TABLE y"}]}])
    for _ in range(2):
        outcome = service.prepare(request)
        assert isinstance(outcome, service.Rejected)
        assert ("payload.tables[0].columns[0].type", "not_allowed") in {
            (i.path, i.code) for i in outcome.issues
        }
    assert not service.PLAN_CACHE


def test_the_plan_cache_is_bounded_and_skips_large_payloads(plans, monkeypatch):
    size = service.PLAN_CACHE_SIZE
    requests = [envelope([PATIENTS], version=f"1.{n}") for n in range(size + 1)]
    first = service.prepare(requests[0])
    for request in requests[1:]:
        service.prepare(request)
    assert len(service.PLAN_CACHE) == size
    again = service.prepare(requests[0])
    assert again.migration is not first.migration  # evicted, planned anew
    assert service.prepare(requests[-1]).migration is service.prepare(requests[-1]).migration

    monkeypatch.setattr(service, "PLAN_CACHE_MAX_PAYLOAD", 10)
    service.clear_plan_cache()
    big = [service.prepare(requests[1]) for _ in range(2)]
    assert big[0].migration is not big[1].migration
    assert big[0].migration.script == big[1].migration.script
    assert not service.PLAN_CACHE


def test_the_same_payload_under_other_meta_reuses_its_plan(plans):
    request = load_fixture("foundation_v001.json")
    first = service.prepare(request)
    request["meta"]["workflow_run_id"] = "wr_other"
    again = service.prepare(request)

    assert again.migration is first.migration
    assert again.envelope.workflow_run_id == "wr_other"
    assert service.prepare(request, target_schema="tenant_a").migration is not first.migration


def test_sql_failing_the_parser_check_is_a_failed_answer_and_runs_nothing(plans, monkeypatch):
    from builder.errors import UnsafeSQLError

    def unsafe(schema, target_schema="public", defer_check=False):
        raise UnsafeSQLError("statements[3]: statement kind DropStmt is not allowed")

    parsed = []

    def parse_once(raw):
        parsed.append(raw)
        return parse_envelope(raw)

    monkeypatch.setattr(service, "render_migration", unsafe)
    monkeypatch.setattr(service, "parse_envelope", parse_once)
    request = load_fixture("foundation_v001.json")

    # No connection: reaching the database would raise.
    outcome = run_schema_builder(request, None)

    assert (outcome.status, outcome.http_status) == ("failed", 500)
    assert "parser check" in outcome.response["result"]["summary"]
    assert "DropStmt" not in str(outcome.response)  # the detail is logged, not answered
    assert outcome.error == "statements[3]: statement kind DropStmt is not allowed"
    assert len(parsed) == 1  # the envelope is read once, also on this path
