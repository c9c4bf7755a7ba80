"""Check generated SQL with the real PostgreSQL parser (pglast, libpg_query) before it is run.

The generator only ever emits a handful of statement kinds, each as one statement. Anything else
(a second statement smuggled into one string, a syntax error, a kind the generator never emits, a
PL/pgSQL body doing something unexpected) is a builder bug and raises `UnsafeSQLError`.

Speed matters here (a schema of a thousand tables is about 12,000 statements), and most of the
cost of a naive check is not the C parser but Python decoding the JSON trees it returns. So the
trees are read as libpg_query writes them: the kind of each top-level statement and its position
in the script come straight from the JSON text, and only the statements that need a deeper look
(`ALTER TABLE`, `DO`, `CREATE FUNCTION`: small trees) are decoded. Every assumption about the
JSON's layout fails closed: if it does not hold, the check raises instead of passing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

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

EVOLUTION_STATEMENTS = ALLOWED_STATEMENTS | {"CreatePolicyStmt", "DropStmt"}
"""Top-level statement kinds of a plan that changes existing tables (`builder.evolve.plan`)."""

EVOLUTION_ALTER_TABLE_COMMANDS = ALLOWED_ALTER_TABLE_COMMANDS | {
    "AT_AddColumn",
    "AT_AlterColumnType",
    "AT_ColumnDefault",
    "AT_DropColumn",
    "AT_DropConstraint",
    "AT_DropNotNull",
    "AT_EnableTrig",
    "AT_SetNotNull",
    "AT_ValidateConstraint",
}
"""`ALTER TABLE` sub-commands of such a plan."""

EVOLUTION_DROP_OBJECTS = frozenset({"OBJECT_TABLE", "OBJECT_INDEX"})
"""What such a plan may drop (never with CASCADE)."""

# Top-level statements whose tree is decoded and looked into; the others are allowed by kind.
_DEEP_CHECKED = frozenset({"AlterTableStmt", "CreateFunctionStmt", "DoStmt"})

# Wraps a DO body so that libpg_query's PL/pgSQL parser (which only takes functions) can read it.
_DO_WRAPPER = "CREATE FUNCTION pg_temp.wf106_check() RETURNS void LANGUAGE plpgsql AS {body}"

# libpg_query's JSON: {"version":N,"stmts":[{"stmt":{"Kind":{...}},"stmt_location":L,
# "stmt_len":N}, ...]}, the location omitted when 0, the length when the statement runs to the
# end. Inside a JSON string every `"` is escaped, so `{"stmt":{"` only matches a real key.
_STATEMENT_START = re.compile(r'\{"stmt":\{"(\w+)":\{')
_SCRIPT_START = re.compile(r'\{"version":\d+,"stmts":\[')
_STATEMENT_END = re.compile(r'\}\}(?:,"stmt_location":(\d+))?(?:,"stmt_len":(\d+))?\}$')
# In a PL/pgSQL tree: every statement node, and the query of every plain SQL statement.
_PLPGSQL_STATEMENT = re.compile(r'\{"(PLpgSQL_stmt_\w+)":')
_EXECSQL_QUERY = re.compile(
    r'\{"PLpgSQL_stmt_execsql":\{(?:"lineno":\d+,)?"sqlstmt":\{"PLpgSQL_expr":\{"query":'
)
_JSON_DECODER = json.JSONDecoder()


class _Statement(NamedTuple):
    """One top-level statement of a parsed script: its kind, where its tree is in the parser's
    JSON output (`output[start:end]`, left undecoded), and its byte location and length in the
    script. `length` is None when libpg_query left it out (the statement runs to the end).
    """

    kind: str
    output: str
    start: int
    end: int
    location: int
    length: int | None

    def node(self) -> dict[str, Any]:
        """Decode this statement's tree (the value under its kind)."""
        try:
            node: dict[str, Any] = json.loads(self.output[self.start : self.end])["stmt"][self.kind]
        except (ValueError, KeyError, TypeError) as exc:
            raise UnsafeSQLError(f"unexpected parser output for a {self.kind}") from exc
        return node


def check_statements(statements: Sequence[str], *, evolution: bool = False) -> None:
    """Raise `UnsafeSQLError` unless every statement is one allowed, well-formed statement.

    The statements are parsed joined by `;` as one script, and each statement the parser finds
    must start and end exactly where one of ours does: a script built from them cannot merge two
    statements into one (a trailing line comment would swallow the `;`) or split one into two.
    Only when the script is wrong are the statements parsed one by one, to name the one at fault.
    `evolution` allows the statements that change existing tables as well.
    """
    try:
        parsed = _parse(";\n".join(statements))
    except ParseError as exc:
        _locate_problem(statements)
        raise UnsafeSQLError(f"statements joined: {exc}") from exc
    if len(parsed) != len(statements):
        _locate_problem(statements)
        raise UnsafeSQLError(
            f"statements joined: {len(statements)} statements parse as {len(parsed)}"
        )
    location = 0
    for index, (statement, found) in enumerate(zip(statements, parsed, strict=True)):
        size = len(statement.encode())
        try:
            if found.location != location or found.length not in (size, None):
                raise UnsafeSQLError("the parser does not see it as one whole statement")
            _check_statement(found, statement, evolution)
        except (ParseError, UnsafeSQLError) as exc:
            raise UnsafeSQLError(f"statements[{index}]: {exc}") from exc
        location += size + 2  # ";\n"


