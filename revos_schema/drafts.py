"""Schema drafts (the admin's authoring forms) to the request envelope and back.

Plain functions over the draft models:

- `envelope_of(draft)` is the request envelope a draft stands for (the admin's "Export JSON"),
  and `import_envelope(raw, user=...)` makes a draft of an envelope ("Import JSON"). Values are
  kept as written, so `envelope_of(import_envelope(x)) == x` for an envelope that says every
  optional key only when it differs from its default. What is changed on the way is cosmetic
  only, and the builder reads both forms alike: keys whose value is JSON null or the default
  (`"not_null": false`, `"tenant_scoped": true`, `"indexes": []`, `"dry_run": false`) are left
  out, a default given as a JSON number or boolean is written as text (`0` -> `"0"`), and
  `on_delete` is spelled in lower case with spaces (`SET_NULL` -> `"set null"`).
- `plan(draft)` runs the builder's validation and SQL rendering (`builder.pipeline.prepare`),
  and `field_for_path` maps each validation error's path to the form field it concerns.
- `submit(draft, user=...)` sends a valid draft to `services.submit_envelope`, held for an
  approver.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from django.db import transaction
from django.db.models import Model

from builder.errors import InvalidRequestJSON, ValidationIssue
from builder.pipeline import Outcome, Prepared, Rejected
from builder.request.body import find_unusable, parse_request_json
from builder.request.envelope import CONTEXT_KEYS, TOP_LEVEL_KEYS, VALIDATION_PROFILES
from builder.request.fields import json_type, key_path
from builder.schema.normalize import (
    COLUMN_KEYS,
    INDEX_KEYS,
    PAYLOAD_KEYS,
    REFERENCE_KEYS,
    TABLE_KEYS,
)
from builder.schema.spec import ON_DELETE_ACTIONS
from revos_schema import services
from revos_schema.models import (
    DraftColumn,
    DraftIndex,
    DraftTable,
    SchemaDraft,
    SchemaSubmission,
)

# The envelope's sections besides `payload`: kept whole in `SchemaDraft.envelope_extra`, except
# `context.validation_profile`, which is a field of its own.
EXTRA_SECTIONS = ("meta", "subject", "context")
EXECUTION_FLAGS = ("dry_run", "force_apply")
# Payload and table keys that a draft has no field for: an envelope that uses them (a list that
# is not empty, true) is not imported, rather than imported without them.
PAYLOAD_ONLY_KEYS = ("drop_tables", "allow_destructive")
TABLE_ONLY_KEYS = ("drop_columns", "drop_indexes")
# What a draft's text fields hold at most (the builder's own limits are lower for most of them,
# and it reports those next to the field).
MAX_TEXT = 255


class ImportRefused(Exception):
    """The envelope cannot be held by a draft; `problems` says why, one sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class DraftInvalid(Exception):
    """The builder finds problems in the draft (`issues`); nothing was submitted."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        super().__init__(f"the draft has {len(issues)} validation error(s)")
        self.issues = issues


# --- export -----------------------------------------------------------------------------------


def envelope_of(draft: SchemaDraft) -> dict[str, Any]:
    """Return the request envelope that `draft` stands for (a fresh, JSON-ready dict)."""
    extra = draft.envelope_extra if isinstance(draft.envelope_extra, dict) else {}
    envelope: dict[str, Any] = {
        key: copy.deepcopy(extra[key]) for key in ("meta", "subject") if key in extra
    }
    envelope["payload"] = payload_of(draft)
    context = extra.get("context")
    if context is not None or draft.validation_profile:
        context = copy.deepcopy(context) if isinstance(context, dict) else {}
        if draft.validation_profile:
            context["validation_profile"] = draft.validation_profile
        envelope["context"] = context
    return envelope


def export_json(draft: SchemaDraft) -> str:
    """Return the draft's envelope as indented JSON text, for a file."""
    return json.dumps(envelope_of(draft), indent=2, ensure_ascii=False) + "\n"


def payload_of(draft: SchemaDraft) -> dict[str, Any]:
    """Return the envelope's `payload`: the version, its description and the tables in order."""
    tables = draft.tables.order_by("position", "id").prefetch_related("columns", "indexes")
    return {
        "schema_version": draft.version,
        "description": draft.description,
        "tables": [_table_json(table) for table in tables],
    }


