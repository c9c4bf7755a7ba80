"""The events in the admin: their delivery to WF11, the backlog, every attempt, re-sending them
and resuming delivery, against a real receiver (tests/receiver.py) and the real test database."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from revos_schema import admin as revos_admin
from revos_schema import delivery
from revos_schema.models import EventDelivery, EventReceiver, SchemaEvent
from tests.app.admin_helpers import staff
from tests.receiver import Receiver

EVENTS_URL = "/admin/revos_schema/schemaevent/"
RECEIVERS_URL = "/admin/revos_schema/eventreceiver/"
WORKER = str(EventDelivery.Trigger.WORKER)

pytestmark = pytest.mark.django_db


def event(event_type: str = "schema_migration_applied", version: str = "042") -> SchemaEvent:
    return SchemaEvent.objects.create(
        event_type=event_type,
        payload={
            "event_type": event_type,
            "workflow_name": "WF106",
            "tenant_id": "t_001",
            "schema_version": version,
            "table_count": 2,
        },
    )


def worker_attempt(made: SchemaEvent) -> EventDelivery | None:
    return delivery.attempt(made.pk, trigger=WORKER, timeout=5)


def text(response: Any) -> str:
    """The page's text without its tags, its whitespace folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


def shown(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def action(name: str, *events: Any) -> dict[str, Any]:
    return {"action": name, "_selected_action": [str(e.pk) for e in events], "index": 0}


def test_the_list_shows_each_delivery_and_the_backlog(admin_client, receiver, settings):
    settings.WF11_MAX_ATTEMPTS = 2
    delivered = event(version="041")
    worker_attempt(delivered)
    receiver.mode = "error"
    failing = event(version="042")
    worker_attempt(failing)
    dead = event(version="043")
    worker_attempt(dead)
    worker_attempt(dead)

    response = admin_client.get(EVENTS_URL)

    page = text(response)
    assert response.status_code == 200
    counts = r"1 pending \(oldest from \d{4}-\d\d-\d\d [\d:]+ UTC ?, .* ago\), 1 dead"
    assert re.search(counts, page)
    assert f"Receiver {receiver.url}" in page
    assert "Failing since" in page
    assert "Last delivered at" in page
    rows = {
        e.pk: row
        for e in (delivered, failing, dead)
        for row in re.findall(r"<tr>.*?</tr>", response.content.decode(), re.S)
        if str(e.pk) in row
    }
    assert "wf106-delivery-delivered" in rows[delivered.pk]
    assert ">204<" in rows[delivered.pk]
    assert "wf106-delivery-pending" in rows[failing.pk]
    assert ">503<" in rows[failing.pk]
    assert "Dead" in rows[dead.pk]
    assert "after 2 attempts" in rows[dead.pk]
    # Filtered by delivery state.
    dead_only = admin_client.get(EVENTS_URL, {"delivery_status__exact": "dead"})
    assert [e.pk for e in dead_only.context["cl"].result_list] == [dead.pk]


def test_the_list_takes_as_many_queries_for_many_events_as_for_few(admin_client, receiver):
    def attempted_events(count: int) -> None:
        for _ in range(count):
            made = event()
            receiver.mode = "error"
            worker_attempt(made)
            receiver.mode = "ok"
            worker_attempt(made)

    attempted_events(2)
    admin_client.get(EVENTS_URL)  # the session and the user are cached after the first page
    with CaptureQueriesContext(connection) as few:
        admin_client.get(EVENTS_URL)
    attempted_events(8)
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(EVENTS_URL)

    assert len(response.context["cl"].result_list) == 10
    assert len(many.captured_queries) == len(few.captured_queries) <= 15


def test_without_a_url_events_are_kept_and_nothing_is_sent(admin_client, settings):
    settings.WF11_WEBHOOK_URL = ""
    kept = event()

    listing = admin_client.get(EVENTS_URL)
    by_action = admin_client.post(EVENTS_URL, action("resend_now", kept), follow=True)
    by_button = admin_client.post(f"{EVENTS_URL}{kept.pk}/resend/", follow=True)

    page = text(listing)
    assert "1 pending" in page
    assert "No WF11_WEBHOOK_URL configured: events are kept, not delivered." in page
    assert "Not delivered no WF11_WEBHOOK_URL" in page
    for response in (by_action, by_button):
        assert shown(response) == [
            "Nothing was sent: no WF11_WEBHOOK_URL configured: events are kept, not delivered."
        ]
    assert not EventDelivery.objects.exists()
    kept.refresh_from_db()
    assert (kept.delivery_status, kept.attempts) == ("pending", 0)


def test_an_events_page_shows_its_payload_and_every_attempt_newest_first(admin_client, receiver):
    made = event()
    receiver.mode = "error"
    worker_attempt(made)
    worker_attempt(made)
    receiver.mode = "ok"
    worker_attempt(made)

    response = admin_client.get(f"{EVENTS_URL}{made.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert made.webhook_id in html
    assert '<pre class="wf106-json" id="wf106-payload">{\n  &quot;event_type&quot;' in html
    assert "wf106-delivery-delivered" in html
    forms = response.context["inline_admin_formsets"][0].formset.forms
    attempts = [form.instance for form in forms]
    assert [a.status_code for a in attempts] == [204, 503, 503]
    assert [a.attempted_at for a in attempts] == sorted(
        (a.attempted_at for a in attempts), reverse=True
    )
    assert {a.url for a in attempts} == {receiver.url}
    assert "HTTP 503 Service Unavailable" in html
    assert 'name="_save"' not in html  # a record: nothing to change
    assert 'id="wf106-resend"' in html


def test_re_sending_a_dead_event_delivers_it_to_the_receiver(client, receiver, settings):
    settings.WF11_MAX_ATTEMPTS = 1
    approver = staff("ann", "Approvers")
    client.force_login(approver)
    made = event()
    receiver.mode = "error"
    worker_attempt(made)
    made.refresh_from_db()
    assert made.delivery_status == "dead"
    receiver.mode = "ok"

    page = client.get(f"{EVENTS_URL}{made.pk}/change/")
    response = client.post(f"{EVENTS_URL}{made.pk}/resend/", follow=True)

    assert 'id="wf106-resend"' in page.content.decode()
    assert response.redirect_chain == [(f"{EVENTS_URL}{made.pk}/change/", 302)]
    assert shown(response) == [f"Re-sent to {receiver.url}: 1 of 1 delivered."]
    assert receiver.ids() == [made.webhook_id, made.webhook_id]
    assert all(got.verified for got in receiver.received)
    made.refresh_from_db()
    assert made.delivery_status == "delivered"
    newest = made.deliveries.order_by("-attempted_at").first()
    assert newest is not None
    assert (newest.trigger, newest.delivered, newest.status_code) == ("operator", True, 204)


def test_re_sending_while_the_receiver_is_down_stops_at_the_first_failure(admin_client, receiver):
    first, second = event(version="041"), event(version="042")
    receiver.stop()

    listing = admin_client.get(EVENTS_URL)
    response = admin_client.post(EVENTS_URL, action("resend_now", second, first), follow=True)

    assert 'value="resend_now"' in listing.content.decode()
    [message] = shown(response)
    assert message.startswith(
        f"Re-sent to {receiver.url}: 0 of 2 delivered; failed: {first.webhook_id}: "
        "ConnectionRefusedError"
    )
    assert message.endswith("; 1 not attempted after that failure.")
    [attempted] = EventDelivery.objects.all()
    assert (attempted.event_id, attempted.trigger, attempted.delivered) == (
        first.pk,
        "operator",
        False,
    )
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.delivery_status, first.attempts) == ("pending", 1)
    assert (second.delivery_status, second.attempts) == ("pending", 0)
    assert "ConnectionRefusedError" in text(admin_client.get(EVENTS_URL))


def test_too_many_events_are_not_re_sent_at_once(admin_client, receiver, monkeypatch):
    made = [event(version=f"{n:03}") for n in range(3)]
    monkeypatch.setattr(revos_admin, "MAX_RESEND", 2)  # a limit three events reach

    response = admin_client.post(EVENTS_URL, action("resend_now", *made), follow=True)

    assert shown(response) == [
        "Nothing was sent: select at most 2 events to re-send at once (manage.py "
        "deliver_events sends any number of pending ones)."
    ]
    assert receiver.received == [] and not EventDelivery.objects.exists()


def test_without_the_permission_nothing_is_re_sent_or_resumed(client, receiver):
    client.force_login(staff("vic", "Viewers"))
    made = event()
    to = delivery.receiver(receiver.url)

    listing = client.get(EVENTS_URL)
    page = client.get(f"{EVENTS_URL}{made.pk}/change/")
    receivers = client.get(RECEIVERS_URL)
    by_button = client.post(f"{EVENTS_URL}{made.pk}/resend/")
    by_action = client.post(EVENTS_URL, action("resend_now", made))
    resumed = client.post(RECEIVERS_URL, action("resume_delivery", to))

    assert listing.status_code == page.status_code == receivers.status_code == 200
    assert "resend_now" not in listing.content.decode()
    assert "wf106-resend" not in page.content.decode()
    assert "resume_delivery" not in receivers.content.decode()
    assert by_button.status_code == by_action.status_code == resumed.status_code == 403
    assert receiver.ids() == []
    assert not EventDelivery.objects.exists()


def test_re_sending_needs_a_post(admin_client, receiver):
    made = event()

    assert admin_client.get(f"{EVENTS_URL}{made.pk}/resend/").status_code == 405
    assert receiver.ids() == []


def test_delivery_stopped_by_410_gone_is_shown_and_resumed(client, receiver: Receiver):
    client.force_login(staff("ann", "Approvers"))
    made = event()
    receiver.mode = "gone"
    report = delivery.deliver_due()
    assert report.failed and not report.delivered
    to = EventReceiver.objects.get(url=receiver.url)
    assert to.stopped_at is not None

    listing = text(client.get(EVENTS_URL))
    receivers = client.get(RECEIVERS_URL)
    receiver.mode = "ok"
    resumed = client.post(RECEIVERS_URL, action("resume_delivery", to), follow=True)
    again = client.post(RECEIVERS_URL, action("resume_delivery", to), follow=True)
    report = delivery.deliver_due()

    assert "Stopped after 410 Gone since" in listing
    assert "Nothing is sent to it until delivery is resumed in Event receivers" in listing
    assert "delivery stopped after 410 Gone" in listing
    assert "once delivery is resumed" in listing
    assert "Stopped after 410 Gone" in text(receivers)
    assert 'value="resume_delivery"' in receivers.content.decode()
    assert shown(resumed) == [
        f"Delivery to {receiver.url} is resumed: its pending events are sent again."
    ]
    assert shown(again) == [f"Delivery to {receiver.url} was not stopped."]
    assert report.delivered == [made.webhook_id]
    assert receiver.ids() == [made.webhook_id, made.webhook_id]
    to.refresh_from_db()
    assert (to.stopped_at, to.stopped_reason) == (None, "")
