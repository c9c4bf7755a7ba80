"""The admin's forms for drafts: a column type as a select plus its parameters, index columns
as comma-separated text, and the envelope's other fields as checked JSON."""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms

from revos_schema import drafts
from revos_schema.models import DraftColumn, DraftIndex, SchemaDraft

# The types offered in the select: the builder's canonical base types (builder/schema/sqltypes.py),
# commonest first. Parameters and array brackets go in the text box beside it; any other
# spelling the builder accepts (`int`, `TIMESTAMP WITH TIME ZONE`) can be typed there with "other".
TYPE_CHOICES = (
    "TEXT",
    "VARCHAR",
    "UUID",
    "INTEGER",
    "BIGINT",
    "SMALLINT",
    "NUMERIC",
    "BOOLEAN",
    "DATE",
    "TIMESTAMPTZ",
    "TIMESTAMP",
    "TIME",
    "INTERVAL",
    "JSONB",
    "JSON",
    "REAL",
    "DOUBLE PRECISION",
    "CHAR",
    "BYTEA",
    "INET",
    "CIDR",
    "MACADDR",
)
OTHER_TYPE = ""
# Longest first, so that TIMESTAMPTZ is not read as TIMESTAMP followed by "TZ".
_BY_LENGTH = sorted(TYPE_CHOICES, key=len, reverse=True)


def split_type(text: str) -> tuple[str, str]:
    """Split a type as written into (a choice of the select, the rest): `NUMERIC(12,2)` is
    (`NUMERIC`, `(12,2)`), `TEXT[]` is (`TEXT`, `[]`), and a type the select does not start
    (`int`) is ("", `int`), typed in full. Joining the two gives `text` back exactly."""
    for base in _BY_LENGTH:
        rest = text[len(base) :]
        if text.startswith(base) and (not rest or rest[0] in "(["):
            return base, rest
    return OTHER_TYPE, text


def join_type(base: str, rest: str) -> str:
    """The type of a select choice and its parameters; bare parameters get their parentheses
    (`NUMERIC` and `12,2` is `NUMERIC(12,2)`)."""
    rest = rest.strip()
    if base and rest and rest[0] not in "([":
        rest = f"({rest})"
    return base + rest


class ColumnTypeWidget(forms.MultiWidget):
    def __init__(self) -> None:
        choices = [(OTHER_TYPE, "other (type it)"), *((t, t) for t in TYPE_CHOICES)]
        super().__init__(
            widgets=[
                forms.Select(choices=choices, attrs={"class": "wf106-type-base"}),
                forms.TextInput(
                    attrs={
                        "class": "wf106-type-rest",
                        "size": 10,
                        "placeholder": "(12,2) (80) []",
                        "title": "Parameters such as (12,2) or (80), [] for an array; with "
                        '"other", the whole type',
                    }
                ),
            ]
        )

    def decompress(self, value: Any) -> list[str]:
        return (
            list(split_type(value)) if isinstance(value, str) and value else [TYPE_CHOICES[0], ""]
        )


class ColumnTypeField(forms.MultiValueField):
    """A column type: a base type from the select and its parameters, stored as one text."""

    widget = ColumnTypeWidget

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("max_length", None)
        super().__init__(
            fields=(
                forms.ChoiceField(
                    choices=[(OTHER_TYPE, ""), *((t, t) for t in TYPE_CHOICES)], required=False
                ),
                forms.CharField(required=False, max_length=200),
            ),
            require_all_fields=False,
            **kwargs,
        )

    def compress(self, data_list: list[str]) -> str:
        if not data_list:
            return ""
        return join_type(data_list[0] or "", data_list[1] or "")

    def clean(self, value: Any) -> str:
        text = super().clean(value)
        if not text and self.required:
            raise forms.ValidationError("Choose a type, or choose other and type it.")
        return str(text)


class IndexColumnsField(forms.CharField):
    """The columns of an index as comma-separated names, stored as a JSON list."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(str(name) for name in value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return [str(name) for name in value]
        text = super().to_python(value)
        return [name.strip() for name in text.split(",") if name.strip()]


class SchemaDraftForm(forms.ModelForm):
    class Meta:
        model = SchemaDraft
        fields = ("version", "description", "validation_profile", "envelope_extra")
        widgets: ClassVar[dict[str, forms.Widget]] = {
            "description": forms.Textarea(attrs={"rows": 2, "cols": 80}),
            "envelope_extra": forms.Textarea(attrs={"rows": 2, "cols": 80}),
        }

    def clean_envelope_extra(self) -> dict[str, Any]:
        value = self.cleaned_data.get("envelope_extra")
        value = {} if value is None else value
        problems = drafts.extra_problems(value)
        if problems:
            raise forms.ValidationError(problems)
        return dict(value)


class DraftColumnForm(forms.ModelForm):
    type = ColumnTypeField()
    # An empty box is "no default" (NULL), not an empty default, which the builder refuses.
    default = forms.CharField(
        required=False,
        empty_value=None,
        widget=forms.TextInput(attrs={"size": 12}),
        help_text=DraftColumn._meta.get_field("default").help_text,
    )

    class Meta:
        model = DraftColumn
        fields = (
            "name",
            "type",
            "not_null",
            "unique",
            "default",
            "references_table",
            "references_column",
            "on_delete",
            "position",
        )
        widgets: ClassVar[dict[str, forms.Widget]] = {
            "name": forms.TextInput(attrs={"size": 16}),
            "references_table": forms.TextInput(attrs={"size": 12}),
            "references_column": forms.TextInput(attrs={"size": 8}),
        }


class DraftIndexForm(forms.ModelForm):
    columns = IndexColumnsField(
        help_text="Column names, separated by commas.",
        widget=forms.TextInput(attrs={"size": 30}),
    )

    class Meta:
        model = DraftIndex
        fields = ("name", "columns", "unique", "position")
        widgets: ClassVar[dict[str, forms.Widget]] = {"name": forms.TextInput(attrs={"size": 24})}


class ImportForm(forms.Form):
    file = forms.FileField(
        label="Envelope JSON file",
        help_text="A request envelope as the webhook takes it, e.g. tests/fixtures/*.json.",
    )