def _locate_problem(statements: Sequence[str]) -> None:
    """Raise `UnsafeSQLError` naming the first statement that is not exactly one statement."""
    for index, statement in enumerate(statements):
        try:
            _parse_one(statement, ALLOWED_STATEMENTS)
        except (ParseError, UnsafeSQLError) as exc:
            raise UnsafeSQLError(f"statements[{index}]: {exc}") from exc


def _parse(sql: str) -> list[_Statement]:
    """Return the top-level statements of `sql` without decoding their trees."""
    text = parse_sql_json(sql)
    if not _SCRIPT_START.match(text) or not text.endswith("]}"):
        raise UnsafeSQLError("unexpected parser output")
    starts = list(_STATEMENT_START.finditer(text))
    ends = [match.start() - 1 for match in starts[1:]] + [len(text) - 2] if starts else []
    statements = []
    for start, end in zip(starts, ends, strict=True):
        tail = _STATEMENT_END.search(text, max(start.end(), end - 64), end)
        if tail is None:
            raise UnsafeSQLError("unexpected parser output")
        location, length = tail.groups()
        statements.append(
            _Statement(
                kind=start.group(1),
                output=text,
                start=start.start(),
                end=end,
                location=int(location or 0),
                length=None if length is None else int(length),
            )
        )
    return statements


def _check_statement(found: _Statement, statement: str, evolution: bool = False) -> None:
    """Check one parsed top-level statement (`statement` is its text)."""
    if found.kind not in (EVOLUTION_STATEMENTS if evolution else ALLOWED_STATEMENTS):
        raise UnsafeSQLError(f"statement kind {found.kind} is not allowed")
    if found.kind == "DropStmt":
        _check_drop(found.node())
        return
    if found.kind not in _DEEP_CHECKED:
        return
    node = found.node()
    if found.kind == "AlterTableStmt":
        _check_alter_table(
            node, EVOLUTION_ALTER_TABLE_COMMANDS if evolution else ALLOWED_ALTER_TABLE_COMMANDS
        )
    elif found.kind == "DoStmt":
        _check_plpgsql(_DO_WRAPPER.format(body=_string_literal(_do_body(node))))
    else:
        if _option(node.get("options"), "language") != "plpgsql":
            raise UnsafeSQLError("only LANGUAGE plpgsql functions are allowed")
        _check_plpgsql(statement)


def _parse_one(statement: str, allowed: frozenset[str]) -> _Statement:
    """Parse `statement` as exactly one statement of an `allowed` kind."""
    parsed = _parse(statement)
    if len(parsed) != 1:
        raise UnsafeSQLError(f"expected exactly one statement, found {len(parsed)}")
    if parsed[0].kind not in allowed:
        raise UnsafeSQLError(f"statement kind {parsed[0].kind} is not allowed")
    return parsed[0]


def _check_alter_table(
    node: dict[str, Any], allowed: frozenset[str] = ALLOWED_ALTER_TABLE_COMMANDS
) -> None:
    for command in node.get("cmds", []):
        subtype = command["AlterTableCmd"]["subtype"]
        if subtype not in allowed:
            raise UnsafeSQLError(f"ALTER TABLE command {subtype} is not allowed")
        if command["AlterTableCmd"].get("behavior") == "DROP_CASCADE":
            raise UnsafeSQLError("CASCADE is not allowed")


def _check_drop(node: dict[str, Any]) -> None:
    if node.get("removeType") not in EVOLUTION_DROP_OBJECTS:
        raise UnsafeSQLError(f"DROP of {node.get('removeType')} is not allowed")
    if node.get("behavior") == "DROP_CASCADE":
        raise UnsafeSQLError("DROP ... CASCADE is not allowed")


def _check_plpgsql(function_sql: str) -> None:
    """Parse the PL/pgSQL body of `function_sql` and allow-list what it does.

    Every PL/pgSQL statement kind in the tree must be allowed, and the SQL of every plain SQL
    statement (`PLpgSQL_stmt_execsql`) is parsed in turn and allow-listed.
    """
    text = parse_plpgsql_json(function_sql)
    executed = 0
    for match in _PLPGSQL_STATEMENT.finditer(text):
        kind = match.group(1)
        if kind not in ALLOWED_PLPGSQL_STATEMENTS:
            raise UnsafeSQLError(f"PL/pgSQL statement {kind} is not allowed")
        executed += kind == "PLpgSQL_stmt_execsql"
    # raw_decode reads just the JSON value (the query string) that starts where the match ends.
    queries = [_JSON_DECODER.raw_decode(text, m.end())[0] for m in _EXECSQL_QUERY.finditer(text)]
    if len(queries) != executed or not all(isinstance(query, str) for query in queries):
        raise UnsafeSQLError("unexpected PL/pgSQL parser output")
    for query in queries:
        embedded = _parse_one(query, ALLOWED_EMBEDDED_STATEMENTS)
        if embedded.kind == "AlterTableStmt":
            _check_alter_table(embedded.node())


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
