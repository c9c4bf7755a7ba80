"""Delivery of recorded events to `WF11_WEBHOOK_URL`, signed as Standard Webhooks are.

Each attempt POSTs the event's payload (`SchemaEvent.body`) with the headers `webhook-id` (the
same for every attempt of one event, for receivers to de-duplicate), `webhook-timestamp` and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the secret
`WF11_WEBHOOK_SECRET`, signed by the `standardwebhooks` package). Redirects are not followed.

- Right after an outcome commits, `deliver_now` attempts its events once, with the short
  `WF11_REQUEST_TIMEOUT_S`, and returns the attempts for the answer's `audit.external_calls`.
  For `WF11_RETRY_BASE_S` after the receiver failed, requests make no attempt: their events
  wait for the worker, and an outage costs one request a failed attempt now and then, not
  every request.
- `deliver_due` (`manage.py deliver_events`) attempts every event that is due, oldest first,
  with `WF11_WORKER_TIMEOUT_S`, and stops at the first failure (the receiver is down: the rest
  wait for the next pass). A failed attempt is retried after an exponential backoff; after
  `WF11_MAX_ATTEMPTS` attempts the event is `dead`.
- A receiver that answers 410 Gone gets nothing more (`EventReceiver.stopped_at`) until an
  operator resumes delivery to it; its events stay pending meanwhile.
- `resend` is an operator's attempt of one event, whatever its state.

Every attempt is recorded (`EventDelivery`) while the event's row is locked, so two processes
never send one event at the same time. Nothing is ever deleted: with no URL configured, events
are kept, pending.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from revos_schema.models import EventDelivery, EventReceiver, SchemaEvent

logger = logging.getLogger(__name__)

Trigger = EventDelivery.Trigger
PENDING = SchemaEvent.Delivery.PENDING
# How much of a receiver's answer is read (and then ignored).
_MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """What the receiver answered to one POST: its status code, or why there was none."""

    status_code: int | None
    error: str
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def post(url: str, secret: str, webhook_id: str, body: bytes, timeout: float) -> Answer:
    """POST `body` to `url`, signed.

    `timeout` bounds the connection and each read, and twice `timeout` the whole attempt: a
    receiver that answers byte by byte is hung up on then.
    """
    now = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "revos-schema",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }
    parts = urlsplit(url)
    kind = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    expired = threading.Event()
    deadline = threading.Timer(2 * timeout, _hang_up, args=(conn, expired))
    deadline.daemon = True
    started = time.monotonic()
    deadline.start()
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(_MAX_ANSWER_BYTES)
    except TimeoutError:
        return Answer(None, f"no answer within {timeout:g} s", _ms(started))
    except (OSError, HTTPException) as exc:
        if expired.is_set():
            return Answer(None, f"no whole answer within {2 * timeout:g} s", _ms(started))
        return Answer(None, f"{type(exc).__name__}: {exc}", _ms(started))
    finally:
        deadline.cancel()
        conn.close()
    status = response.status
    error = "" if 200 <= status < 300 else f"HTTP {status} {response.reason}".strip()
    if 300 <= status < 400:
        error += f" (redirect to {response.getheader('Location', '?')} not followed)"
    return Answer(status, error, _ms(started))


def _hang_up(conn: HTTPConnection, expired: threading.Event) -> None:
    """End an attempt that is still going at its deadline: its next read returns at once."""
    expired.set()
    with contextlib.suppress(OSError, AttributeError):  # closed meanwhile
        conn.sock.shutdown(socket.SHUT_RDWR)


def receiver(url: str) -> EventReceiver:
    """The record of the receiver at `url`."""
    found, _ = EventReceiver.objects.get_or_create(url=url)
    return found


def attempt(event_id: Any, *, trigger: str, timeout: float) -> EventDelivery | None:
    """Make one delivery attempt of an event and record it; None if none was made.

    None when no URL is configured, when another process is delivering the event, when it is
    no longer pending (an operator's re-send makes an attempt whatever its state), or when its
    receiver answered 410 Gone (an operator's re-send tries it anyway).
    """
    url = settings.WF11_WEBHOOK_URL
    if not url:
        return None
    with transaction.atomic():
        event = SchemaEvent.objects.select_for_update(skip_locked=True).filter(pk=event_id).first()
        if event is None:
            return None
        to = receiver(url)
        if trigger != Trigger.OPERATOR and (
            event.delivery_status != PENDING or to.stopped_at is not None
        ):
            return None
        answer = post(url, settings.WF11_WEBHOOK_SECRET, event.webhook_id, event.body(), timeout)
        now = timezone.now()
        _settle(event, to, answer, now)
        return EventDelivery.objects.create(
            event=event,
            attempted_at=now,
            url=url,
            trigger=trigger,
            status_code=answer.status_code,
            error=answer.error,
            duration_ms=answer.duration_ms,
            delivered=answer.delivered,
        )


def _settle(event: SchemaEvent, to: EventReceiver, answer: Answer, now: datetime) -> None:
    """Store what one attempt did to the event and to what is known of its receiver."""
    event.attempts += 1
    if answer.delivered:
        event.delivery_status = SchemaEvent.Delivery.DELIVERED
        event.delivered_at = now
        event.last_error = ""
        EventReceiver.objects.filter(pk=to.pk).update(
            failing_since=None,
            quiet_until=None,
            stopped_at=None,
            stopped_reason="",
            last_delivered_at=now,
        )
    elif answer.gone:
        # Not this event's failure: it waits, pending, for delivery to be resumed.
        event.last_error = f"{answer.error}: delivery to {to.url} is stopped"
        EventReceiver.objects.filter(pk=to.pk).update(
            stopped_at=now, stopped_reason=f"{answer.error} to event {event.webhook_id}"
        )
    else:
        if event.delivery_status != SchemaEvent.Delivery.DELIVERED:  # a re-send of a delivered one
            event.last_error = answer.error
        if event.delivery_status == PENDING and event.attempts >= settings.WF11_MAX_ATTEMPTS:
            event.delivery_status = SchemaEvent.Delivery.DEAD
        event.next_attempt_at = now + backoff(event.attempts)
        EventReceiver.objects.filter(pk=to.pk).update(
            failing_since=Coalesce("failing_since", Value(now)),
            quiet_until=now + timedelta(seconds=settings.WF11_RETRY_BASE_S),
        )
        logger.warning("delivering event %s failed: %s", event.webhook_id, answer.error)
    event.save(
        update_fields=[
            "attempts",
            "delivery_status",
            "delivered_at",
            "last_error",
            "next_attempt_at",
        ]
    )


def backoff(attempts: int) -> timedelta:
    """How long a pending event waits after its `attempts`-th failed attempt."""
    seconds = settings.WF11_RETRY_BASE_S * 2 ** min(attempts - 1, 32)
    return timedelta(seconds=min(seconds, settings.WF11_RETRY_MAX_S))


def deliver_now(events: list[SchemaEvent]) -> list[dict[str, Any]]:
    """Attempt the events of an outcome just stored; return the attempts as external calls.

    Inside a transaction (an outcome that may still roll back), the attempt waits for its
    commit and is not in the answer. Nothing is attempted while the receiver is stopped or
    quiet after a failure, or after the first attempt that fails: those events wait for
    `deliver_events`. It never raises: the outcome is stored already, and an event whose
    delivery broke (logged) waits, pending, as well.
    """
    if not events or not settings.WF11_WEBHOOK_URL:
        return []
    if connection.in_atomic_block:
        transaction.on_commit(lambda: deliver_now(events))
        return []
    try:
        return _deliver_now(events)
    except Exception:
        logger.exception("delivering the events %s failed", [e.webhook_id for e in events])
        return []


def _deliver_now(events: list[SchemaEvent]) -> list[dict[str, Any]]:
    to = receiver(settings.WF11_WEBHOOK_URL)
    if to.stopped_at is not None or (to.quiet_until and to.quiet_until > timezone.now()):
        return []
    calls = []
    for event in events:
        made = attempt(event.pk, trigger=Trigger.REQUEST, timeout=settings.WF11_REQUEST_TIMEOUT_S)
        if made is None:
            continue
        calls.append(external_call(event, made))
        if not made.delivered:
            break
    return calls


def external_call(event: SchemaEvent, made: EventDelivery) -> dict[str, Any]:
    """An attempt as the answer's `audit.external_calls` lists it."""
    return {
        "service": "wf11",
        "event_type": event.event_type,
        "webhook_id": event.webhook_id,
        "status_code": made.status_code,
        "delivered": made.delivered,
        "latency_ms": made.duration_ms,
        **({"error": made.error} if made.error else {}),
    }


@dataclass
class PassReport:
    """What one pass of `deliver_due` did, and what is left."""

    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    skipped: str = ""
    more: bool = False  # the pass took as many events as it may: more may be due


# The most events one call of deliver_due attempts.
BATCH = 500


def deliver_due() -> PassReport:
    """Attempt the pending events that are due, oldest first (at most `BATCH`); stop at the
    first failure."""
    report = PassReport()
    url = settings.WF11_WEBHOOK_URL
    if not url:
        report.skipped = "WF11_WEBHOOK_URL is not set: events are kept, not delivered."
        return report
    to = receiver(url)
    if to.stopped_at is not None:
        report.skipped = (
            f"Delivery to {url} is stopped since {to.stopped_at:%Y-%m-%d %H:%M:%S} "
            f"({to.stopped_reason}); an operator resumes it in the admin."
        )
        return report
    due = (
        SchemaEvent.objects.filter(delivery_status=PENDING, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at", "created_at")
        .values_list("pk", flat=True)[:BATCH]
    )
    due_ids = list(due)
    report.more = len(due_ids) == BATCH
    for event_id in due_ids:
        made = attempt(event_id, trigger=Trigger.WORKER, timeout=settings.WF11_WORKER_TIMEOUT_S)
        if made is None:
            continue
        webhook_id = made.event.webhook_id
        if made.delivered:
            report.delivered.append(webhook_id)
            continue
        report.failed.append((webhook_id, made.error))
        if made.event.delivery_status == SchemaEvent.Delivery.DEAD:
            report.dead.append(webhook_id)
        report.more = False
        break
    return report


def resend(event_id: Any) -> EventDelivery | None:
    """An operator's attempt of one event, whatever its state; None if none could be made.

    It is made within the operator's request, with the request's timeout.
    """
    return attempt(event_id, trigger=Trigger.OPERATOR, timeout=settings.WF11_REQUEST_TIMEOUT_S)


def resume(url: str) -> bool:
    """Resume delivery to a receiver that answered 410 Gone; False if it was not stopped."""
    return bool(
        EventReceiver.objects.filter(url=url, stopped_at__isnull=False).update(
            stopped_at=None, stopped_reason="", quiet_until=None
        )
    )


@dataclass(frozen=True)
class Backlog:
    """The events not delivered: how many, since when, and how many are dead."""

    pending: int
    dead: int
    oldest_pending: datetime | None


def backlog() -> Backlog:
    pending = SchemaEvent.objects.filter(delivery_status=PENDING)
    oldest = pending.order_by("created_at").values_list("created_at", flat=True).first()
    dead = SchemaEvent.objects.filter(delivery_status=SchemaEvent.Delivery.DEAD).count()
    return Backlog(pending=pending.count(), dead=dead, oldest_pending=oldest)


def _ms(since: float) -> int:
    return round((time.monotonic() - since) * 1000)
