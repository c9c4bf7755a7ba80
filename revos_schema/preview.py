"""What the admin shows of a plan: its operations, the SQL highlighted, the tables, a diagram.

Pure functions of a plan (its normalized schema as `Schema.to_dict()` gives it, the request's
raw payload, its SQL, its operations in their JSON form (`Operation.to_dict()`) and warnings);
`revos_schema.targetcheck` gathers them, planned against the target database when it can be
read. The HTML they return is built here, on the server: the SQL through Pygments with inline
styles, the diagram as inline SVG, so the pages need no script and no stylesheet from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from django.utils.safestring import SafeString, mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers.sql import PostgresLexer

from builder.schema.names import to_snake_case

# The columns the builder adds to every table (`tenant_id` only to tenant-scoped ones), unless
# the request defines a column of that name itself.
AUTO_COLUMNS = ("id", "tenant_id", "created_at", "updated_at", "deleted_at")


@dataclass(frozen=True)
class ColumnView:
    name: str
    type: str
    not_null: bool
    default: str | None
    unique: bool
    primary_key: bool
    references: tuple[str, str, str] | None  # (table, column, on_delete)
    auto: bool

    @property
    def reference_text(self) -> str:
        if self.references is None:
            return ""
        table, column, on_delete = self.references
        return f"{table}.{column} (on delete {on_delete.lower()})"


@dataclass(frozen=True)
class IndexView:
    name: str
    columns: tuple[str, ...]
    unique: bool
    auto: bool


@dataclass(frozen=True)
class TableView:
    name: str
    tenant_scoped: bool
    columns: tuple[ColumnView, ...]
    indexes: tuple[IndexView, ...]


@dataclass(frozen=True)
class Edge:
    """A reference: `source.column` -> `target.target_column`."""

    source: str
    column: str
    target: str
    target_column: str
    on_delete: str


RISKS = ("safe", "review", "destructive")

IN_TRANSACTION = "in the transaction"
AFTER_COMMIT = "after COMMIT"
NOT_RUN = "not run (blocker)"


def where_it_runs(operation: Mapping[str, Any]) -> str:
    """Where an operation's statements run: in the apply's transaction, after its COMMIT, both."""
    inside = bool(operation.get("sql"))
    after = bool(operation.get("after_commit"))
    if inside and after:
        return f"{IN_TRANSACTION}, then {AFTER_COMMIT}"
    if after:
        return AFTER_COMMIT
    return IN_TRANSACTION if inside else NOT_RUN


@dataclass(frozen=True)
class OperationView:
    """One operation of a plan, as a row of the preview."""

    description: str
    risk: str
    rule: str | None
    reason: str
    where: str
    blocker: str | None
    table: str


@dataclass(frozen=True)
class PlanView:
    """The operations of a plan, its level of risk, what the gate decides, and its notes.

    `source` says what the plan was made against, in words (the target database now, the
    target when the request was held, or an empty database).
    """

    operations: tuple[OperationView, ...]
    risk: str
    notes: tuple[str, ...]
    decision: str
    decision_text: str
    source: str
    against_target: bool
    # Squawk's findings on the plan's SQL (`builder.sql.squawk.Finding`); None where it did not
    # run (a stored plan, or no executable).
    squawk: tuple[Any, ...] | None = None

    @property
    def blockers(self) -> tuple[OperationView, ...]:
        return tuple(op for op in self.operations if op.blocker)

    @property
    def after_commit(self) -> bool:
        return any(AFTER_COMMIT in op.where for op in self.operations)


def operation_view(operation: Mapping[str, Any]) -> OperationView:
    """The row of one operation in its JSON form (`Operation.to_dict()`)."""
    risk = str(operation.get("risk") or "safe")
    return OperationView(
        description=str(operation.get("description") or operation.get("action") or ""),
        risk=risk if risk in RISKS else "review",
        rule=operation.get("rule") or None,
        reason=str(operation.get("reason") or ""),
        where=where_it_runs(operation),
        blocker=operation.get("blocker") or None,
        table=str(operation.get("table") or ""),
    )


def plan_view(
    operations: Iterable[Mapping[str, Any]],
    *,
    risk: str,
    notes: Iterable[str] = (),
    decision: str = "",
    decision_text: str = "",
    source: str = "",
    against_target: bool = False,
    squawk: Iterable[Any] | None = None,
) -> PlanView:
    return PlanView(
        operations=tuple(operation_view(op) for op in operations),
        risk=risk,
        notes=tuple(notes),
        decision=decision,
        decision_text=decision_text,
        source=source,
        against_target=against_target,
        squawk=None if squawk is None else tuple(squawk),
    )


@dataclass(frozen=True)
class Preview:
    sql: str
    sql_html: SafeString
    tables: tuple[TableView, ...]
    edges: tuple[Edge, ...]
    svg: SafeString
    warnings: tuple[str, ...]
    # Whether the warnings include what the target holds now (they do while a plan waits).
    target_checked: bool = False
    # The plan's operations (None for a plan stored without them).
    plan: PlanView | None = None
    # Why the plan shown is not one made against the target now (it could not be read).
    fallback: str = ""


def build_preview(
    normalized: Mapping[str, Any],
    payload: object,
    sql: str,
    warnings: Iterable[str] = (),
    *,
    target_checked: bool = False,
    plan: PlanView | None = None,
    fallback: str = "",
) -> Preview:
    """Everything the preview shows of one plan."""
    tables = tables_of(normalized, payload)
    edges = edges_of(tables)
    return Preview(
        sql=sql,
        sql_html=highlight_sql(sql),
        tables=tables,
        edges=edges,
        svg=diagram_svg(tables, edges),
        warnings=tuple(warnings),
        target_checked=target_checked,
        plan=plan,
        fallback=fallback,
    )


# --- the SQL ----------------------------------------------------------------------------------

_FORMATTER = HtmlFormatter(noclasses=True, style="default", wrapcode=True, cssclass="wf106-sql")


def highlight_sql(sql: str) -> SafeString:
    """The SQL as highlighted HTML with inline styles (a `<pre>` in a scrolling block).

    The block sets its own colours, so it reads the same in the admin's light and dark themes.
    """
    body = highlight(sql, PostgresLexer(), _FORMATTER)
    return mark_safe(  # noqa: S308 (Pygments escapes the SQL text)
        '<div class="wf106-sql-block" style="color:#1f2328;background:#f8f8f8;'
        "border:1px solid #d0d7de;border-radius:4px;padding:0 8px;overflow:auto;"
        f'max-height:60em;font-size:12px">{body}</div>'
    )


# --- the normalized tables --------------------------------------------------------------------


def tables_of(normalized: Mapping[str, Any], payload: object) -> tuple[TableView, ...]:
    """The normalized tables, with the columns and indexes the builder added marked `auto`.

    A column is automatic when it is one of `AUTO_COLUMNS` and the request's table has no column
    of that name (after snake_case); the automatic indexes come first in a table's indexes,
    before the request's own, as `builder.schema.normalize` puts them.
    """
    raw_tables = payload.get("tables") if isinstance(payload, Mapping) else None
    raw_list = raw_tables if isinstance(raw_tables, list) else []
    views = []
    for position, table in enumerate(normalized.get("tables") or []):
        raw = raw_list[position] if position < len(raw_list) else None
        raw = raw if isinstance(raw, Mapping) else {}
        given = {
            to_snake_case(c["name"])
            for c in _list(raw.get("columns"))
            if isinstance(c, Mapping) and isinstance(c.get("name"), str)
        }
        indexes = table.get("indexes") or []
        automatic_indexes = max(len(indexes) - len(_list(raw.get("indexes"))), 0)
        views.append(
            TableView(
                name=table["name"],
                tenant_scoped=bool(table.get("tenant_scoped", True)),
                columns=tuple(
                    _column_view(c, auto=c["name"] in AUTO_COLUMNS and c["name"] not in given)
                    for c in table.get("columns") or []
                ),
                indexes=tuple(
                    IndexView(
                        name=i["name"],
                        columns=tuple(i["columns"]),
                        unique=bool(i.get("unique")),
                        auto=k < automatic_indexes,
                    )
                    for k, i in enumerate(indexes)
                ),
            )
        )
    return tuple(views)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _column_view(column: Mapping[str, Any], *, auto: bool) -> ColumnView:
    ref = column.get("references")
    return ColumnView(
        name=column["name"],
        type=column["type"],
        not_null=bool(column.get("not_null")),
        default=column.get("default"),
        unique=bool(column.get("unique")),
        primary_key=bool(column.get("primary_key")),
        references=None if not ref else (ref["table"], ref["column"], ref["on_delete"]),
        auto=auto,
    )


def edges_of(tables: Sequence[TableView]) -> tuple[Edge, ...]:
    """One edge per reference, in table and column order."""
    return tuple(
        Edge(table.name, column.name, *column.references)
        for table in tables
        for column in table.columns
        if column.references is not None
    )


# --- the diagram ------------------------------------------------------------------------------

BOX_WIDTH = 270
HEADER_HEIGHT = 26
ROW_HEIGHT = 18
BOX_PADDING = 6
GAP_X = 100
GAP_Y = 50
MARGIN = 20
# Room on the right for the loops of references between tables in one column of the grid.
LOOP_ROOM = 70
PER_ROW = 3
NAME_CHARS = 22
TYPE_CHARS = 15

_INK = "#1f2328"
_MUTED = "#6e7781"
_EDGE = "#0969da"


@dataclass(frozen=True)
class _Box:
    x: int
    y: int
    height: int
    table: TableView

    def row_y(self, column: str) -> float:
        """The vertical middle of `column`'s row (the header's, for a column it lacks)."""
        names = [c.name for c in self.table.columns]
        if column not in names:
            return self.y + HEADER_HEIGHT / 2
        return self.y + HEADER_HEIGHT + ROW_HEIGHT * names.index(column) + ROW_HEIGHT / 2


def _layout(tables: Sequence[TableView]) -> list[_Box]:
    """Tables left to right, `PER_ROW` to a row, in request order; each row as tall as its
    tallest table."""
    boxes = []
    y = MARGIN
    for start in range(0, len(tables), PER_ROW):
        row = tables[start : start + PER_ROW]
        heights = [HEADER_HEIGHT + ROW_HEIGHT * len(t.columns) + BOX_PADDING for t in row]
        for offset, (table, height) in enumerate(zip(row, heights, strict=True)):
            x = MARGIN + offset * (BOX_WIDTH + GAP_X)
            boxes.append(_Box(x, y, height, table))
        y += max(heights) + GAP_Y
    return boxes


def diagram_svg(tables: Sequence[TableView], edges: Sequence[Edge] | None = None) -> SafeString:
    """An SVG diagram: a box per table with its columns, an arrow per reference.

    The layout is a fixed grid in request order, so the same plan always draws the same picture.
    Automatic columns are grey and italic; a reference runs from its column's row to the
    referenced column's row. Each table's box is a `<g class="wf106-table">` and each reference
    a `<path class="wf106-edge">`, both with `data-` attributes naming what they show.
    """
    edges = edges_of(tables) if edges is None else edges
    boxes = _layout(tables)
    by_name = {box.table.name: box for box in boxes}
    columns_used = min(len(tables), PER_ROW) or 1
    width = 2 * MARGIN + columns_used * BOX_WIDTH + (columns_used - 1) * GAP_X + LOOP_ROOM
    height = max((box.y + box.height for box in boxes), default=MARGIN) + MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wf106-diagram" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Diagram of {len(tables)} tables and {len(edges)} references" '
        'font-family="ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" font-size="11">',
        "<defs>"
        '<marker id="wf106-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{_EDGE}"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    parts.extend(_table_svg(box) for box in boxes)
    for edge in edges:
        source, target = by_name.get(edge.source), by_name.get(edge.target)
        if source is not None and target is not None:
            parts.append(_edge_svg(edge, source, target))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every name and type is escaped in the parts)


def _table_svg(box: _Box) -> str:
    table = box.table
    x, y = box.x, box.y
    tag = "" if table.tenant_scoped else " (global)"
    parts = [
        f'<g class="wf106-table" data-table="{_attr(table.name)}">',
        f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{box.height}" rx="4" '
        f'fill="#ffffff" stroke="{_INK}" stroke-width="1.2"/>',
        f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{HEADER_HEIGHT}" rx="4" '
        'fill="#ddf4ff" stroke="none"/>',
        f'<line x1="{x}" y1="{y + HEADER_HEIGHT}" x2="{x + BOX_WIDTH}" y2="{y + HEADER_HEIGHT}" '
        f'stroke="{_INK}" stroke-width="0.8"/>',
        f'<text x="{x + 8}" y="{y + 17}" font-size="13" font-weight="bold" fill="{_INK}">'
        f"{_text(_short(table.name, 30))}{_text(tag)}</text>",
    ]
    for number, column in enumerate(table.columns):
        row_y = y + HEADER_HEIGHT + ROW_HEIGHT * number + 13
        colour = _MUTED if column.auto else _INK
        style = ' font-style="italic"' if column.auto else ""
        key = "PK" if column.primary_key else ("FK" if column.references else "")
        parts.append(
            f'<text x="{x + 6}" y="{row_y}" font-size="9" fill="{_EDGE}">{key}</text>'
            f'<text x="{x + 26}" y="{row_y}" fill="{colour}"{style}>'
            f"{_text(_short(column.name, NAME_CHARS))}</text>"
            f'<text x="{x + BOX_WIDTH - 8}" y="{row_y}" text-anchor="end" fill="{_MUTED}"'
            f"{style}>{_text(_short(column.type, TYPE_CHARS))}</text>"
        )
    parts.append("</g>")
    return "".join(parts)


def _edge_svg(edge: Edge, source: _Box, target: _Box) -> str:
    start_y = source.row_y(edge.column)
    end_y = target.row_y(edge.target_column)
    if target.x > source.x:  # to a table further right: leave right, enter left
        x1, x2 = source.x + BOX_WIDTH, target.x
        c1, c2 = x1 + GAP_X / 2, x2 - GAP_X / 2
    elif target.x < source.x:  # further left: leave left, enter right
        x1, x2 = source.x, target.x + BOX_WIDTH
        c1, c2 = x1 - GAP_X / 2, x2 + GAP_X / 2
    else:  # the same column of the grid, or the table itself: a loop on the right
        x1 = x2 = source.x + BOX_WIDTH
        c1 = c2 = x1 + LOOP_ROOM - 10
    path = f"M{x1},{start_y:g} C{c1:g},{start_y:g} {c2:g},{end_y:g} {x2},{end_y:g}"
    label = (
        f"{edge.source}.{edge.column} references {edge.target}.{edge.target_column} "
        f"(on delete {edge.on_delete.lower()})"
    )
    return (
        f'<path class="wf106-edge" data-from="{_attr(f"{edge.source}.{edge.column}")}" '
        f'data-to="{_attr(f"{edge.target}.{edge.target_column}")}" d="{path}" fill="none" '
        f'stroke="{_EDGE}" stroke-width="1.5" marker-end="url(#wf106-arrow)">'
        f"<title>{_text(label)}</title></path>"
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _text(text: str) -> str:
    return escape(text, quote=False)


def _attr(text: str) -> str:
    return escape(text, quote=True)
