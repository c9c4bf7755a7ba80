"""Deciding in the admin: who sees the buttons, who may post, and what a decision does."""

from __future__ import annotations

from html import escape

import pytest
from django.contrib.auth.models import User
from django.db import connections
from psycopg import sql

from builder.db import ledger
from revos_schema import drafts
from revos_schema.models import SchemaEvent, SchemaSubmission
from tests.app.admin_helpers import SUBMISSIONS_URL, staff, two_table_envelope
from tests.app.test_approvals import tables_in

pytestmark = pytest.mark.django_db


def held_by(user: User, version: str = "042") -> SchemaSubmission:
    """A draft of two tables written and submitted for approval by `user`."""
    draft = drafts.import_envelope(two_table_envelope(version), user=user)
    _, submission = drafts.submit(draft, user=user)
    assert submission.status == "pending_approval"
    return submission


def page_of(client, submission: SchemaSubmission):
    return client.get(f"{SUBMISSIONS_URL}{submission.pk}/change/")


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# (who decides, WF106_ALLOW_SELF_APPROVAL) -> may they: the buttons are shown exactly when the
# POST is accepted.
MATRIX = [
    ("viewer", False, False),
    ("author", False, False),
    ("approver", False, True),
    ("submitter", False, False),
    ("submitter", True, True),
    ("submitter-superuser", False, False),
    ("submitter-superuser", True, True),
    ("other-superuser", False, True),
]


@pytest.mark.parametrize(("who", "allow_self", "allowed"), MATRIX)
@pytest.mark.parametrize("action", ["approve", "reject"])
def test_the_permission_matrix_of_the_buttons_and_their_urls(
    client, settings, target, target_conn, who, allow_self, allowed, action
):
    settings.WF106_ALLOW_SELF_APPROVAL = allow_self
    if who == "submitter":  # an author who approves too: four eyes is what refuses
        submitter = staff("submitter", "Authors", "Approvers")
    else:
        submitter = staff("submitter", "Authors", superuser=who == "submitter-superuser")
    decider = {
        "viewer": lambda: staff("viewer", "Viewers"),
        "author": lambda: staff("author", "Authors"),
        "approver": lambda: staff("approver", "Approvers"),
        "submitter": lambda: submitter,
        "submitter-superuser": lambda: submitter,
        "other-superuser": lambda: staff("root", superuser=True),
    }[who]()
    submission = held_by(submitter)
    client.force_login(decider)

    page = page_of(client, submission)

    assert page.status_code == 200
    body = page.content.decode()
    assert ('id="wf106-approve"' in body) is allowed
    assert ('id="wf106-reject"' in body) is allowed
    if not allowed:
        assert "Waiting for an approver. You cannot decide on it:" in body

    response = client.post(
        f"{SUBMISSIONS_URL}{submission.pk}/{action}/", {"reason": "checked"}, follow=True
    )

    assert response.redirect_chain == [(f"{SUBMISSIONS_URL}{submission.pk}/change/", 302)]
    submission.refresh_from_db()
    if allowed:
        assert submission.status == ("applied" if action == "approve" else "rejected")
        assert submission.decided_by == decider
    else:
        assert (submission.status, submission.decision) == ("pending_approval", "")
        refusal = messages_of(response)
        assert len(refusal) == 1
        assert refusal[0] in (
            "This account lacks the permission revos_schema.approve_schema.",
            "A submission is decided by someone other than its submitter (four eyes).",
        )
        assert tables_in(target_conn, target) == []