def _table_json(table: DraftTable) -> dict[str, Any]:
    result: dict[str, Any] = {"name": table.name}
    if not table.tenant_scoped:
        result["tenant_scoped"] = False
    result["columns"] = [_column_json(column) for column in table.columns.all()]
    indexes = [_index_json(index) for index in table.indexes.all()]
    if indexes:
        result["indexes"] = indexes
    return result


def _column_json(column: DraftColumn) -> dict[str, Any]:
    result: dict[str, Any] = {"name": column.name, "type": column.type}
    if column.not_null:
        result["not_null"] = True
    if column.unique:
        result["unique"] = True
    if column.default is not None:
        result["default"] = column.default
    if column.references_table is not None:
        reference = {"table": column.references_table}
        if column.references_column is not None:
            reference["column"] = column.references_column
        if column.on_delete is not None:
            reference["on_delete"] = column.on_delete
        result["references"] = reference
    return result


def _index_json(index: DraftIndex) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if index.name is not None:
        result["name"] = index.name
    result["columns"] = list(index.columns) if isinstance(index.columns, list) else index.columns
    if index.unique:
        result["unique"] = True
    return result


# --- import -----------------------------------------------------------------------------------


def import_json(text: bytes | str, *, user: Any = None) -> SchemaDraft:
    """Make a draft of an envelope file's text; raise `ImportRefused` if it cannot be one."""
    try:
        raw = parse_request_json(text)
    except InvalidRequestJSON as exc:
        raise ImportRefused([str(exc)]) from None
    return import_envelope(raw, user=user)


def import_envelope(raw: object, *, user: Any = None) -> SchemaDraft:
    """Make and store a draft of the request envelope `raw`, created by `user`.

    Only the shape is checked here (what the draft's fields can hold): an unknown key, a value of
    the wrong JSON type, a missing name or type, or a key that a draft has no field for (`dry_run`,
    `force_apply`, `allow_destructive` true, a drop list that is not empty) is refused with
    `ImportRefused`, listing every such problem. Whether names, types, defaults and references
    are valid is the builder's question: the draft keeps them as written, and the admin shows the
    builder's answer next to each field.
    """
    reader = _Reader()
    parsed = reader.envelope(raw)
    if reader.problems or parsed is None:
        raise ImportRefused(reader.problems or ["The file is not a request envelope."])
    draft, tables = parsed
    with transaction.atomic():
        draft.created_by = user if getattr(user, "is_authenticated", False) else None
        draft.save()
        for position, (table, columns, indexes) in enumerate(tables):
            table.draft = draft
            table.position = position
            table.save()
            for number, column in enumerate(columns):
                column.table, column.position = table, number
            DraftColumn.objects.bulk_create(columns)
            for number, index in enumerate(indexes):
                index.table, index.position = table, number
            DraftIndex.objects.bulk_create(indexes)
    return draft


_ParsedTable = tuple[DraftTable, list[DraftColumn], list[DraftIndex]]


