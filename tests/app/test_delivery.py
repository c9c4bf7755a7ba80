"""Delivery of WF11 events to a real local HTTP receiver that verifies every signature.

The receiver (`tests/receiver.py`) is a real server on 127.0.0.1: it goes down by closing its
port, answers 503 or 410, or holds its answer. Nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from revos_schema import delivery
from revos_schema.events import PAYLOAD_KEYS
from revos_schema.models import EventDelivery, EventReceiver, SchemaEvent
from tests.receiver import SECRET, Receiver

pytestmark = pytest.mark.django_db


def make_event(version: str = "001", event_type: str = "schema_migration_applied") -> SchemaEvent:
    return SchemaEvent.objects.create(
        event_type=event_type,
        payload={
            "event_type": event_type,
            "schema_version": version,
            "table_count": 2,
            "migration_log_id": str(uuid.uuid4()),
            "tenant_id": "t_001",
            "occurred_at": "2026-12-06T10:00:00Z",
        },
    )


def make_due(event: SchemaEvent) -> None:
    SchemaEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())


def test_a_delivery_is_signed_and_its_body_is_the_recorded_payload(receiver):
    event = make_event()

    made = delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=5)

    [got] = receiver.received
    assert got.verified
    assert got.webhook_id == event.webhook_id == f"msg_{event.pk.hex}"
    assert got.body == event.body() and got.payload == event.payload
    assert got.headers["content-type"] == "application/json"
    # The signature, computed here from the Standard Webhooks definition.
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{got.webhook_id}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == f"v1,{expected}"
    assert made is not None
    assert (made.status_code, made.delivered, made.trigger, made.url) == (
        204,
        True,
        "worker",
        receiver.url,
    )
    event.refresh_from_db()
    assert (event.delivery_status, event.attempts, event.last_error) == ("delivered", 1, "")
    assert event.delivered_at == made.attempted_at


def test_a_receiver_with_another_secret_cannot_verify_the_signature(settings):
    other = Receiver(secret="whsec_" + base64.b64encode(b"another key, not the sender's").decode())
    other.start()
    try:
        settings.WF11_WEBHOOK_URL = other.url
        settings.WF11_WEBHOOK_SECRET = SECRET
        delivery.attempt(make_event().pk, trigger=EventDelivery.Trigger.WORKER, timeout=5)
        [got] = other.received
        assert not got.verified
    finally:
        other.stop()


def test_a_receiver_down_for_a_while_gets_every_event_once_when_it_is_back(receiver, settings):
    settings.WF11_RETRY_BASE_S = 0  # due again at once, to keep the test short
    events = [make_event(version) for version in ("001", "002", "003")]
    receiver.stop()

    first = delivery.deliver_due()

    # The pass stops at the first refused connection: the receiver is down, the rest wait.
    assert first.delivered == [] and len(first.failed) == 1
    assert first.failed[0][1].startswith("ConnectionRefusedError")
    assert delivery.backlog().pending == 3
    assert EventReceiver.objects.get(url=receiver.url).failing_since is not None
    second = delivery.deliver_due()
    assert second.delivered == [] and len(second.failed) == 1

    receiver.start()
    third = delivery.deliver_due()

    assert sorted(third.delivered) == sorted(e.webhook_id for e in events)
    assert sorted(receiver.ids()) == sorted(e.webhook_id for e in events)  # each exactly once
    assert all(got.verified for got in receiver.received)
    assert {got.payload["schema_version"] for got in receiver.received} == {"001", "002", "003"}
    assert delivery.backlog() == delivery.Backlog(pending=0, dead=0, oldest_pending=None)
    assert EventDelivery.objects.filter(delivered=False).count() == 2
    assert EventReceiver.objects.get(url=receiver.url).failing_since is None


def test_failed_attempts_back_off_exponentially_and_the_last_one_makes_the_event_dead(
    receiver, settings
):
    settings.WF11_RETRY_BASE_S = 10
    settings.WF11_RETRY_MAX_S = 25
    settings.WF11_MAX_ATTEMPTS = 3
    receiver.mode = "error"
    event = make_event()
    waits = []

    for _ in range(3):
        make_due(event)
        report = delivery.deliver_due()
        assert report.failed == [(event.webhook_id, "HTTP 503 Service Unavailable")]
        event.refresh_from_db()
        last = event.deliveries.order_by("-attempted_at").first()
        assert last is not None and last.status_code == 503
        waits.append(event.next_attempt_at - last.attempted_at)

    assert waits == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=25)]
    assert (event.delivery_status, event.attempts) == ("dead", 3)
    assert report.dead == [event.webhook_id]
    assert event.last_error == "HTTP 503 Service Unavailable"
    # A dead event is left alone by the worker...
    make_due(event)
    assert delivery.deliver_due().failed == []
    assert len(receiver.received) == 3
    # ...and an operator re-sends it once the receiver is well: the same webhook-id again.
    receiver.mode = "ok"
    made = delivery.resend(event.pk)
    assert made is not None and made.delivered and made.trigger == "operator"
    event.refresh_from_db()
    assert event.delivery_status == "delivered"
    assert receiver.ids() == [event.webhook_id] * 4


def test_a_410_gone_stops_delivery_to_the_receiver_until_it_is_resumed(receiver):
    first, second = make_event("001"), make_event("002")
    receiver.mode = "gone"

    report = delivery.deliver_due()

    assert report.failed == [(first.webhook_id, "HTTP 410 Gone")]
    stopped = EventReceiver.objects.get(url=receiver.url)
    assert stopped.stopped_at is not None and first.webhook_id in stopped.stopped_reason
    first.refresh_from_db()
    assert first.delivery_status == "pending"  # not the event's failure: it waits
    assert "delivery to" in first.last_error and "is stopped" in first.last_error
    receiver.mode = "ok"
    # Nothing more is sent, by the worker or right after an outcome.
    skipped = delivery.deliver_due()
    assert "is stopped" in skipped.skipped and skipped.failed == []
    assert delivery.deliver_now([second]) == []
    assert len(receiver.received) == 1

    assert delivery.resume(receiver.url) is True
    resumed = delivery.deliver_due()

    assert sorted(resumed.delivered) == sorted([first.webhook_id, second.webhook_id])
    assert delivery.resume(receiver.url) is False


def test_a_hanging_receiver_is_given_up_on_after_the_timeout(receiver):
    receiver.mode = "hang"
    event = make_event()

    made = delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=0.5)

    assert made is not None
    assert (made.status_code, made.error, made.delivered) == (None, "no answer within 0.5 s", False)
    # The receiver was still holding its answer when the attempt gave up.
    assert len(receiver.received) == 1 and not receiver.release.is_set()
    event.refresh_from_db()
    assert (event.delivery_status, event.attempts) == ("pending", 1)


def test_a_receiver_answering_a_byte_at_a_time_is_hung_up_on(receiver):
    receiver.mode = "trickle"  # each byte well within the read timeout
    event = make_event()

    made = delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=0.3)

    assert made is not None
    assert (made.status_code, made.error) == (None, "no whole answer within 0.6 s")
    assert not receiver.release.is_set()  # it was still answering


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(receiver):
    receiver.mode = "moved"
    event = make_event()

    made = delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=5)

    assert made is not None and (made.status_code, made.delivered) == (308, False)
    assert made.error == "HTTP 308 Permanent Redirect (redirect to /wf11/moved not followed)"
    assert len(receiver.received) == 1  # nothing was sent to where it pointed


def test_with_no_url_events_are_kept_and_shown_as_not_delivered(settings):
    settings.WF11_WEBHOOK_URL = ""
    event = make_event()

    report = delivery.deliver_due()

    assert report.skipped == "WF11_WEBHOOK_URL is not set: events are kept, not delivered."
    assert delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=1) is None
    assert delivery.resend(event.pk) is None
    event.refresh_from_db()
    assert (event.delivery_status, event.attempts) == ("pending", 0)
    assert not EventDelivery.objects.exists()
    assert delivery.backlog().pending == 1


def test_the_command_prints_each_attempt_and_the_backlog(receiver, settings, capsys):
    settings.WF11_RETRY_BASE_S = 0
    first, second = make_event("001"), make_event("002")
    receiver.stop()

    with pytest.raises(CommandError, match="did not take an event") as refused:
        call_command("deliver_events")

    assert refused.value.returncode == 1
    out = capsys.readouterr().out
    assert f"{first.webhook_id}: not delivered, ConnectionRefusedError" in out
    assert "Delivered 0 event(s). Backlog: 2 pending, the oldest from " in out
    receiver.start()
    call_command("deliver_events")
    out = capsys.readouterr().out
    assert f"{first.webhook_id}: delivered" in out and f"{second.webhook_id}: delivered" in out
    assert "Delivered 2 event(s). Backlog: 0 pending; 0 dead." in out


def test_every_event_type_carries_the_payload_keys():
    from revos_schema.events import record
    from revos_schema.models import SchemaSubmission

    submission = SchemaSubmission.objects.create(
        source="api", envelope={"meta": {"tenant_id": "t_9", "workflow_run_id": "run-9"}}
    )
    event = record(submission, "schema_migration_rejected", decision={"action": "rejected"})

    assert set(PAYLOAD_KEYS) <= set(event.payload)
    assert event.payload["submission_id"] == str(submission.pk)
    assert (event.payload["tenant_id"], event.payload["workflow_run_id"]) == ("t_9", "run-9")
    assert event.payload["decision"] == {"action": "rejected"}


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_send_one_event_at_the_same_time(receiver):
    receiver.mode = "hang"
    event = make_event()
    results: list[EventDelivery | None] = []

    def work() -> None:
        try:
            results.append(
                delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=10)
            )
        finally:
            connections.close_all()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        while not receiver.received:
            threading.Event().wait(0.01)
        # The first worker holds the event while its receiver has not answered: skipped.
        assert delivery.attempt(event.pk, trigger=EventDelivery.Trigger.WORKER, timeout=1) is None
    finally:
        receiver.release.set()
        worker.join()
    assert results[0] is not None and results[0].delivered
    assert receiver.ids() == [event.webhook_id]


def test_one_pass_of_the_command_delivers_more_than_a_batch(receiver, monkeypatch, capsys):
    made = [make_event(f"{n:03}") for n in range(5)]
    monkeypatch.setattr(delivery, "BATCH", 2)

    call_command("deliver_events")

    assert sorted(receiver.ids()) == sorted(e.webhook_id for e in made)
    out = capsys.readouterr().out
    assert out.count("Delivered 2 event(s).") == 2 and "Delivered 1 event(s)." in out