def test_approving_in_the_admin_applies_the_plan_that_was_shown(client, target, target_conn):
    submission = held_by(staff("author", "Authors"))
    approver = staff("approver", "Approvers")
    client.force_login(approver)
    shown = page_of(client, submission).context["preview"]

    response = client.post(
        f"{SUBMISSIONS_URL}{submission.pk}/approve/",
        {"reason": "reviewed with the clinic"},
        follow=True,
    )

    assert tables_in(target_conn, target) == ["patients", "schema_migrations", "visits"]
    script = target_conn.execute(
        sql.SQL("SELECT sql_script FROM {}").format(sql.Identifier(target, "schema_migrations"))
    ).fetchone()
    assert script == (shown.sql,)
    submission.refresh_from_db()
    assert (submission.status, submission.decision, submission.decided_by) == (
        "applied",
        "approved",
        approver,
    )
    body = response.content.decode()
    assert messages_of(response) == [
        "Approved. Applied schema v042: 2 tables (2 created), 4 operations."
    ]
    assert "<h2>Status: Applied</h2>" in body
    assert "<strong>Approved</strong> by <strong>approver</strong>" in body
    assert f"on {submission.decided_at:%Y-%m-%d %H:%M:%S} UTC" in body
    assert "because: &ldquo;reviewed with the clinic&rdquo;" in body
    assert 'id="wf106-approve"' not in body
    assert list(
        SchemaEvent.objects.filter(submission=submission)
        .order_by("created_at")
        .values_list("event_type", flat=True)
    ) == [
        "schema_migration_pending_approval",
        "schema_migration_approved",
        "schema_migration_applied",
    ]


def test_an_approval_without_a_note_says_so(client, target):
    submission = held_by(staff("author", "Authors"))
    client.force_login(staff("approver", "Approvers"))
    response = client.post(f"{SUBMISSIONS_URL}{submission.pk}/approve/", follow=True)
    assert "(no reason given)" in response.content.decode()


def test_a_rejection_with_a_reason_runs_nothing(client, target, target_conn):
    submission = held_by(staff("author", "Authors"))
    client.force_login(staff("approver", "Approvers"))

    response = client.post(
        f"{SUBMISSIONS_URL}{submission.pk}/reject/",
        {"reason": "the MRN must be unique per tenant"},
        follow=True,
    )

    submission.refresh_from_db()
    assert (submission.status, submission.decision) == ("rejected", "rejected")
    assert submission.decision_reason == "the MRN must be unique per tenant"
    assert tables_in(target_conn, target) == []
    assert messages_of(response) == ["Rejected; nothing was executed."]
    body = response.content.decode()
    assert "<strong>Rejected</strong> by <strong>approver</strong>" in body
    assert "because: &ldquo;the MRN must be unique per tenant&rdquo;" in body


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_a_rejection_without_a_reason_is_refused(client, target, reason):
    submission = held_by(staff("author", "Authors"))
    client.force_login(staff("approver", "Approvers"))

    data = {} if reason is None else {"reason": reason}
    response = client.post(f"{SUBMISSIONS_URL}{submission.pk}/reject/", data, follow=True)

    assert messages_of(response) == ["A rejection needs a reason."]
    submission.refresh_from_db()
    assert (submission.status, submission.decision) == ("pending_approval", "")
    assert 'id="wf106-reject"' in response.content.decode()  # still waiting


def test_a_decided_submission_cannot_be_decided_again(client, target):
    submission = held_by(staff("author", "Authors"))
    client.force_login(staff("approver", "Approvers"))
    client.post(f"{SUBMISSIONS_URL}{submission.pk}/reject/", {"reason": "no"}, follow=True)

    again = client.post(f"{SUBMISSIONS_URL}{submission.pk}/approve/", follow=True)

    assert messages_of(again) == ["This submission is rejected: it is not waiting for a decision."]
    submission.refresh_from_db()
    assert submission.status == "rejected"


