"""The app's PostgreSQL backend (`base.DatabaseWrapper`) and the check both connection kinds use.

Django's health check (`CONN_HEALTH_CHECKS`) and the target pool's check each sent a query on
every request, to find connections that the server ended while they were idle (a restart,
`pg_terminate_backend`, `idle_session_timeout`). A server that ends a session sends its FATAL
error and closes the socket, so the socket of such a connection has something to read. `quiet`
looks at the socket without a round trip, and the query is sent only when it is not quiet.
"""

from __future__ import annotations

import select
from typing import Any

from psycopg import pq


def quiet(conn: Any) -> bool:
    """Tell whether the idle `psycopg` connection `conn` has nothing to read: no message, no EOF.

    False also for a connection that is closed, broken, or in a transaction: those are left to
    the full check.
    """
    if conn.closed or conn.broken or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return False
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)
