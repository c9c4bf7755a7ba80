"""The schema: the caller's tables turned into a normalized, frozen `spec.Schema`.

`normalize.normalize_schema` reads `payload` (names in `names`, column types and defaults from
the allow lists in `sqltypes`, the cross-table checks in `drafts`) and returns the typed spec
that everything after it works on, or raises with every issue found.
"""
