"""SQL: the normalized schema rendered as idempotent DDL, and the parser check of every statement.

`render.render_migration` turns a `Schema` into statements through module-level templates (one
`render_*` function per kind of statement); `check.check_statements` parses each of them with
PostgreSQL's own parser (pglast) and refuses anything the builder does not mean to emit.
"""
