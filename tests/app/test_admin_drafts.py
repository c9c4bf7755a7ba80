"""Schema drafts: the envelope round trip, the nested forms, errors next to fields, submitting."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from builder.errors import ValidationIssue
from builder.pipeline import Prepared, Rejected, prepare
from builder.request.envelope import VALIDATION_PROFILES
from revos_schema import drafts
from revos_schema.drafts import FieldRef, field_for_path
from revos_schema.forms import join_type, split_type
from revos_schema.models import DraftColumn, DraftTable, SchemaDraft, SchemaSubmission
from tests.app.admin_helpers import (
    DRAFTS_URL,
    PATIENTS_AND_VISITS,
    draft_post,
    staff,
    two_table_envelope,
)
from tests.builder.helpers import load_fixture

FIXTURES = ["foundation_v001.json", "foundation_v002.json", "seed_patients_minimal.json"]


# --- the envelope round trip ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("name", FIXTURES)
def test_export_of_an_import_is_the_envelope_exactly(name):
    envelope = load_fixture(name)

    draft = drafts.import_envelope(copy.deepcopy(envelope))

    assert drafts.envelope_of(SchemaDraft.objects.get(pk=draft.pk)) == envelope
    assert json.loads(drafts.export_json(draft)) == envelope


@pytest.mark.django_db
def test_every_field_of_a_draft_goes_through_the_round_trip():
    envelope = {
        "meta": {"tenant_id": "t_9", "workflow_run_id": "wr_1", "custom": [1, {"a": None}]},
        "subject": {"tenant_id": "t_9"},
        "payload": {
            "schema_version": "7.1",
            "description": "  every field  ",
            "tables": [
                {"name": "Tenants", "tenant_scoped": False, "columns": []},
                {
                    "name": "orders",
                    "columns": [
                        {
                            "name": "Tenant Ref",
                            "type": "uuid",
                            "unique": True,
                            "default": "",
                            "references": {
                                "table": "tenants",
                                "column": "id",
                                "on_delete": "set null",
                            },
                        },
                        {"name": "total", "type": "NUMERIC(12, 2)", "not_null": True},
                        {"name": "tags", "type": "TEXT[]", "default": "'{}'"},
                    ],
                    "indexes": [
                        {"columns": ["total"]},
                        {"name": "idx_x", "columns": ["tags", "total"], "unique": True},
                    ],
                },
            ],
        },
        "context": {"actor_id": "someone", "validation_profile": "review"},
    }
    draft = drafts.import_envelope(copy.deepcopy(envelope))
    assert drafts.envelope_of(draft) == envelope
    assert draft.validation_profile == "review"
    assert draft.envelope_extra["context"] == {"actor_id": "someone"}


@pytest.mark.django_db
@pytest.mark.parametrize("profile", VALIDATION_PROFILES)
def test_a_draft_holds_every_validation_profile(profile):
    envelope = {
        "payload": {"schema_version": "1", "description": "d", "tables": []},
        "context": {"validation_profile": profile},
    }
    draft = drafts.import_envelope(copy.deepcopy(envelope))
    draft.full_clean()
    assert drafts.envelope_of(draft) == envelope
    assert set(SchemaDraft.Profile.values) == set(VALIDATION_PROFILES)


@pytest.mark.django_db
def test_what_changes_on_the_way_is_cosmetic_and_plans_the_same():
    """Defaults said out loud, null, JSON numbers and on_delete's spelling: the same schema."""
    envelope = {
        "payload": {
            "schema_version": "1",
            "description": "d",
            "dry_run": False,
            "allow_destructive": False,
            "drop_tables": [],
            "tables": [
                {
                    "name": "a",
                    "tenant_scoped": True,
                    "indexes": [],
                    "columns": [],
                    "drop_columns": [],
                    "drop_indexes": None,
                },
                {
                    "name": "b",
                    "columns": [
                        {"name": "n", "type": "INTEGER", "default": 0, "not_null": False},
                        {"name": "f", "type": "BOOLEAN", "default": True, "unique": None},
                        {
                            "name": "a_id",
                            "type": "UUID",
                            "references": {"table": "a", "on_delete": "SET_NULL"},
                        },
                    ],
                    "indexes": [{"name": None, "columns": ["n"], "unique": False}],
                },
            ],
        },
        "context": None,
    }
    exported = drafts.envelope_of(drafts.import_envelope(copy.deepcopy(envelope)))

    assert exported["payload"]["tables"][0] == {"name": "a", "columns": []}
    b = exported["payload"]["tables"][1]
    assert b["columns"][0] == {"name": "n", "type": "INTEGER", "default": "0"}
    assert b["columns"][1] == {"name": "f", "type": "BOOLEAN", "default": "true"}
    assert b["columns"][2]["references"] == {"table": "a", "on_delete": "set null"}
    assert b["indexes"] == [{"columns": ["n"]}]
    assert "context" not in exported and "dry_run" not in exported["payload"]
    assert set(exported["payload"]) == {"schema_version", "description", "tables"}
    before, after = prepare(envelope), prepare(exported)
    assert isinstance(before, Prepared) and isinstance(after, Prepared)
    assert before.schema_hash == after.schema_hash
    assert before.migration.script == after.migration.script


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("envelope", "problem"),
    [
        ([], "The file must be a JSON object"),
        ({"payload": None}, "payload: is missing"),
        ({"payload": {}, "extra": 1}, "extra: unknown field"),
        ({"payload": {"description": "d", "tables": []}}, "payload.schema_version: is missing"),
        (
            {"payload": {"schema_version": "1", "description": "d", "tables": {}}},
            "payload.tables: must be an array, not an object",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [{"name": "a", "columns": [{"name": "x", "type": 5}]}],
                }
            },
            "payload.tables[0].columns[0].type: must be a string, not a number",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [{"name": "a", "columns": [], "owner": "me"}],
                }
            },
            "payload.tables[0].owner: unknown field",
        ),
        (
            {"payload": {"schema_version": "1", "description": "d", "tables": [], "dry_run": 1}},
            "payload.dry_run: a draft does not carry dry_run",
        ),
        (
            {
                "payload": {"schema_version": "1", "description": "d", "tables": []},
                "context": {"validation_profile": "strict"},
            },
            "context.validation_profile: must be one of safe, review, permissive",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [],
                    "drop_tables": ["legacy"],
                }
            },
            "payload.drop_tables: a draft does not carry drop_tables",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [],
                    "allow_destructive": True,
                }
            },
            "payload.allow_destructive: a draft does not carry allow_destructive",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [{"name": "a", "columns": [], "drop_columns": ["old"]}],
                }
            },
            "payload.tables[0].drop_columns: a draft does not carry drop_columns",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [{"name": "a", "columns": [], "drop_indexes": "idx_old"}],
                }
            },
            "payload.tables[0].drop_indexes: a draft does not carry drop_indexes",
        ),
        (
            {
                "payload": {
                    "schema_version": "1",
                    "description": "d",
                    "tables": [
                        {
                            "name": "a",
                            "columns": [
                                {
                                    "name": "x",
                                    "type": "UUID",
                                    "references": {"table": "a", "on_delete": "explode"},
                                }
                            ],
                        }
                    ],
                }
            },
            "payload.tables[0].columns[0].references.on_delete: must be one of no action",
        ),
    ],
)
def test_an_envelope_a_draft_cannot_hold_is_refused_with_its_paths(envelope, problem):
    with pytest.raises(drafts.ImportRefused) as refused:
        drafts.import_envelope(envelope)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
    assert not SchemaDraft.objects.exists()


