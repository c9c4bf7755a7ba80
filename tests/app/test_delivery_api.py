"""Events of webhook requests and decisions, delivered right after their commit to a real receiver.

The request's outcome must commit before its event is sent, so these tests run without a test
transaction around them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.utils import timezone
from psycopg import sql
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from revos_schema.events import PAYLOAD_KEYS
from revos_schema.models import EventReceiver, SchemaEvent, SchemaSubmission
from tests.builder.helpers import PATIENTS, envelope

URL = "/wf106/schema-builder"

pytestmark = pytest.mark.django_db(transaction=True)


def client_for(name: str, *codenames: str) -> APIClient:
    user = User.objects.create_user(name)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api


@pytest.fixture
def service() -> APIClient:
    return client_for("svc-crm", "submit_schema")


def post(api: APIClient, url: str, body: Any = None):
    data = None if body is None else json.dumps(body)
    return api.post(url, data=data, content_type="application/json")


# A second version: patients with one more column.
PATIENTS_V2 = {
    **PATIENTS,
    "columns": [*PATIENTS["columns"], {"name": "nickname", "type": "TEXT"}],
}


PATIENTS_V3 = {
    **PATIENTS_V2,
    "columns": [*PATIENTS_V2["columns"], {"name": "email", "type": "TEXT"}],
}


def wf11_calls(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [call for call in answer["audit"]["external_calls"] if call["service"] == "wf11"]


def test_an_apply_is_delivered_right_after_its_commit_and_listed_in_the_answer(
    service, target, receiver
):
    response = post(service, URL, envelope([PATIENTS]))

    assert response.status_code == 200
    answer = response.json()
    [event] = SchemaEvent.objects.all()
    [call] = wf11_calls(answer)
    assert call == {
        "service": "wf11",
        "event_type": "schema_migration_applied",
        "webhook_id": event.webhook_id,
        "status_code": 204,
        "delivered": True,
        "latency_ms": call["latency_ms"],
    }
    [got] = receiver.received
    assert got.verified and got.webhook_id == event.webhook_id
    payload = got.payload
    assert set(PAYLOAD_KEYS) <= set(payload)
    assert payload["submission_id"] == answer["result"]["submission_id"]
    assert payload["migration_log_id"] == answer["result"]["primary_outputs"]["migration_log_id"]
    assert (payload["schema_version"], payload["table_count"]) == ("001", 1)
    # The stored answer is the one given, attempt included.
    stored = SchemaSubmission.objects.get(pk=answer["result"]["submission_id"])
    assert stored.response["audit"]["external_calls"] == answer["audit"]["external_calls"]
    event.refresh_from_db()
    assert event.delivery_status == "delivered"


def test_a_receiver_outage_never_fails_an_apply_and_nothing_is_lost(
    service, target, receiver, settings
):
    settings.WF11_RETRY_BASE_S = 60
    receiver.stop()

    first = post(service, URL, envelope([PATIENTS]))
    second = post(service, URL, envelope([PATIENTS_V2], version="002"))

    assert (first.status_code, second.status_code) == (200, 200)
    [refused] = wf11_calls(first.json())
    assert refused["delivered"] is False and refused["status_code"] is None
    assert refused["error"].startswith("ConnectionRefusedError")
    # The receiver is known to be failing: the next answer does not wait for it.
    assert wf11_calls(second.json()) == []
    assert SchemaEvent.objects.filter(delivery_status="pending").count() == 2

    receiver.start()
    SchemaEvent.objects.update(next_attempt_at=timezone.now())  # due now, not in a minute
    call_command("deliver_events")

    assert sorted(receiver.ids()) == sorted(e.webhook_id for e in SchemaEvent.objects.all())
    assert all(got.verified for got in receiver.received)
    assert {got.payload["schema_version"] for got in receiver.received} == {"001", "002"}
    assert not SchemaEvent.objects.exclude(delivery_status="delivered").exists()


def test_a_hanging_receiver_delays_an_answer_only_by_the_short_timeout(
    service, target, receiver, settings
):
    settings.WF11_REQUEST_TIMEOUT_S = 0.5
    receiver.mode = "hang"

    response = post(service, URL, envelope([PATIENTS]))

    assert response.status_code == 200
    [call] = wf11_calls(response.json())
    assert (call["delivered"], call["error"]) == (False, "no answer within 0.5 s")
    assert not receiver.release.is_set()  # it was still holding its answer
    receiver.release.set()


def test_a_failed_apply_sends_its_failure(service, target, target_conn, receiver):
    assert post(service, URL, envelope([PATIENTS])).status_code == 200
    target_conn.execute(
        sql.SQL(
            "INSERT INTO {} (tenant_id, first_name, last_name, mrn) "
            "VALUES ('00000000-0000-0000-0000-00000000000a', 'a', 'b', 'not a number')"
        ).format(sql.Identifier(target, "patients"))
    )
    numeric_mrn = {
        **PATIENTS,
        "columns": [
            {**c, "type": "INTEGER"} if c["name"] == "mrn" else c for c in PATIENTS["columns"]
        ],
    }
    body = envelope([numeric_mrn], version="002")
    body["context"]["validation_profile"] = "permissive"

    response = post(service, URL, body)

    assert response.status_code == 500
    answer = response.json()
    [call] = wf11_calls(answer)
    assert call["event_type"] == "schema_migration_failed" and call["delivered"]
    failed = receiver.received[-1].payload
    assert failed["event_type"] == "schema_migration_failed"
    assert failed["error"] == answer["result"]["error"]
    assert failed["migration_log_id"] == answer["result"]["primary_outputs"]["migration_log_id"]


def test_held_approved_and_rejected_requests_send_their_events(target, receiver):
    author = client_for("svc-author", "submit_schema")
    approver = client_for("ops-approver", "approve_schema")
    review = envelope([PATIENTS])
    review["context"]["validation_profile"] = "review"

    held = post(author, URL, review)
    assert held.status_code == 202
    [call] = wf11_calls(held.json())
    assert call["event_type"] == "schema_migration_pending_approval" and call["delivered"]
    approved = post(approver, f"{held.json()['result']['submission_url']}/approve")
    assert approved.status_code == 200
    assert [c["event_type"] for c in wf11_calls(approved.json())] == [
        "schema_migration_approved",
        "schema_migration_applied",
    ]
    other = envelope([PATIENTS_V2], version="002")
    other["context"]["validation_profile"] = "review"
    held_again = post(author, URL, other)
    rejected = post(
        approver,
        f"{held_again.json()['result']['submission_url']}/reject",
        {"reason": "not this quarter"},
    )
    assert rejected.status_code == 200
    assert [c["event_type"] for c in wf11_calls(rejected.json())] == ["schema_migration_rejected"]

    sent = [got.payload for got in receiver.received]
    assert [p["event_type"] for p in sent] == [
        "schema_migration_pending_approval",
        "schema_migration_approved",
        "schema_migration_applied",
        "schema_migration_pending_approval",
        "schema_migration_rejected",
    ]
    for payload in sent:
        assert set(PAYLOAD_KEYS) <= set(payload), payload["event_type"]
        assert payload["tenant_id"] == "t_001"
    assert sent[1]["decision"]["by"] == "ops-approver"
    assert sent[4]["decision"]["reason"] == "not this quarter"
    first_id = held.json()["result"]["submission_id"]
    assert {p["submission_id"] for p in sent[:3]} == {first_id}
    assert (
        sent[2]["migration_log_id"]
        == approved.json()["result"]["primary_outputs"]["migration_log_id"]
    )
    assert len(set(receiver.ids())) == 5 and all(got.verified for got in receiver.received)


def test_requests_try_a_failing_receiver_again_after_a_quiet_while(
    service, target, receiver, settings
):
    settings.WF11_RETRY_BASE_S = 60
    receiver.stop()
    post(service, URL, envelope([PATIENTS]))
    quiet = EventReceiver.objects.get(url=receiver.url)
    assert quiet.quiet_until is not None and quiet.failing_since is not None
    receiver.start()

    during = post(service, URL, envelope([PATIENTS_V2], version="002"))
    EventReceiver.objects.filter(pk=quiet.pk).update(quiet_until=timezone.now())
    after = post(service, URL, envelope([PATIENTS_V3], version="003"))

    assert wf11_calls(during.json()) == []
    [call] = wf11_calls(after.json())
    assert call["delivered"] is True
    assert receiver.received[0].payload["schema_version"] == "003"
    healthy = EventReceiver.objects.get(pk=quiet.pk)
    assert (healthy.failing_since, healthy.quiet_until) == (None, None)
    # The two events of the outage are still pending, for deliver_events.
    assert SchemaEvent.objects.filter(delivery_status="pending").count() == 2


def test_a_delivery_that_breaks_never_turns_an_apply_into_an_error(
    service, target, receiver, settings
):
    # A secret the settings would refuse at start-up: signing fails inside the attempt.
    settings.WF11_WEBHOOK_SECRET = "whsec_"

    response = post(service, URL, envelope([PATIENTS]))

    assert response.status_code == 200
    assert response.json()["result"]["status"] == "applied"
    assert wf11_calls(response.json()) == []
    [event] = SchemaEvent.objects.all()
    assert (event.delivery_status, event.attempts) == ("pending", 0)
    assert receiver.received == []