class _Reader:
    """Reads an envelope into unsaved draft rows, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def envelope(self, raw: object) -> tuple[SchemaDraft, list[_ParsedTable]] | None:
        unusable = find_unusable(raw)
        if unusable is not None:
            self.problem("", unusable)
            return None
        body = self.mapping(raw, "", "The file")
        if body is None:
            return None
        self.keys(body, TOP_LEVEL_KEYS, "")
        draft = SchemaDraft(envelope_extra={}, validation_profile="")
        for section in EXTRA_SECTIONS:
            value = body.get(section)
            if value is None:
                continue
            obj = self.mapping(value, section, section)
            if obj is None:
                continue
            if section == "context":
                self.keys(obj, CONTEXT_KEYS, section)
                obj = dict(obj)
                profile = obj.pop("validation_profile", None)
                if profile is not None and profile not in VALIDATION_PROFILES:
                    where = "context.validation_profile"
                    allowed = ", ".join(VALIDATION_PROFILES)
                    self.problem(where, f"must be one of {allowed}, not {_shown(profile)}")
                elif profile is not None:
                    draft.validation_profile = profile
            draft.envelope_extra[section] = obj
        payload = self.mapping(body.get("payload"), "payload", "payload")
        if payload is None:
            return None
        return draft, self.payload(payload, draft)

    def payload(self, payload: Mapping[str, Any], draft: SchemaDraft) -> list[_ParsedTable]:
        self.keys(payload, PAYLOAD_KEYS, "payload")
        for flag in EXECUTION_FLAGS:
            if payload.get(flag) not in (None, False):
                self.problem(
                    f"payload.{flag}",
                    f"a draft does not carry {flag}: remove it from the file (a draft is "
                    "previewed and submitted in the admin)",
                )
        self.refuse_unheld(payload, PAYLOAD_ONLY_KEYS, "payload")
        draft.version = self.text(payload, "schema_version", "payload", required=True) or ""
        draft.description = (
            self.text(payload, "description", "payload", required=True, limit=None) or ""
        )
        tables = self.array(payload, "tables", "payload", required=True)
        parsed = [self.table(t, f"payload.tables[{i}]") for i, t in enumerate(tables)]
        return [table for table in parsed if table is not None]

    def table(self, raw: object, path: str) -> _ParsedTable | None:
        obj = self.mapping(raw, path, "a table")
        if obj is None:
            return None
        self.keys(obj, TABLE_KEYS, path)
        self.refuse_unheld(obj, TABLE_ONLY_KEYS, path)
        table = DraftTable(
            name=self.text(obj, "name", path, required=True) or "",
            tenant_scoped=self.flag(obj, "tenant_scoped", path, default=True),
        )
        raw_columns = self.array(obj, "columns", path, required=True)
        columns = [self.column(c, f"{path}.columns[{j}]") for j, c in enumerate(raw_columns)]
        raw_indexes = self.array(obj, "indexes", path, required=False)
        indexes = [self.index(x, f"{path}.indexes[{k}]") for k, x in enumerate(raw_indexes)]
        return (
            table,
            [c for c in columns if c is not None],
            [x for x in indexes if x is not None],
        )

    def column(self, raw: object, path: str) -> DraftColumn | None:
        obj = self.mapping(raw, path, "a column")
        if obj is None:
            return None
        self.keys(obj, COLUMN_KEYS, path)
        column = DraftColumn(
            name=self.text(obj, "name", path, required=True) or "",
            type=self.text(obj, "type", path, required=True) or "",
            not_null=self.flag(obj, "not_null", path, default=False),
            unique=self.flag(obj, "unique", path, default=False),
            default=self.default(obj.get("default"), key_path(path, "default")),
        )
        reference = obj.get("references")
        if reference is not None:
            where = key_path(path, "references")
            ref = self.mapping(reference, where, "references")
            if ref is not None:
                self.keys(ref, REFERENCE_KEYS, where)
                column.references_table = self.text(ref, "table", where, required=True) or ""
                column.references_column = self.text(ref, "column", where, required=False)
                column.on_delete = self.on_delete(ref.get("on_delete"), f"{where}.on_delete")
        return column

    def index(self, raw: object, path: str) -> DraftIndex | None:
        obj = self.mapping(raw, path, "an index")
        if obj is None:
            return None
        self.keys(obj, INDEX_KEYS, path)
        columns = self.array(obj, "columns", path, required=True)
        for m, name in enumerate(columns):
            if not isinstance(name, str):
                self.problem(f"{path}.columns[{m}]", f"must be a string, not {json_type(name)}")
        return DraftIndex(
            name=self.text(obj, "name", path, required=False),
            columns=columns,
            unique=self.flag(obj, "unique", path, default=False),
        )

    def refuse_unheld(self, obj: Mapping[str, Any], keys: tuple[str, ...], path: str) -> None:
        """Record each of `keys` that `obj` uses, since a draft cannot hold it."""
        for key in keys:
            value = obj.get(key)
            if value is not None and value is not False and value != []:
                self.problem(
                    key_path(path, key),
                    f"a draft does not carry {key}: remove it from the file, or send the file "
                    "to the webhook",
                )

    # Readers of one value: each returns something usable and records what is wrong.

    def mapping(self, value: object, path: str, what: str) -> Mapping[str, Any] | None:
        if isinstance(value, dict):
            return value
        if value is None and path:
            self.problem(path, "is missing")
        else:
            self.problem(path, f"{what} must be a JSON object, not {json_type(value)}")
        return None

    def keys(self, obj: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
        for key in obj:
            if key not in allowed:
                self.problem(
                    key_path(path, key), f"unknown field; allowed fields: {', '.join(allowed)}"
                )

    def text(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        required: bool,
        limit: int | None = MAX_TEXT,
    ) -> str | None:
        value = obj.get(key)
        where = key_path(path, key)
        if value is None:
            if required:
                self.problem(where, "is missing")
            return None
        if not isinstance(value, str):
            self.problem(where, f"must be a string, not {json_type(value)}")
            return None
        if limit is not None and len(value) > limit:
            self.problem(where, f"is longer than the {limit} characters a draft holds")
            return None
        return value

    def flag(self, obj: Mapping[str, Any], key: str, path: str, *, default: bool) -> bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key_path(path, key), f"must be true or false, not {json_type(value)}")
            return default
        return value

    def array(self, obj: Mapping[str, Any], key: str, path: str, *, required: bool) -> list[Any]:
        value = obj.get(key)
        if value is None:
            if required:
                self.problem(key_path(path, key), "is missing")
            return []
        if not isinstance(value, list):
            self.problem(key_path(path, key), f"must be an array, not {json_type(value)}")
            return []
        return value

    def default(self, value: object, path: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return json.dumps(value)
        self.problem(path, f"must be a string, number or boolean, not {json_type(value)}")
        return None

    def on_delete(self, value: object, path: str) -> str | None:
        if value is None:
            return None
        words = " ".join(value.replace("_", " ").split()).upper() if isinstance(value, str) else ""
        if words not in ON_DELETE_ACTIONS:
            allowed = ", ".join(action.lower() for action in ON_DELETE_ACTIONS)
            self.problem(path, f"must be one of {allowed}, not {_shown(value)}")
            return None
        return words.lower()


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def extra_problems(value: object) -> list[str]:
    """Say what is wrong with a value for `SchemaDraft.envelope_extra` (the admin form's check)."""
    if not isinstance(value, dict):
        return ['It must be a JSON object such as {"meta": {"tenant_id": "t_001"}}.']
    problems = []
    for key, section in value.items():
        if key not in EXTRA_SECTIONS:
            problems.append(f"Unknown key {key!r}: only {', '.join(EXTRA_SECTIONS)} are kept here.")
        elif not isinstance(section, dict):
            problems.append(f"{key} must be a JSON object, not {json_type(section)}.")
        elif key == "context" and "validation_profile" in section:
            problems.append("Set the validation profile with its own field, not in context.")
    return problems


# --- validation and the fields it concerns ----------------------------------------------------


def plan(draft: SchemaDraft) -> Prepared | Rejected:
    """Validate the draft and render its SQL as the builder would for the target."""
    return services.prepare_request(envelope_of(draft))


Part = Literal["draft", "table", "column", "index"]


@dataclass(frozen=True)
class FieldRef:
    """Where in a draft's forms an issue belongs.

    `table` is the table's place in `payload.tables` (0 for the first), `item` the column's or
    index's place in its table, and `field` the form field; None when the issue concerns the
    part as a whole (shown above its form).
    """

    part: Part
    table: int | None = None
    item: int | None = None
    field: str | None = None


DRAFT_FIELDS = {
    "payload.schema_version": "version",
    "payload.description": "description",
    "context.validation_profile": "validation_profile",
}
TABLE_FIELDS = {".name": "name", ".tenant_scoped": "tenant_scoped"}
COLUMN_FIELDS = {
    ".name": "name",
    ".type": "type",
    ".not_null": "not_null",
    ".unique": "unique",
    ".default": "default",
    # The reference as a whole (its column's type differs from the referenced column's).
    ".references": "references_table",
    ".references.table": "references_table",
    ".references.column": "references_column",
    ".references.on_delete": "on_delete",
}
INDEX_FIELDS = {".name": "name", ".columns": "columns", ".unique": "unique"}

_TABLE_PATH = re.compile(r"payload\.tables\[([0-9]+)\](.*)", re.S)
_ITEM_PATH = re.compile(r"\.(columns|indexes)\[([0-9]+)\](.*)", re.S)
_INDEX_COLUMN = re.compile(r"\.columns\[[0-9]+\]")


def field_for_path(path: str) -> FieldRef:
    """Map a validation issue's `path` (e.g. `payload.tables[1].columns[2].type`) to its field.

    Paths of the envelope's other sections (`meta.tenant_id`, `context.actor_id`) belong to the
    draft's `envelope_extra`; anything else that names no field of a part (`payload.tables`,
    `""`) belongs to that part as a whole.
    """
    if path in DRAFT_FIELDS:
        return FieldRef("draft", field=DRAFT_FIELDS[path])
    section = re.split(r"[.\[]", path, maxsplit=1)[0]
    if section in EXTRA_SECTIONS:
        return FieldRef("draft", field="envelope_extra")
    table_match = _TABLE_PATH.fullmatch(path)
    if table_match is None:
        return FieldRef("draft")
    table, rest = int(table_match[1]), table_match[2]
    item_match = _ITEM_PATH.fullmatch(rest)
    if item_match is None:
        return FieldRef("table", table, field=TABLE_FIELDS.get(rest))
    item, tail = int(item_match[2]), item_match[3]
    if item_match[1] == "columns":
        return FieldRef("column", table, item, COLUMN_FIELDS.get(tail))
    if _INDEX_COLUMN.fullmatch(tail):
        tail = ".columns"
    return FieldRef("index", table, item, INDEX_FIELDS.get(tail))


def plain_message(issue: ValidationIssue) -> str:
    """The issue's message as a sentence for the page (the builder's are lower-case clauses)."""
    message = issue.message.strip()
    if not message:
        return issue.code.replace("_", " ").capitalize() + "."
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "?", "!")) else message + "."


