"""What applying a plan now would meet in the target database, in words, for its preview.

A plan's own answer says this only once it ran; an approver wants to know before deciding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from builder.db import catalog, ledger
from revos_schema import services


def warnings_for(normalized: Mapping[str, Any], schema_hash: str) -> list[str]:
    """Warnings about the target for the plan of `normalized` (a `Schema.to_dict()`): which of
    its tables exist already (`CREATE TABLE IF NOT EXISTS` leaves them as they are), what in
    them lets one tenant reach another's rows, and whether its version is applied already (the
    apply would be a noop or a conflict). A target that cannot be read is a warning too,
    never an error.
    """
    target_schema = services.builder_settings().target_schema
    tables = [str(t["name"]) for t in normalized.get("tables") or []]
    tenant_tables = [
        str(t["name"]) for t in normalized.get("tables") or [] if t.get("tenant_scoped", True)
    ]
    version = str(normalized.get("version") or "")
    try:
        with services.target_connection() as conn:
            existing = catalog.existing_relations(
                conn, target_schema, [*tables, ledger.LEDGER_TABLE]
            )
            found = [
                f"Table {name!r} exists already in the target: CREATE TABLE IF NOT EXISTS leaves "
                "it as it is, so its columns will not be changed."
                for name in tables
                if name in existing
            ]
            found += catalog.tenant_isolation_gaps(
                conn, target_schema, [t for t in tenant_tables if t in existing]
            )
            applied = (
                ledger.find_applied(conn, target_schema, version)
                if ledger.LEDGER_TABLE in existing
                else None
            )
    except psycopg.Error as exc:
        return [f"The target database could not be read, so it was not checked: {exc}"]
    if applied is not None:
        when = f"{applied.applied_at:%Y-%m-%d %H:%M} UTC"
        if applied.schema_hash == schema_hash:
            found.append(
                f"Version {version} was applied with this exact definition on {when}: applying "
                "it again changes nothing (noop)."
            )
        else:
            found.append(
                f"Version {version} was applied with a different definition on {when}: applying "
                "this one will be refused as a conflict. Use a new version."
            )
    return found