@pytest.mark.django_db
def test_import_json_refuses_what_is_not_json_and_keeps_the_builders_questions():
    with pytest.raises(drafts.ImportRefused, match="not valid JSON"):
        drafts.import_json(b"{")
    with pytest.raises(drafts.ImportRefused, match="Duplicate key"):
        drafts.import_json(b'{"payload": {}, "payload": {}}')
    # Invalid to the builder, but a draft holds it (and the admin shows the builder's view).
    draft = drafts.import_json(
        json.dumps(
            {
                "payload": {
                    "schema_version": "bad version!",
                    "description": "d",
                    "tables": [{"name": "1st", "columns": [{"name": "x", "type": "SERIAL"}]}],
                }
            }
        )
    )
    assert isinstance(drafts.plan(draft), Rejected)


# --- the column type's select -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("TEXT", ("TEXT", "")),
        ("NUMERIC(12,2)", ("NUMERIC", "(12,2)")),
        ("VARCHAR(80)", ("VARCHAR", "(80)")),
        ("TIMESTAMPTZ", ("TIMESTAMPTZ", "")),
        ("TIMESTAMP", ("TIMESTAMP", "")),
        ("TEXT[][]", ("TEXT", "[][]")),
        ("CHAR(2)", ("CHAR", "(2)")),
        ("DOUBLE PRECISION", ("DOUBLE PRECISION", "")),
        ("CHARACTER VARYING(3)", ("", "CHARACTER VARYING(3)")),
        ("int", ("", "int")),
        ("TEXTS", ("", "TEXTS")),
    ],
)
def test_a_type_splits_into_the_select_and_its_parameters_and_back(text, parts):
    assert split_type(text) == parts
    assert join_type(*parts) == text


