"""The target database: the migration ledger, what its catalog holds, and the apply.

`ledger` owns the `schema_migrations` table; `catalog` reads the target's catalog; `apply`
runs a rendered migration in one transaction with its ledger row. This is the only part of the
builder that talks to PostgreSQL.
"""
