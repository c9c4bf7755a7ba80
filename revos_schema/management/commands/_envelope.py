"""Reading a request envelope from a file (or `-` for standard input) for the schema commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import CommandError


def read_envelope(path: str) -> object:
    """Return the parsed JSON of `path`, or raise CommandError with a clear message."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror}", returncode=2) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path} is not valid JSON: {exc}", returncode=2) from exc