@dataclass(frozen=True)
class PlacedIssue:
    """One validation issue, where it belongs, and a label naming that place in words."""

    where: FieldRef
    label: str
    message: str
    issue: ValidationIssue


def placed_issues(draft: SchemaDraft, issues: list[ValidationIssue]) -> list[PlacedIssue]:
    """Place each issue on the draft, labelled with the names of its table, column or index."""
    tables = list(draft.tables.order_by("position", "id").prefetch_related("columns", "indexes"))
    placed = []
    for issue in issues:
        where = field_for_path(issue.path)
        placed.append(PlacedIssue(where, _label(where, tables), plain_message(issue), issue))
    return placed


def _label(where: FieldRef, tables: list[DraftTable]) -> str:
    parts: list[str] = []
    if where.table is not None:
        table = tables[where.table] if where.table < len(tables) else None
        parts.append(f"table {where.table + 1}" + (f" ({table.name})" if table else ""))
        if where.item is not None:
            items: list[Any] = []
            if table is not None:
                items = list(table.columns.all() if where.part == "column" else table.indexes.all())
            item = items[where.item] if where.item < len(items) else None
            name = str(item) if item is not None else ""
            parts.append(f"{where.part} {where.item + 1}" + (f" ({name})" if name else ""))
    if where.field is not None:
        models: dict[str, type[Model]] = {
            "draft": SchemaDraft,
            "table": DraftTable,
            "column": DraftColumn,
            "index": DraftIndex,
        }
        parts.append(str(models[where.part]._meta.get_field(where.field).verbose_name))
    return ", ".join(parts) if parts else "the draft"


