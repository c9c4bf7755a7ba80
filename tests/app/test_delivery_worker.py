"""`manage.py deliver_events --loop` as a worker process of its own, against a real receiver."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connection

from revos_schema.envvars import environment_without_settings
from revos_schema.models import SchemaEvent
from tests.app.test_delivery import make_event
from tests.app.test_deploy import database_url
from tests.receiver import SECRET, Receiver

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKER_CONNECTION = "revos-deliver-events-under-test"
WAIT_S = 30.0

# The worker sees committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def worker(receiver: Receiver, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = environment_without_settings()
    env.update(
        DATABASE_URL=f"{database_url()}?application_name={WORKER_CONNECTION}",
        DJANGO_SETTINGS_MODULE="revos_schema.settings",
        PYTHONPATH=str(PROJECT_ROOT),
        DEBUG="1",
        WF11_WEBHOOK_URL=receiver.url,
        WF11_WEBHOOK_SECRET=SECRET,
        WF11_RETRY_BASE_S="0",
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "deliver_events", "--loop", "--every", "0.2"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=WAIT_S)


def eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_the_worker_delivers_through_an_outage_and_a_lost_database_connection(receiver, tmp_path):
    log = tmp_path / "worker.log"
    with worker(receiver, log):
        first = make_event("001")
        assert eventually(lambda: receiver.ids() == [first.webhook_id]), log.read_text()

        # The receiver goes down while an event is recorded, then comes back.
        receiver.stop()
        second = make_event("002")
        assert eventually(lambda: SchemaEvent.objects.get(pk=second.pk).attempts >= 2)
        receiver.start()
        assert eventually(lambda: second.webhook_id in receiver.ids()), log.read_text()

        # The worker's connection to the app's database is cut (a failover, a restart).
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [WORKER_CONNECTION],
            )
            assert cursor.fetchall(), "the worker had no connection to cut"
        third = make_event("003")
        assert eventually(lambda: third.webhook_id in receiver.ids()), log.read_text()

    assert receiver.ids() == [first.webhook_id, second.webhook_id, third.webhook_id]
    assert all(got.verified for got in receiver.received)
    assert not SchemaEvent.objects.exclude(delivery_status="delivered").exists()
