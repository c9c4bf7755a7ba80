"""Identifier rules: snake_case normalization and generated names that fit in 63 bytes.

PostgreSQL silently truncates identifiers longer than NAMEDATALEN - 1 (63) bytes, so two long
generated names could end up identical. Every generated name goes through `truncate_name`, which
keeps a readable prefix and appends a short hash of the full name (like Django's `truncate_name`).
"""

from __future__ import annotations

import functools
import hashlib
import re

MAX_IDENTIFIER_BYTES = 63
IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]*$")

_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")
_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")
_ACRONYM_WORD = re.compile(r"([A-Z]+)([A-Z][a-z])")
_UNDERSCORES = re.compile(r"_+")


# Pure and called for every name: column names repeat across tables (`name`, `status`, ...).
@functools.lru_cache(maxsize=8192)
def to_snake_case(raw: str) -> str:
    """Return `raw` in snake_case: `displayName` -> `display_name`, `Chief Complaint` ->
    `chief_complaint`, `HTTPServer` -> `http_server`.

    The result may be empty or still invalid (for example non-ASCII input, or a leading digit);
    `is_valid_identifier` says whether it can be used.
    """
    text = raw.strip()
    if not text.isascii():
        # Keep the non-ASCII characters so that validation rejects the name instead of silently
        # dropping letters (`café` must not become `caf`).
        return text.lower()
    text = _ACRONYM_WORD.sub(r"\1_\2", text)
    text = _LOWER_UPPER.sub(r"\1_\2", text)
    text = _SEPARATORS.sub("_", text)
    text = _UNDERSCORES.sub("_", text).strip("_")
    return text.lower()


def is_valid_identifier(name: str) -> bool:
    """Return True if `name` is a snake_case ASCII identifier within 63 bytes."""
    return bool(IDENTIFIER_RE.match(name)) and len(name.encode()) <= MAX_IDENTIFIER_BYTES


def truncate_name(name: str, limit: int = MAX_IDENTIFIER_BYTES, hash_len: int = 8) -> str:
    """Shorten `name` to `limit` bytes with a hash suffix of the full name, if it is too long."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:hash_len]
    return f"{name[: limit - hash_len - 1]}_{digest}"


def index_name(table: str, columns: tuple[str, ...] | list[str]) -> str:
    """Return the generated name of an index on `columns` of `table`."""
    return truncate_name(f"idx_{table}_{'_'.join(columns)}")


def primary_key_name(table: str) -> str:
    """Return the name of the primary key constraint (and its index)."""
    return truncate_name(f"{table}_pkey")


def unique_constraint_name(table: str, column: str) -> str:
    """Return the name of the UNIQUE constraint (and its index) of a `unique` column."""
    return truncate_name(f"{table}_{column}_key")


def tenant_key_name(table: str) -> str:
    """Return the name of the UNIQUE (tenant_id, id) constraint of a tenant-scoped table.

    Composite foreign keys from other tenant-scoped tables reference it.
    """
    return truncate_name(f"{table}_tenant_id_id_key")


def foreign_key_name(table: str, column: str) -> str:
    """Return the name of the foreign key constraint of `column`."""
    return truncate_name(f"{table}_{column}_fkey")


def policy_name(table: str) -> str:
    """Return the name of the tenant isolation policy of `table`."""
    return truncate_name(f"{table}_tenant_isolation")


def updated_at_trigger_name(table: str) -> str:
    """Return the name of the trigger that maintains `updated_at` on `table`."""
    return truncate_name(f"{table}_set_updated_at")


UPDATED_AT_FUNCTION = "wf106_set_updated_at"
