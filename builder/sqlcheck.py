"""Check generated SQL with the real PostgreSQL parser (pglast, libpg_query) before it is run.

The generator only ever emits a handful of statement kinds, each as one statement. Anything else
(a second statement smuggled into one string, a syntax error, a kind the generator never emits, a
PL/pgSQL body doing something unexpected) is a builder bug and raises `UnsafeSQLError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from pglast.parser import ParseError, parse_plpgsql_json, parse_sql_json

from builder.errors import UnsafeSQLError

ALLOWED_STATEMENTS = frozenset(
    {
        "AlterTableStmt",
        "CreateFunctionStmt",
        "CreateStmt",
        "CreateTrigStmt",
        "DoStmt",
        "IndexStmt",
    }
)
"""Top-level statement kinds the generator emits."""

ALLOWED_EMBEDDED_STATEMENTS = frozenset({"AlterTableStmt", "CreatePolicyStmt"})
"""SQL statement kinds allowed inside a PL/pgSQL body (`DO` blocks, the trigger function)."""

ALLOWED_PLPGSQL_STATEMENTS = frozenset(
    {
        "PLpgSQL_stmt_assign",
        "PLpgSQL_stmt_block",
        "PLpgSQL_stmt_execsql",
        "PLpgSQL_stmt_if",
        "PLpgSQL_stmt_return",
    }
)
"""PL/pgSQL statement kinds allowed in a body (no dynamic EXECUTE, loops, RAISE, ...)."""

ALLOWED_ALTER_TABLE_COMMANDS = frozenset(
    {"AT_AddConstraint", "AT_EnableRowSecurity", "AT_ForceRowSecurity"}
)
"""`ALTER TABLE` sub-commands the generator emits."""

# Wraps a DO body so that libpg_query's PL/pgSQL parser (which only takes functions) can read it.
_DO_WRAPPER = "CREATE FUNCTION pg_temp.wf106_check() RETURNS void LANGUAGE plpgsql AS {body}"


def check_statements(statements: Sequence[str]) -> None:
    """Raise `UnsafeSQLError` unless every statement is one allowed, well-formed statement.

    Also parse the statements joined by `;`, so that a script built from them cannot merge two
    statements into one (a trailing line comment would swallow the `;`) or split one into two.
    The whole script is parsed once, and the trees are read as JSON straight from libpg_query:
    building pglast's Python node objects costs about 25 times more, which matters for schemas
    of a thousand tables. Only when the script is wrong are the statements parsed one by one, to
    name the one at fault.
    """
    try:
        nodes = _parse(";\n".join(statements))
    except ParseError as exc:
        _locate_problem(statements)
        raise UnsafeSQLError(f"statements joined: {exc}") from exc
    if len(nodes) != len(statements):
        _locate_problem(statements)
        raise UnsafeSQLError(
            f"statements joined: {len(statements)} statements parse as {len(nodes)}"
        )
    for index, node in enumerate(nodes):
        try:
            _check_node(node, statements[index])
        except (ParseError, UnsafeSQLError) as exc:
            raise UnsafeSQLError(f"statements[{index}]: {exc}") from exc


def _locate_problem(statements: Sequence[str]) -> None:
    """Raise `UnsafeSQLError` naming the first statement that is not exactly one statement."""
    for index, statement in enumerate(statements):
        try:
            _parse_one(statement, ALLOWED_STATEMENTS)
        except (ParseError, UnsafeSQLError) as exc:
            raise UnsafeSQLError(f"statements[{index}]: {exc}") from exc


def _parse(sql: str) -> list[dict[str, Any]]:
    """Return the statement nodes of `sql`, each `{Kind: {...}}`."""
    tree = json.loads(parse_sql_json(sql))
    return [raw["stmt"] for raw in tree.get("stmts", [])]


def _check_node(wrapped: dict[str, Any], statement: str) -> None:
    """Check one parsed top-level statement (`statement` is its text)."""
    [(kind, node)] = wrapped.items()
    if kind not in ALLOWED_STATEMENTS:
        raise UnsafeSQLError(f"statement kind {kind} is not allowed")
    if kind == "AlterTableStmt":
        _check_alter_table(node)
    elif kind == "DoStmt":
        _check_plpgsql(_DO_WRAPPER.format(body=_string_literal(_do_body(node))))
    elif kind == "CreateFunctionStmt":
        if _option(node.get("options"), "language") != "plpgsql":
            raise UnsafeSQLError("only LANGUAGE plpgsql functions are allowed")
        _check_plpgsql(statement)


def _parse_one(statement: str, allowed: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """Parse `statement` as exactly one statement of an `allowed` kind; return kind and node."""
    parsed = _parse(statement)
    if len(parsed) != 1:
        raise UnsafeSQLError(f"expected exactly one statement, found {len(parsed)}")
    [(kind, node)] = parsed[0].items()
    if kind not in allowed:
        raise UnsafeSQLError(f"statement kind {kind} is not allowed")
    return kind, node


def _check_alter_table(node: dict[str, Any]) -> None:
    for command in node.get("cmds", []):
        subtype = command["AlterTableCmd"]["subtype"]
        if subtype not in ALLOWED_ALTER_TABLE_COMMANDS:
            raise UnsafeSQLError(f"ALTER TABLE command {subtype} is not allowed")


def _check_plpgsql(function_sql: str) -> None:
    """Parse the PL/pgSQL body of `function_sql` and allow-list what it does."""
    tree = json.loads(parse_plpgsql_json(function_sql))
    for kind, value in _walk(tree):
        if kind.startswith("PLpgSQL_stmt_") and kind not in ALLOWED_PLPGSQL_STATEMENTS:
            raise UnsafeSQLError(f"PL/pgSQL statement {kind} is not allowed")
        if kind == "PLpgSQL_stmt_execsql":
            embedded_kind, embedded = _parse_one(
                value["sqlstmt"]["PLpgSQL_expr"]["query"], ALLOWED_EMBEDDED_STATEMENTS
            )
            if embedded_kind == "AlterTableStmt":
                _check_alter_table(embedded)


def _walk(tree: Any) -> Iterator[tuple[str, Any]]:
    """Yield `(key, value)` for every key of every dict nested in `tree`."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _walk(item)


def _do_body(node: dict[str, Any]) -> str:
    language = _option(node.get("args"), "language")
    if language is not None and language != "plpgsql":
        raise UnsafeSQLError(f"DO block in language {language} is not allowed")
    body = _option(node.get("args"), "as")
    if body is None:
        raise UnsafeSQLError("DO block without a body")
    return body


def _option(options: list[dict[str, Any]] | None, name: str) -> str | None:
    """Return the string value of the `DefElem` called `name` in `options`, or None."""
    for option in options or ():
        element = option["DefElem"]
        if element["defname"] == name:
            arg = element["arg"]
            if "List" in arg:  # CREATE FUNCTION ... AS 'body' is a list of strings
                arg = arg["List"]["items"][0]
            return str(arg["String"]["sval"])
    return None


def _string_literal(text: str) -> str:
    # libpg_query parses with standard_conforming_strings on: only `'` needs escaping.
    return "'" + text.replace("'", "''") + "'"