# --- submitting -------------------------------------------------------------------------------


def submission_envelope(draft: SchemaDraft, user: Any) -> dict[str, Any]:
    """The envelope a submission of `draft` by `user` sends: the export, with `context.actor_id`
    set to the user's name unless the draft names an actor (kept as claimed; the ledger's
    `applied_by` is the user's account whatever the draft says)."""
    envelope = envelope_of(draft)
    context = envelope.setdefault("context", {})
    if isinstance(context, dict) and context.get("actor_id") is None:
        context["actor_id"] = user.get_username()
    return envelope


def submit(draft: SchemaDraft, *, user: Any) -> tuple[Outcome, SchemaSubmission]:
    """Submit `draft` for approval as `user` (its submitter); raise `DraftInvalid` if the builder
    finds problems (then nothing is stored).

    The submission is held (`pending_approval`) whatever the draft's validation profile: an
    operator's draft is always decided by an approver.
    """
    envelope = submission_envelope(draft, user)
    prepared = services.prepare_request(envelope)
    if isinstance(prepared, Rejected):
        raise DraftInvalid(prepared.issues)
    outcome, submission = services.submit_envelope(
        envelope, source="admin", actor=user.get_username(), user=user, hold=True
    )
    draft.last_submission = submission
    draft.save(update_fields=["last_submission"])
    return outcome, submission
