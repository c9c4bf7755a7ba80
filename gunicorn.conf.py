"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py revos_schema.wsgi`.

Meant to run behind a reverse proxy that buffers requests (nginx, see the README's "Running in
production"). gunicorn's threaded worker reads a request's headers and body on one of its threads;
the worker class below disconnects a client that stays silent for WF106_CLIENT_TIMEOUT_S seconds,
but a client that keeps sending a little at a time still holds its thread: the proxy is what
bounds slow clients, these settings bound what reaches gunicorn. Command-line options override
them (e.g. `--bind 127.0.0.1:9000`).
"""

import os

# Processes x threads: each thread serves one request at a time. WEB_CONCURRENCY is the usual
# way to size the number of processes per host.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = 4
# gunicorn's gthread worker, except that every read and write on a client's socket gives up
# after WF106_CLIENT_TIMEOUT_S seconds of silence. gthread itself reads the rest of a request
# that has begun with no timeout: as many clients as there are threads, stalled in the middle of
# a request, would leave none to serve anyone.
worker_class = "revos_schema.gunicorn_worker.BoundedThreadWorker"

# The arbiter restarts a worker process whose main loop has been silent this long. It ends
# neither a slow request nor a stalled client (the worker class ends the latter): the worker's
# main loop keeps reporting while its threads wait.
timeout = 30
# After SIGTERM or SIGHUP, requests in flight get this long to finish before the worker is
# killed: longer than an apply's statement timeout (WF106_STATEMENT_TIMEOUT_MS, 120 s), so an
# apply in flight ends on its own. One cut off anyway is rolled back by PostgreSQL, or, if it
# had committed, settled later by `manage.py reconcile_submissions`.
graceful_timeout = 130
# An idle kept-alive connection is closed after this many seconds, and so is a new one that has
# sent nothing once gunicorn's own wait for its first bytes is over. Short: the proxy in front
# holds the clients' idle connections.
keepalive = 2

# Request line and header limits (gunicorn's defaults, stated here so that they are reviewed
# with the rest): larger requests are answered 414 or 431 before the application sees them.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