def test_bare_parameters_get_their_parentheses():
    assert join_type("NUMERIC", " 12,2 ") == "NUMERIC(12,2)"
    assert join_type("VARCHAR", "80") == "VARCHAR(80)"
    assert join_type("TEXT", "[]") == "TEXT[]"


def test_every_type_of_the_select_is_one_the_builder_accepts():
    from builder.schema.sqltypes import parse_type
    from revos_schema.forms import TYPE_CHOICES

    needs_length = {"VARCHAR", "CHAR"}
    for base in TYPE_CHOICES:
        parsed = parse_type(f"{base}(8)" if base in needs_length else base)
        assert parsed.base == base


# --- where an error belongs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ref"),
    [
        ("payload.schema_version", FieldRef("draft", field="version")),
        ("payload.description", FieldRef("draft", field="description")),
        ("context.validation_profile", FieldRef("draft", field="validation_profile")),
        ("meta.tenant_id", FieldRef("draft", field="envelope_extra")),
        ("context.actor_id", FieldRef("draft", field="envelope_extra")),
        ("payload.tables", FieldRef("draft")),
        ("", FieldRef("draft")),
        ("payload.tables[3]", FieldRef("table", 3)),
        ("payload.tables[1].name", FieldRef("table", 1, field="name")),
        ("payload.tables[0].tenant_scoped", FieldRef("table", 0, field="tenant_scoped")),
        ("payload.tables[0].columns", FieldRef("table", 0)),
        ("payload.tables[1].columns[2].type", FieldRef("column", 1, 2, "type")),
        ("payload.tables[1].columns[2].name", FieldRef("column", 1, 2, "name")),
        ("payload.tables[0].columns[0].default", FieldRef("column", 0, 0, "default")),
        ("payload.tables[0].columns[0].unique", FieldRef("column", 0, 0, "unique")),
        ("payload.tables[0].columns[0]", FieldRef("column", 0, 0)),
        (
            "payload.tables[0].columns[4].references",
            FieldRef("column", 0, 4, "references_table"),
        ),
        (
            "payload.tables[0].columns[4].references.table",
            FieldRef("column", 0, 4, "references_table"),
        ),
        (
            "payload.tables[0].columns[4].references.column",
            FieldRef("column", 0, 4, "references_column"),
        ),
        (
            "payload.tables[0].columns[4].references.on_delete",
            FieldRef("column", 0, 4, "on_delete"),
        ),
        ("payload.tables[2].indexes[1].columns[0]", FieldRef("index", 2, 1, "columns")),
        ("payload.tables[2].indexes[1].columns", FieldRef("index", 2, 1, "columns")),
        ("payload.tables[2].indexes[1].name", FieldRef("index", 2, 1, "name")),
        ("payload.tables[2].indexes[1]", FieldRef("index", 2, 1)),
        ("payload.tables[2].indexes", FieldRef("table", 2)),
        ('payload.tables[0]["odd key"]', FieldRef("table", 0)),
    ],
)
def test_each_error_path_maps_to_its_field(path, ref):
    assert field_for_path(path) == ref


