"""gunicorn config for bench/http_webhook_trace.py: timestamps of the phases of each request.

Given to gunicorn with `--config`, it wraps a few functions of the webhook's path (`PROBES`)
in each worker, so that a call's start and end are recorded with `time.perf_counter()` and
the thread's name, and appends every request's events, as one JSON line, to the file named by
`WF106_TRACE_FILE`. A diagnostic, not for production: it assumes one request at a time (the
trace script sends its requests one after another on one connection), and a wrapper costs
about a microsecond per call.

A probe whose module or attribute is missing stops the worker (gunicorn then exits): a renamed
function fails the trace loudly instead of leaving a phase silently unmeasured.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import threading
import time
from typing import Any

# (module, class or None, function): the calls whose start and end are recorded. Each is
# patched where the code that calls it looks it up.
PROBES = (
    ("django.core.handlers.wsgi", "WSGIHandler", "__call__"),
    ("revos_schema.api", "WebhookTokenAuthentication", "authenticate"),
    ("builder.service", None, "_prepare"),
    ("builder.apply", None, "_run_script"),
    ("builder.apply", None, "_commit"),
    ("revos_schema.services", None, "_store_outcome"),
)

_events: list[tuple[float, str, str]] = []


def _mark(event: str) -> None:
    _events.append((time.perf_counter(), threading.current_thread().name, event))


def _wrap(owner: Any, name: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        _mark(f"start {name}")
        try:
            return original(*args, **kwargs)
        finally:
            _mark(f"end {name}")

    setattr(owner, name, traced)


def post_worker_init(worker: Any) -> None:
    for module_name, class_name, name in PROBES:
        module = importlib.import_module(module_name)
        _wrap(getattr(module, class_name) if class_name else module, name)


def pre_request(worker: Any, req: Any) -> None:
    _events.clear()
    _mark("start request")


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    _mark("end request")
    start = _events[0][0]
    record = {
        "status": resp.status_code,
        "events": [[round((t - start) * 1000, 3), thread, event] for t, thread, event in _events],
    }
    with open(os.environ["WF106_TRACE_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
