"""Readers for the fields of caller JSON that record every problem instead of raising.

Each reader takes the object, the key, the path of the object and an `IssueLog`; it returns the
value (or a default) and logs a `ValidationIssue` when the value is missing or has the wrong JSON
type. `normalize` builds on these so that one pass reports every problem of a payload.

An optional field that is JSON `null` is treated as absent.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Mapping, Sequence

from builder.errors import ValidationIssue
from builder.schema import names

# PostgreSQL refuses user columns with the names of its system columns.
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.A)
# `dict` first: parsed JSON objects are dicts, and that check is much cheaper than the ABC's.
_OBJECT_TYPES = (dict, Mapping)


class IssueLog:
    """The issues found so far, in the order they were found."""

    def __init__(self) -> None:
        self.items: list[ValidationIssue] = []

    def add(self, path: str, code: str, message: str) -> None:
        """Record one issue."""
        self.items.append(ValidationIssue(path, code, message))

    def __bool__(self) -> bool:
        return bool(self.items)


def key_path(path: str, key: object) -> str:
    """Return the path of `key` inside the object at `path` (`payload.tables`)."""
    text = str(key)
    if _PLAIN_KEY.fullmatch(text):
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text)}]"


def json_type(value: object) -> str:
    """Return the JSON name of the type of `value`, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "an array"
    return type(value).__name__


def shown(text: str, limit: int = 60) -> str:
    """Return `text` quoted and shortened for a message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def as_object(value: object, path: str, log: IssueLog, what: str) -> Mapping[object, object] | None:
    """Return `value` if it is a JSON object, else log `invalid_type` and return None."""
    if isinstance(value, _OBJECT_TYPES):
        return value
    log.add(path, "invalid_type", f"{what} must be an object, not {json_type(value)}")
    return None


def check_keys(
    obj: Mapping[object, object], allowed: Collection[str], path: str, log: IssueLog
) -> None:
    """Log `unknown_field` for every key of `obj` that is not in `allowed`."""
    for key in obj:
        if key not in allowed:
            log.add(
                key_path(path, key),
                "unknown_field",
                f"unknown field {shown(str(key))}; allowed fields: {', '.join(allowed)}",
            )


def present(obj: Mapping[object, object], key: str) -> bool:
    """Return True if `key` is in `obj` and not null."""
    return obj.get(key) is not None


def read_bool(
    obj: Mapping[object, object], key: str, path: str, log: IssueLog, default: bool
) -> bool:
    """Return the optional boolean `key`, or `default` (logging `invalid_type` if it is not one)."""
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    message = f"{key} must be true or false, not {json_type(value)}"
    log.add(key_path(path, key), "invalid_type", message)
    return default


def read_string(
    obj: Mapping[object, object], key: str, path: str, log: IssueLog, *, required: bool
) -> str | None:
    """Return the string `key`; log `required` or `invalid_type` and return None otherwise."""
    value = obj.get(key)
    if value is None:
        if required:
            log.add(key_path(path, key), "required", f"{key} is required")
        return None
    if isinstance(value, str):
        return value
    message = f"{key} must be a string, not {json_type(value)}"
    log.add(key_path(path, key), "invalid_type", message)
    return None


def read_list(
    obj: Mapping[object, object],
    key: str,
    path: str,
    log: IssueLog,
    *,
    required: bool,
    limit: int,
    non_empty: bool = False,
) -> list[object]:
    """Return the array `key` (its first `limit` items), logging what is wrong with it."""
    value = obj.get(key)
    where = key_path(path, key)
    if value is None:
        if required:
            log.add(where, "required", f"{key} is required")
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        log.add(where, "invalid_type", f"{key} must be an array, not {json_type(value)}")
        return []
    if non_empty and not value:
        log.add(where, "empty", f"{key} must not be empty")
    if len(value) > limit:
        log.add(where, "too_many", f"{key} has {len(value)} entries; at most {limit} are allowed")
    return list(value[:limit])


def to_identifier(raw: str, path: str, log: IssueLog, what: str) -> str | None:
    """Return `raw` in snake_case if that is a valid identifier; log `invalid_name` otherwise."""
    name, problem = _checked_identifier(raw, what)
    if problem is None:
        return name
    _log_invalid_name(raw, problem, path, log, what)
    return None


def _log_invalid_name(raw: str, problem: str, path: str, log: IssueLog, what: str) -> None:
    log.add(path, "invalid_name", f"{what} name {shown(raw)} is not usable: {problem}")


# Pure and called for every table, column, index column and reference name of a payload; the
# same few names repeat across tables (`name`, `status`, `created_at`, ...).
@functools.lru_cache(maxsize=8192)
def _checked_identifier(raw: str, what: str) -> tuple[str, str | None]:
    """Return `(snake_case, problem)` for the raw name of a `what`; `problem` is None if usable."""
    name = names.to_snake_case(raw)
    problem = _identifier_problem(name)
    if problem is None and what == "column" and name in SYSTEM_COLUMNS:
        problem = "it is the name of a PostgreSQL system column"
    return name, problem


def _identifier_problem(name: str) -> str | None:
    """Say why the normalized `name` is not a valid identifier, or return None."""
    if not name:
        return "it has no letters or digits"
    if not name.isascii():
        return "only ASCII letters, digits and separators are allowed"
    if name[0].isdigit():
        return "it must not start with a digit"
    if len(name.encode()) > names.MAX_IDENTIFIER_BYTES:
        return f"it is longer than {names.MAX_IDENTIFIER_BYTES} bytes in snake_case"
    if not names.is_valid_identifier(name):
        return "only letters, digits and underscores are allowed"
    return None


def read_name(
    obj: Mapping[object, object],
    key: str,
    path: str,
    log: IssueLog,
    *,
    what: str,
    required: bool = True,
) -> tuple[str, str] | None:
    """Return `(original, snake_case)` for the name in `key`, or None (with issues logged)."""
    raw = read_string(obj, key, path, log, required=required)
    if raw is None:
        return None
    name, problem = _checked_identifier(raw, what)
    if problem is None:
        return raw, name
    # The path is only needed for the issue: build it then, not for every valid name.
    _log_invalid_name(raw, problem, key_path(path, key), log, what)
    return None