@pytest.mark.django_db
def test_the_builders_errors_of_a_draft_are_placed_and_worded():
    draft = drafts.import_envelope(
        {
            "payload": {
                "schema_version": "001",
                "description": "d",
                "tables": [
                    {"name": "patients", "columns": [{"name": "mrn", "type": "TEXT"}]},
                    {
                        "name": "visits",
                        "columns": [
                            {"name": "starts_at", "type": "TIMESTAMPTZ"},
                            {"name": "n", "type": "SERIAL"},
                            {
                                "name": "p",
                                "type": "UUID",
                                "references": {"table": "patients", "column": "nowhere"},
                            },
                        ],
                        "indexes": [{"columns": ["missing"]}],
                    },
                ],
            }
        }
    )
    planned = drafts.plan(draft)
    assert isinstance(planned, Rejected)

    placed = {(p.where, p.label): p.message for p in drafts.placed_issues(draft, planned.issues)}

    type_error = placed[(FieldRef("column", 1, 1, "type"), "table 2 (visits), column 2 (n), type")]
    assert type_error.startswith("Type 'SERIAL' is not allowed; allowed types: SMALLINT")
    assert type_error.endswith(".")
    assert placed[
        (FieldRef("column", 1, 2, "references_column"), "table 2 (visits), column 3 (p), column")
    ] == ("Table 'patients' has no column 'nowhere'.")
    index_error = placed[
        (
            FieldRef("index", 1, 0, "columns"),
            "table 2 (visits), index 1 (index on missing), columns",
        )
    ]
    assert "has no column 'missing'" in index_error


def test_a_message_becomes_a_sentence():
    assert drafts.plain_message(ValidationIssue("p", "required", "type is required")) == (
        "Type is required."
    )
    assert drafts.plain_message(ValidationIssue("p", "too_many", "")) == "Too many."


# --- the admin pages --------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_author_writes_a_draft_with_nested_forms(client):
    author = staff("author", "Authors")
    client.force_login(author)
    assert client.get(f"{DRAFTS_URL}add/").status_code == 200

    response = client.post(
        f"{DRAFTS_URL}add/",
        draft_post("042", "Patients and visits", PATIENTS_AND_VISITS, _continue="1"),
    )

    assert response.status_code == 302, response.context and response.context["errors"]
    draft = SchemaDraft.objects.get()
    assert draft.created_by == author
    assert drafts.envelope_of(draft) == {
        "payload": {
            "schema_version": "042",
            "description": "Patients and visits",
            "tables": PATIENTS_AND_VISITS,
        }
    }
    assert isinstance(drafts.plan(draft), Prepared)


@pytest.mark.django_db
def test_a_drafts_errors_are_shown_next_to_their_fields(client):
    client.force_login(staff("author", "Authors"))
    tables: list[dict[str, Any]] = copy.deepcopy(PATIENTS_AND_VISITS)
    tables[1]["columns"][0]["references"] = {"table": "patients", "column": "mnr"}  # a typo
    tables[1]["columns"][1]["type"] = "TIMESTAMPTZZ"
    client.post(f"{DRAFTS_URL}add/", draft_post("042", "Patients and visits", tables))
    draft = SchemaDraft.objects.get()

    page = client.get(f"{DRAFTS_URL}{draft.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    messages = [str(m) for m in page.context["messages"]]
    assert any("finds 2 problems in this draft" in m for m in messages)
    inline = page.context["inline_admin_formsets"][0]
    visits = inline.formset.forms[1]
    columns = next(f for f in visits.nested_formsets if f.model is DraftColumn)
    assert columns.forms[0].errors["references_column"] == ["Table 'patients' has no column 'mnr'."]
    assert columns.forms[1].errors["type"][0].startswith("Type 'TIMESTAMPTZZ' is not allowed")
    assert "Table &#x27;patients&#x27; has no column &#x27;mnr&#x27;." in html
    assert not inline.formset.forms[0].errors  # patients is fine


@pytest.mark.django_db
def test_import_and_export_in_the_admin(client):
    author = staff("author", "Authors")
    client.force_login(author)
    envelope = load_fixture("foundation_v002.json")
    upload = _upload("foundation_v002.json", json.dumps(envelope).encode())

    imported = client.post(f"{DRAFTS_URL}import/", {"file": upload})

    draft = SchemaDraft.objects.get()
    assert imported.status_code == 302
    assert imported["Location"] == f"{DRAFTS_URL}{draft.pk}/change/"
    assert draft.created_by == author
    assert DraftTable.objects.filter(draft=draft).count() == 11
    exported = client.get(f"{DRAFTS_URL}{draft.pk}/export/")
    assert exported["Content-Disposition"] == 'attachment; filename="schema_002.json"'
    assert json.loads(exported.content) == envelope
    assert client.get(f"{DRAFTS_URL}{draft.pk}/change/").status_code == 200

    refused = client.post(f"{DRAFTS_URL}import/", {"file": _upload("x.json", b"[1]")})
    assert refused.status_code == 200
    assert refused.context["problems"] == ["The file must be a JSON object, not an array"]
    assert SchemaDraft.objects.count() == 1


def _upload(name: str, content: bytes) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content, content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("role", "may_edit"),
    [("Authors", True), ("Approvers", False), ("Viewers", False)],
)
def test_only_authors_edit_drafts_and_everyone_sees_them(client, role, may_edit):
    draft = drafts.import_envelope(two_table_envelope())
    client.force_login(staff("someone", role))
    url = f"{DRAFTS_URL}{draft.pk}/"

    assert client.get(DRAFTS_URL).status_code == 200
    assert client.get(f"{url}preview/").status_code == 200
    assert client.get(f"{url}export/").status_code == 200
    page = client.get(f"{url}change/").content.decode()
    assert ('name="_save"' in page) is may_edit
    assert ("Submit for approval" in page) is may_edit
    assert (client.get(f"{DRAFTS_URL}import/").status_code == 200) is may_edit
    assert (client.get(f"{DRAFTS_URL}add/").status_code == 200) is may_edit


