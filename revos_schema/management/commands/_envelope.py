"""Reading a request envelope from a file (or `-` for standard input) for the schema commands."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import CommandError

from builder.request.body import InvalidRequestJSON, parse_request_json


def read_envelope(path: str) -> object:
    """Return the parsed JSON of `path`, or raise CommandError with a clear message."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror}", returncode=2) from exc
    try:
        return parse_request_json(data)
    except InvalidRequestJSON as exc:
        raise CommandError(f"{path}: {exc}", returncode=2) from exc
