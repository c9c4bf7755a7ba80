"""How the builder's canonical SQL reads back from the catalog, for comparing the two.

The normalizer writes types and defaults in its own canonical form (`TIMESTAMPTZ`,
`'x'::MACADDR`, `-2.5E+3`); PostgreSQL prints them its way (`timestamp with time zone`,
`'08:00:2b:01:02:03'::macaddr`, `'-2500'::numeric`). These functions bring both to one key.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation

from builder.schema.sqltypes import parse_type

# format_type's names of the canonical base types that it spells differently.
_CATALOG_NAMES = {
    "TIME": "time without time zone",
    "TIMESTAMP": "timestamp without time zone",
    "TIMESTAMPTZ": "timestamp with time zone",
    "VARCHAR": "character varying",
    "CHAR": "character",
}


@functools.lru_cache(maxsize=1024)
def catalog_type(canonical: str) -> str:
    """Return `format_type`'s text for a canonical type: `VARCHAR(20)` -> `character varying(20)`.

    PostgreSQL does not keep an array's number of dimensions: `INTEGER[][]` reads `integer[]`.
    """
    parsed = parse_type(canonical)
    name = _CATALOG_NAMES.get(parsed.base, parsed.base.lower())
    params = parsed.params
    if parsed.base == "NUMERIC" and len(params) == 1:
        params = (params[0], 0)
    suffix = f"({','.join(str(p) for p in params)})" if params else ""
    return f"{name}{suffix}{'[]' if parsed.dims else ''}"


def same_type(canonical: str, live: str) -> bool:
    """Whether a column of the canonical type reads back as `live`."""
    return catalog_type(canonical) == live


# Type changes that PostgreSQL makes without rewriting the table or its indexes.
_VARCHAR = re.compile(r"character varying\((\d+)\)")
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


def binary_compatible_change(live: str, canonical: str) -> bool:
    """Whether changing a column from `live` to `canonical` needs no rewrite (only metadata).

    `varchar(n)` to a longer `varchar` or to `text`, and `numeric(p,s)` to a larger precision
    with the same scale, or to unconstrained `numeric`.
    """
    wanted = catalog_type(canonical)
    if (old := _VARCHAR.fullmatch(live)) is not None:
        new = _VARCHAR.fullmatch(wanted)
        return wanted in ("text", "character varying") or (
            new is not None and int(new[1]) >= int(old[1])
        )
    if (old := _NUMERIC.fullmatch(live)) is not None:
        new = _NUMERIC.fullmatch(wanted)
        return wanted == "numeric" or (
            new is not None and new[2] == old[2] and int(new[1]) >= int(old[1])
        )
    return False


_CASTS = r"(?:::[a-z ]+(?:\(\d+(?:,\d+)?\))?(?:\[\])*)*"
_LITERAL = re.compile(r"(E?)'((?:[^']|'')*)'" + _CASTS, re.I | re.S)
_NUMBER = re.compile(r"\(?(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\)?" + _CASTS)
_BACKSLASH_ESCAPE = re.compile(r"\\(.)", re.S)

DefaultKey = tuple[str, object]


def default_key(expression: str | None) -> DefaultKey | None:
    """A comparable key of a default expression: a number, a string's text, or an expression.

    Casts and quoting are left out (the column's type is compared on its own): `'-1'::integer`
    and `-1` are the same number, `'x'::character varying` and `'x'` the same text, `E'\\\\x00'`
    and `'\\x00'::bytea` the same bytes.
    """
    if expression is None:
        return None
    text = expression.strip()
    literal = _LITERAL.fullmatch(text)
    if literal is not None:
        value = literal[2].replace("''", "'")
        if literal[1]:
            value = _BACKSLASH_ESCAPE.sub(r"\1", value)
        return _number_key(value) or ("text", value)
    number = _NUMBER.fullmatch(text)
    if number is not None:
        key = _number_key(number[1])
        if key is not None:
            return key
    return ("expression", " ".join(text.lower().split()))


def _number_key(text: str) -> DefaultKey | None:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return ("number", value.normalize())


def same_default(canonical: str | None, live: str | None) -> bool:
    """Whether the canonical default and the catalog's default are the same value."""
    return default_key(canonical) == default_key(live)


VOLATILE_DEFAULTS = frozenset({"gen_random_uuid()", "clock_timestamp()"})
"""Defaults evaluated per row: adding a column with one rewrites the table."""