@pytest.mark.django_db
def test_staff_without_a_role_see_no_drafts(client):
    draft = drafts.import_envelope(two_table_envelope())
    client.force_login(staff("nobody"))
    assert client.get(DRAFTS_URL).status_code == 403
    assert client.get(f"{DRAFTS_URL}{draft.pk}/preview/").status_code == 403
    assert client.get(f"{DRAFTS_URL}{draft.pk}/export/").status_code == 403


# --- submitting -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_submit_for_approval_holds_the_draft_as_its_authors_submission(client, target):
    author = staff("author", "Authors")
    draft = drafts.import_envelope(two_table_envelope(), user=author)
    client.force_login(author)

    assert client.get(f"{DRAFTS_URL}{draft.pk}/submit/").status_code == 405
    response = client.post(f"{DRAFTS_URL}{draft.pk}/submit/")

    submission = SchemaSubmission.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/revos_schema/schemasubmission/{submission.pk}/change/"
    assert (submission.status, submission.source, submission.actor) == (
        "pending_approval",
        "admin",
        "author",
    )
    assert submission.submitted_by == author
    assert submission.envelope["context"] == {"actor_id": "author"}
    assert submission.envelope["payload"] == two_table_envelope()["payload"]
    draft.refresh_from_db()
    assert draft.last_submission == submission
    page = client.get(response["Location"])
    assert "was submitted for approval" in page.content.decode()


@pytest.mark.django_db
def test_a_draft_with_errors_is_not_submitted(client, target):
    author = staff("author", "Authors")
    envelope = two_table_envelope()
    envelope["payload"]["tables"][1]["columns"][0]["type"] = "TEXT"  # differs from patients.id
    draft = drafts.import_envelope(envelope, user=author)
    client.force_login(author)

    response = client.post(f"{DRAFTS_URL}{draft.pk}/submit/", follow=True)

    assert not SchemaSubmission.objects.exists()
    assert response.redirect_chain[-1][0] == f"{DRAFTS_URL}{draft.pk}/change/"
    messages = [str(m) for m in response.context["messages"]]
    assert any("was not submitted: the builder finds 1 problem" in m for m in messages)
    assert "does not match the type UUID of patients.id" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["Approvers", "Viewers"])
def test_only_authors_may_submit(client, target, role):
    draft = drafts.import_envelope(two_table_envelope())
    client.force_login(staff("someone", role))
    assert client.post(f"{DRAFTS_URL}{draft.pk}/submit/").status_code == 403
    assert not SchemaSubmission.objects.exists()


@pytest.mark.django_db
def test_the_changelist_action_submits_each_selected_draft(client, target):
    author = staff("author", "Authors")
    good = drafts.import_envelope(two_table_envelope("001"))
    bad = drafts.import_envelope(two_table_envelope("bad version!"))
    client.force_login(author)

    response = client.post(
        DRAFTS_URL,
        {"action": "submit_for_approval", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )

    assert list(SchemaSubmission.objects.values_list("schema_version", "status")) == [
        ("001", "pending_approval")
    ]
    messages = [str(m) for m in response.context["messages"]]
    assert any("draft v001 was submitted for approval" in m for m in messages)
    assert any("draft vbad version! was not submitted" in m for m in messages)