def test_the_decision_urls_take_posts_of_known_submissions_from_staff(client, target):
    submission = held_by(staff("author", "Authors"))
    approver = staff("approver", "Approvers")
    client.force_login(approver)

    assert client.get(f"{SUBMISSIONS_URL}{submission.pk}/approve/").status_code == 405
    unknown = "00000000-0000-0000-0000-000000000000"
    assert client.post(f"{SUBMISSIONS_URL}{unknown}/approve/").status_code == 404
    assert client.post(f"{SUBMISSIONS_URL}not-a-uuid/approve/").status_code in (302, 404)

    approver.is_staff = False
    approver.save()
    response = client.post(f"{SUBMISSIONS_URL}{submission.pk}/approve/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    submission.refresh_from_db()
    assert submission.status == "pending_approval"


def test_the_csrf_token_is_required(target):
    from django.test import Client

    submission = held_by(staff("author", "Authors"))
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff("approver", "Approvers"))

    response = client.post(f"{SUBMISSIONS_URL}{submission.pk}/approve/")

    assert response.status_code == 403
    submission.refresh_from_db()
    assert submission.status == "pending_approval"


def test_waiting_for_me_lists_the_held_submissions_an_approver_may_decide(client, target):
    author = staff("author", "Authors")
    approver = staff("approver", "Authors", "Approvers")
    others = held_by(author, "001")
    own = held_by(approver, "002")
    decided = held_by(author, "003")
    client.force_login(staff("boss", "Approvers"))
    client.post(f"{SUBMISSIONS_URL}{decided.pk}/reject/", {"reason": "no"})
    client.force_login(approver)

    listing = client.get(SUBMISSIONS_URL, {"waiting": "me"})

    assert listing.status_code == 200
    assert [s.pk for s in listing.context["cl"].result_list] == [others.pk]
    assert own.pk not in [s.pk for s in listing.context["cl"].result_list]
    assert "me (held, not submitted by me)" in listing.content.decode()
    for query in (
        {"status__exact": "pending_approval"},
        {"schema_version": "002"},
        {"submitted_by__id__exact": author.pk},
        {"q": "author"},
        {"created_at__gte": "2000-01-01 00:00:00+00:00"},
    ):
        assert client.get(SUBMISSIONS_URL, query).status_code == 200

    client.force_login(staff("viewer", "Viewers"))
    assert "me (held, not submitted by me)" not in client.get(SUBMISSIONS_URL).content.decode()


def test_an_approver_without_the_view_permission_still_sees_what_to_decide(client, target):
    from django.contrib.auth.models import Permission

    submission = held_by(staff("author", "Authors"))
    approver = staff("bare-approver")
    approver.user_permissions.add(Permission.objects.get(codename="approve_schema"))
    client.force_login(approver)

    assert client.get(SUBMISSIONS_URL).status_code == 200
    assert 'id="wf106-approve"' in page_of(client, submission).content.decode()


def test_a_held_submissions_page_shows_its_preview(client, target):
    submission = held_by(staff("author", "Authors"))
    client.force_login(staff("viewer", "Viewers"))

    body = page_of(client, submission).content.decode()

    assert 'class="wf106-diagram"' in body
    assert body.count('class="wf106-edge"') == 1
    assert "SQL, exactly as it will run" in body
    assert (
        "Schema v042 (2 tables, risk safe) waits for an approver (approval is required); nothing "
        "was executed." in body
    )


@pytest.mark.django_db(databases=["default", "target"])
def test_the_ledger_shows_its_sql_highlighted(client, ledger_schema):
    script = 'CREATE TABLE IF NOT EXISTS "public"."patients" ("id" UUID);'
    row_id, _ = ledger.insert_row(
        connections["target"].connection,
        ledger_schema,
        ledger.NewLedgerRow(
            version="042",
            description="Patients",
            applied_by="approver",
            checksum="c" * 64,
            status="success",
            sql_script=script,
            schema_hash="ab" * 32,
            idempotency_key="idem",
            tenant_id="t_001",
            workflow_run_id=None,
            metadata={},
        ),
    )
    client.force_login(staff("viewer", "Viewers"))

    page = client.get(f"/admin/revos_schema/migrationledgerentry/{row_id}/change/")

    body = page.content.decode()
    assert page.status_code == 200
    assert '<div class="wf106-sql-block"' in body
    assert '<span style="color: #008000; font-weight: bold">CREATE</span>' in body
    assert escape(script) in body  # and as plain text, to copy
    assert 'name="_save"' not in body
