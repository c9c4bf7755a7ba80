"""Drift: does the target database still hold what its ledger says was applied?

`python manage.py schema_verify` and the admin's drift page show the same report:
`builder.evolve.verify.verify_database` folds the ledger's applied versions into the tables they
leave and compares the live catalog with them (a missing column or index, a disabled row level
security or trigger, a dropped policy, a key left unvalidated).
"""

from __future__ import annotations

from builder.evolve.verify import DriftReport, verify_database
from revos_schema import services


def drift_report() -> DriftReport:
    """Verify the target database against its ledger (raise `psycopg.Error` if unreachable)."""
    with services.target_connection() as conn:
        return verify_database(conn, services.builder_settings().target_schema)


def summary(report: DriftReport, target_schema: str) -> str:
    """One sentence: what was verified and whether it holds."""
    if not report.versions:
        return (
            f"The ledger of the target schema {target_schema!r} records no applied version with "
            "its schema: there is nothing to verify."
        )
    count = len(report.versions)
    read = (
        f"{count} applied version{'s' if count != 1 else ''} ({', '.join(report.versions)}), "
        f"{len(report.tables)} table{'s' if len(report.tables) != 1 else ''}"
    )
    if report.ok:
        return f"No drift in the target schema {target_schema!r}: it holds {read} as applied."
    found = len(report.differences)
    return (
        f"The target schema {target_schema!r} differs from {read}: {found} "
        f"difference{'s' if found != 1 else ''}."
    )


def report_lines(report: DriftReport, target_schema: str) -> list[str]:
    """The report as text: the versions read, each difference, then the unverifiable versions."""
    lines = [summary(report, target_schema)]
    if report.versions:
        lines += ["", f"Versions read, in the order applied: {', '.join(report.versions)}"]
        lines.append(f"Tables: {', '.join(report.tables) or 'none'}")
    if report.differences:
        lines += ["", f"Differences ({len(report.differences)}):"]
        lines += [f"  - {difference}" for difference in report.differences]
    if report.unverifiable:
        lines += ["", f"Unverifiable ({len(report.unverifiable)}):"]
        lines += [f"  - {text}" for text in report.unverifiable]
    return lines
