"""Events in a real browser: an operator reads the backlog of delivery to WF11 while the receiver
is down, opens a dead event with its failed attempts, and re-sends it once the receiver is back."""

from __future__ import annotations

import re

import pytest

from builder.status import Status
from revos_schema import delivery, events
from revos_schema.models import EventDelivery, SchemaEvent, SchemaSubmission
from tests.app.admin_helpers import staff, two_table_envelope
from tests.browser.test_operators import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WORKER = str(EventDelivery.Trigger.WORKER)


def recorded(version: str, status: str, *event_types: str) -> list[SchemaEvent]:
    """A submission of `version` in `status`, and the events recorded about it."""
    submission = SchemaSubmission.objects.create(
        source="api",
        envelope=two_table_envelope(version),
        schema_version=version,
        schema_hash=version.ljust(64, "0"),
        tenant_id="t_001",
        status=status,
        http_status=None if status == "received" else Status(status).http_status,
    )
    return [events.record(submission, event_type) for event_type in event_types]


def attempt(event: SchemaEvent, times: int = 1) -> None:
    for _ in range(times):
        delivery.attempt(event.pk, trigger=WORKER, timeout=5)


def test_an_operator_reads_the_backlog_and_re_sends_a_dead_event(
    page, live_server, receiver, settings, screenshot
):
    settings.WF11_MAX_ATTEMPTS = 3
    base = live_server.url
    # Delivered while the receiver took them.
    approved = ("schema_migration_pending_approval", "schema_migration_approved")
    for made in recorded("040", "applied", *approved):
        attempt(made)
    for made in recorded("041", "applied", "schema_migration_applied"):
        attempt(made)
    # Refused three times: dead.
    receiver.mode = "error"
    [dead] = recorded("042", "failed", "schema_migration_failed")
    attempt(dead, times=3)
    # The receiver is down: these wait, pending.
    receiver.stop()
    waiting = recorded("043", "received", *approved)
    for made in waiting:
        attempt(made)

    log_in(page, base, staff("root", superuser=True))
    page.goto(f"{base}/admin/revos_schema/schemaevent/")
    page.click("#toggle-nav-sidebar")  # the list's columns, all in view
    counts = page.locator("#wf106-backlog-counts").inner_text()
    assert re.search(r"2 pending \(oldest from .* UTC, .* ago\), 1 dead", counts)
    assert "Failing since" in page.locator("#wf106-receiver").inner_text()
    assert page.locator("#result_list .wf106-delivery-delivered").count() == 3
    assert page.locator("#result_list .wf106-delivery-pending").count() == 2
    assert page.locator("#result_list .wf106-delivery-dead").count() == 1
    screenshot(page, "events")

    # The dead event's page: three refused attempts, newest first.
    receiver.mode = "ok"
    receiver.start()
    page.goto(f"{base}/admin/revos_schema/schemaevent/{dead.pk}/change/")
    assert page.locator("#deliveries-group tbody tr.has_original").count() == 3
    page.click("#wf106-resend")
    page.wait_for_selector(".messagelist .success")
    assert "1 of 1 delivered" in page.locator(".messagelist").inner_text()
    rows = page.locator("#deliveries-group tbody tr.has_original")
    assert rows.count() == 4
    assert "Re-sent by an operator" in rows.first.inner_text()
    assert page.locator(".field-delivery_state .wf106-delivery-delivered").count() == 1
    screenshot(page, "event-attempts")

    # The same webhook-id all four times: the receiver de-duplicates by it.
    assert receiver.ids()[-1] == dead.webhook_id
    assert receiver.ids().count(dead.webhook_id) == 4
    assert all(got.verified for got in receiver.received)
    dead.refresh_from_db()
    assert dead.delivery_status == SchemaEvent.Delivery.DELIVERED
