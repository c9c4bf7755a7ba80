"""Allow lists for column types and column defaults, the two places where caller text meets SQL.

Nothing a caller writes is ever pasted into SQL: `normalize_type` parses the text with a small
tokenizer against an allow list and builds the canonical type itself, and `normalize_default`
parses a default into a value (a literal, a number, an allow-listed function) and renders it
again from that value. Anything that does not parse is rejected with a `ValueError` whose message
can be shown to the caller.

`normalize_default` raises `IncompatibleDefaultError` (a `ValueError`) when the default is a
well-formed literal or function that does not fit the column type (`'abc'` for a UUID column,
`now()` for a TEXT column), and a plain `ValueError` when it is not an allowed default at all.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import math
import re
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal

from psycopg import sql

MAX_TYPE_LENGTH = 200
MAX_DEFAULT_LENGTH = 10_000
MAX_ARRAY_DIMENSIONS = 2
MAX_NUMERIC_PRECISION = 1000
MAX_CHAR_LENGTH = 10_485_760
# PostgreSQL's limits: time zone offsets below 16 hours; NUMERIC (and so jsonb numbers) with up to
# 131072 digits before the decimal point and 16383 after it.
MAX_TIME_ZONE_OFFSET = dt.timedelta(hours=15, minutes=59, seconds=59)
NUMERIC_MAX_INTEGER_DIGITS = 131_072
NUMERIC_MAX_SCALE = 16_383
# Types without a btree operator class: no index, UNIQUE constraint or primary key can use them.
UNINDEXABLE_TYPES = frozenset({"JSON"})

_SIMPLE_TYPES = {
    "SMALLINT": "SMALLINT",
    "INTEGER": "INTEGER",
    "INT": "INTEGER",
    "INT4": "INTEGER",
    "BIGINT": "BIGINT",
    "INT8": "BIGINT",
    "REAL": "REAL",
    "FLOAT4": "REAL",
    "DOUBLE PRECISION": "DOUBLE PRECISION",
    "FLOAT8": "DOUBLE PRECISION",
    "BOOLEAN": "BOOLEAN",
    "BOOL": "BOOLEAN",
    "TEXT": "TEXT",
    "UUID": "UUID",
    "DATE": "DATE",
    "TIME": "TIME",
    "TIMESTAMP": "TIMESTAMP",
    "TIMESTAMPTZ": "TIMESTAMPTZ",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
    "INTERVAL": "INTERVAL",
    "JSON": "JSON",
    "JSONB": "JSONB",
    "BYTEA": "BYTEA",
    "INET": "INET",
    "CIDR": "CIDR",
    "MACADDR": "MACADDR",
}
_PARAMETERIZED_TYPES = {
    "NUMERIC": "NUMERIC",
    "DECIMAL": "NUMERIC",
    "VARCHAR": "VARCHAR",
    "CHARACTER VARYING": "VARCHAR",
    "CHAR": "CHAR",
    "CHARACTER": "CHAR",
}
ALLOWED_TYPES = (
    "SMALLINT, INTEGER, BIGINT, REAL, DOUBLE PRECISION, NUMERIC(p,s), BOOLEAN, TEXT, VARCHAR(n), "
    "CHAR(n), UUID, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, JSON, JSONB, BYTEA, INET, CIDR, "
    "MACADDR, and arrays of them such as TEXT[]"
)

INTEGER_RANGES = {
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}
# Smallest normal and largest finite magnitudes that PostgreSQL accepts for the float types.
FLOAT_RANGES = {
    "REAL": (Decimal("1.1754943508222875e-38"), Decimal("3.4028234663852886e38")),
    "DOUBLE PRECISION": (Decimal("2.2250738585072014e-308"), Decimal("1.7976931348623157e308")),
}
NUMERIC_TYPES = frozenset({*INTEGER_RANGES, *FLOAT_RANGES, "NUMERIC"})
DATETIME_TYPES = frozenset({"DATE", "TIME", "TIMESTAMP", "TIMESTAMPTZ", "INTERVAL"})

_ASCII_SPACE = " \t\r\n\f\v"
_TOKEN = re.compile(
    r"[ \t\r\n\f\v]*(?:(?P<word>[A-Za-z][A-Za-z0-9]*)|(?P<number>[0-9]+)|(?P<punct>[(),\[\]]))"
)


@dataclass(frozen=True)
class SqlType:
    """A parsed allow-listed type: `base` (`NUMERIC`), `params` (`(12, 2)`), array `dims`."""

    base: str
    params: tuple[int, ...] = ()
    dims: int = 0

    # Cached: read for every column, and `parse_type` hands out the same few instances.
    @functools.cached_property
    def canonical(self) -> str:
        """Return the canonical SQL text, e.g. `NUMERIC(12,2)` or `TEXT[]`."""
        params = f"({','.join(str(p) for p in self.params)})" if self.params else ""
        return f"{self.base}{params}{'[]' * self.dims}"

    @property
    def indexable(self) -> bool:
        """Whether a btree index (index, UNIQUE, PRIMARY KEY) can be built on this type."""
        return self.base not in UNINDEXABLE_TYPES

    @property
    def element(self) -> SqlType:
        """Return the type of one array element (the type itself when it is not an array)."""
        return SqlType(self.base, self.params, 0)


def normalize_type(raw: str) -> str:
    """Return the canonical SQL text of an allow-listed type, or raise ValueError."""
    return parse_type(raw).canonical


# Pure and called once per column: schemas repeat a few types thousands of times.
@functools.lru_cache(maxsize=1024)
def parse_type(raw: str) -> SqlType:
    """Parse an allow-listed type (case-insensitive, any spacing), or raise ValueError."""
    if not isinstance(raw, str):
        raise ValueError("a type must be a string")
    if len(raw) > MAX_TYPE_LENGTH:
        raise ValueError(f"type is longer than {MAX_TYPE_LENGTH} characters")
    tokens = _tokenize(raw)
    words: list[str] = []
    while tokens and tokens[0][0] == "word":
        words.append(tokens.pop(0)[1].upper())
    name = " ".join(words)
    shown = name or raw.strip()[:40]
    if name in _PARAMETERIZED_TYPES:
        base = _PARAMETERIZED_TYPES[name]
        params = _parse_params(base, tokens)
    elif name in _SIMPLE_TYPES:
        base, params = _SIMPLE_TYPES[name], ()
    else:
        raise ValueError(f"type {shown!r} is not allowed; allowed types: {ALLOWED_TYPES}")
    dims = _parse_array_suffix(tokens)
    if tokens:
        raise ValueError(f"unexpected {tokens[0][1]!r} in type {shown!r}")
    return SqlType(base, params, dims)


def _tokenize(raw: str) -> list[tuple[str, str]]:
    """Split a type into (kind, text) tokens; reject any character outside the grammar."""
    text = raw.strip(_ASCII_SPACE)
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            bad = text[pos:].lstrip(_ASCII_SPACE)[:1]
            raise ValueError(f"type contains {bad!r}, which is not allowed in a type")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    if not tokens:
        raise ValueError("type is empty")
    return tokens


def _parse_params(base: str, tokens: list[tuple[str, str]]) -> tuple[int, ...]:
    """Consume `(n)` or `(p,s)` from `tokens` and check the limits of `base`."""
    if not tokens or tokens[0][1] != "(":
        if base == "NUMERIC":
            return ()
        raise ValueError(f"{base} needs a length, e.g. {base}(80); use TEXT for unlimited text")
    del tokens[0]
    values = [_take_number(base, tokens)]
    if base == "NUMERIC" and tokens and tokens[0][1] == ",":
        del tokens[0]
        values.append(_take_number(base, tokens))
    if not tokens or tokens[0][1] != ")":
        raise ValueError(f"malformed parameters for {base}; write e.g. {_example(base)}")
    del tokens[0]
    return _check_params(base, tuple(values))


def _take_number(base: str, tokens: list[tuple[str, str]]) -> int:
    """Consume one unsigned integer token, or raise ValueError."""
    if not tokens or tokens[0][0] != "number" or len(tokens[0][1]) > 9:
        raise ValueError(f"malformed parameters for {base}; write e.g. {_example(base)}")
    return int(tokens.pop(0)[1])


def _example(base: str) -> str:
    return "NUMERIC(12,2)" if base == "NUMERIC" else f"{base}(80)"


def _check_params(base: str, values: tuple[int, ...]) -> tuple[int, ...]:
    """Check the limits of the parameters of `base` and return their canonical form."""
    if base != "NUMERIC":
        if len(values) != 1 or not 1 <= values[0] <= MAX_CHAR_LENGTH:
            raise ValueError(f"{base} length must be between 1 and {MAX_CHAR_LENGTH}")
        return values
    precision = values[0]
    scale = values[1] if len(values) > 1 else 0
    if not 1 <= precision <= MAX_NUMERIC_PRECISION:
        raise ValueError(f"NUMERIC precision must be between 1 and {MAX_NUMERIC_PRECISION}")
    if not 0 <= scale <= precision:
        raise ValueError("NUMERIC scale must be between 0 and the precision")
    return (precision, scale)


def _parse_array_suffix(tokens: list[tuple[str, str]]) -> int:
    """Consume up to two `[]` pairs and return how many there were."""
    dims = 0
    while len(tokens) >= 2 and tokens[0][1] == "[" and tokens[1][1] == "]":
        del tokens[:2]
        dims += 1
    if dims > MAX_ARRAY_DIMENSIONS:
        raise ValueError(f"arrays may have at most {MAX_ARRAY_DIMENSIONS} dimensions")
    return dims


class IncompatibleDefaultError(ValueError):
    """An allowed kind of default that does not fit the column type or is not a valid value."""


@dataclass(frozen=True)
class ParsedDefault:
    """A default parsed from caller input, before it is checked against the column type.

    `kind` is one of `bool`, `number`, `function`, `string`; `value` holds the Python value
    (bool, Decimal or int, the lower-case function text, or the unquoted string); `cast` is the
    parsed cast type of a string literal (`'{}'::jsonb`), if any.
    """

    kind: str
    value: object
    cast: SqlType | None = None


_FUNCTION_CALL = re.compile(r"(now|clock_timestamp|gen_random_uuid)\s*\(\s*\)", re.I | re.A)
_KEYWORDS = ("current_timestamp", "current_date", "current_time", "localtimestamp")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.A)
_BARE_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9_ ]{0,60}", re.A)
_STRING_LITERAL = re.compile(r"'((?:[^']|'')*)'(?:\s*::\s*(.+))?", re.S | re.A)
# Which allow-listed functions fit which column types (checked against PostgreSQL 15).
_TIMESTAMP_TARGETS = frozenset({"TIMESTAMP", "TIMESTAMPTZ", "DATE", "TIME"})
FUNCTION_TARGETS = {
    "now()": _TIMESTAMP_TARGETS,
    "current_timestamp": _TIMESTAMP_TARGETS,
    "clock_timestamp()": _TIMESTAMP_TARGETS,
    "localtimestamp": _TIMESTAMP_TARGETS,
    "current_date": frozenset({"DATE", "TIMESTAMP", "TIMESTAMPTZ"}),
    "current_time": frozenset({"TIME"}),
    "gen_random_uuid()": frozenset({"UUID"}),
}
_NOT_ALLOWED = (
    "default {shown} is not allowed: use JSON null, true/false, a number, a quoted SQL string "
    "literal such as 'text' (optionally with a cast to the column type such as '{{}}'::jsonb), "
    "or one of now(), current_timestamp, current_date, current_time, localtimestamp, "
    "clock_timestamp(), gen_random_uuid()"
)


def normalize_default(raw: object, column_type: str) -> str | None:
    """Return the canonical SQL of a column default (None for no default), or raise ValueError.

    Raise `IncompatibleDefaultError` when the default is allowed in itself but does not fit
    `column_type` (which may be canonical or raw type text).
    """
    parsed = parse_default(raw)
    if parsed is None:
        return None
    return render_default(parsed, parse_type(column_type))


def column_default(raw: object, column: SqlType | None) -> str | None:
    """Return the canonical SQL of the default `raw` for a column of type `column`, or raise.

    None means no default, or that `column` is unknown (None): then `raw` is only parsed, so that
    a default that is not allowed at all is still reported. Raise `ValueError` or
    `IncompatibleDefaultError` like `normalize_default`.
    """
    if raw is None:
        return None
    if isinstance(raw, _CACHED_DEFAULT_TYPES):
        return _cached_column_default(raw, column)
    return _column_default(raw, column)


# Floats are not cached: 0.0 and -0.0 are equal keys that render differently.
_CACHED_DEFAULT_TYPES = (str, int)


# Pure and called for every column with a default: schemas repeat a few defaults (`0`, `now()`,
# `'{}'`) thousands of times. `typed` keeps `true` and `1` apart (bool is an int).
@functools.lru_cache(maxsize=1024, typed=True)
def _cached_column_default(raw: str | int, column: SqlType | None) -> str | None:
    return _column_default(raw, column)


def _column_default(raw: object, column: SqlType | None) -> str | None:
    parsed = parse_default(raw)
    if parsed is None or column is None:
        return None
    return render_default(parsed, column)


def parse_default(raw: object) -> ParsedDefault | None:
    """Parse caller input for a default without looking at the column type; None: no default."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return ParsedDefault("bool", raw)
    if isinstance(raw, int):
        return ParsedDefault("number", raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError("a default number must be finite (no NaN or infinity)")
        return ParsedDefault("number", Decimal(repr(raw)))
    if not isinstance(raw, str):
        raise ValueError("a default must be null, a boolean, a number or a string")
    return _parse_default_text(raw)


def _parse_default_text(raw: str) -> ParsedDefault | None:
    """Parse a default written as SQL text."""
    if len(raw) > MAX_DEFAULT_LENGTH:
        raise ValueError(f"default is longer than {MAX_DEFAULT_LENGTH} characters")
    text = raw.strip(_ASCII_SPACE)
    lowered = text.lower() if text.isascii() else text
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return ParsedDefault("bool", lowered == "true")
    if lowered in _KEYWORDS:
        return ParsedDefault("function", lowered)
    call = _FUNCTION_CALL.fullmatch(text)
    if call:
        return ParsedDefault("function", f"{call.group(1).lower()}()")
    if len(text) <= 200 and _NUMBER.fullmatch(text):
        return ParsedDefault("number", Decimal(text))
    literal = _STRING_LITERAL.fullmatch(text)
    if literal:
        value = literal.group(1).replace("''", "'")
        if "\x00" in value:
            raise ValueError("a default string literal must not contain NUL characters")
        if not is_utf8(value):
            raise ValueError("a default string literal must be valid Unicode (no lone surrogates)")
        cast = _parse_cast(literal.group(2))
        return ParsedDefault("string", value, cast)
    shown = repr(text[:60] + ("..." if len(text) > 60 else ""))
    message = _NOT_ALLOWED.format(shown=shown)
    if _BARE_WORDS.fullmatch(text):
        message += f"; to use it as text, quote it: '{text}'"
    raise ValueError(message)


def is_utf8(text: str) -> bool:
    """Return True if `text` can be encoded as UTF-8 (it has no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _parse_cast(raw: str | None) -> SqlType | None:
    """Parse the type after `::` in a default, or raise ValueError."""
    if raw is None:
        return None
    try:
        return parse_type(raw)
    except ValueError as exc:
        raise ValueError(f"the cast in the default is not allowed: {exc}") from None


def render_default(parsed: ParsedDefault, column: SqlType) -> str:
    """Render a parsed default for a column of type `column`, or raise IncompatibleDefaultError."""
    if parsed.kind == "bool":
        _require(column.canonical == "BOOLEAN", "a boolean default", column)
        return "true" if parsed.value else "false"
    if parsed.kind == "number":
        assert isinstance(parsed.value, int | Decimal)
        return _render_number(parsed.value, column)
    if parsed.kind == "function":
        name = str(parsed.value)
        _require(column.dims == 0 and column.base in FUNCTION_TARGETS[name], name, column)
        return name
    assert isinstance(parsed.value, str)
    return _render_string(parsed.value, parsed.cast, column)


def _require(ok: bool, what: str, column: SqlType) -> None:
    if not ok:
        raise IncompatibleDefaultError(
            f"{what} is not a valid default for a column of type {column.canonical}"
        )


def _render_number(value: int | Decimal, column: SqlType) -> str:
    """Render a number for a numeric column after checking that it fits the column type."""
    _require(column.dims == 0 and column.base in NUMERIC_TYPES, "a number", column)
    number = Decimal(value) if _fits_decimal(value) else None
    if number is None or not -1000 <= number.adjusted() <= 1000:
        raise IncompatibleDefaultError(f"the number is out of range for {column.canonical}")
    if column.base in INTEGER_RANGES:
        return str(_integer_value(number, column.base))
    if column.base in FLOAT_RANGES:
        low, high = FLOAT_RANGES[column.base]
        if number and not low <= abs(number) <= high:
            raise IncompatibleDefaultError(f"the number is out of range for {column.canonical}")
    elif column.params:
        _check_numeric_fits(number, *column.params)
    return str(value) if isinstance(value, int) else str(number)


def _fits_decimal(value: int | Decimal) -> bool:
    """Return True if `value` is small enough to handle (no 10**5000 integers)."""
    return not isinstance(value, int) or value.bit_length() <= 3400


def _integer_value(number: Decimal, base: str) -> int:
    """Return `number` as an int in the range of `base`, or raise IncompatibleDefaultError."""
    if number != number.to_integral_value():
        raise IncompatibleDefaultError(f"{base} needs a whole number")
    result = int(number)
    low, high = INTEGER_RANGES[base]
    if not low <= result <= high:
        raise IncompatibleDefaultError(f"{result} is out of range for {base}")
    return result


def _check_numeric_fits(number: Decimal, precision: int, scale: int) -> None:
    """Raise IncompatibleDefaultError if `number` rounded to `scale` overflows NUMERIC(p,s)."""
    context = Context(prec=3 * MAX_NUMERIC_PRECISION, Emax=10_000, Emin=-10_000)
    rounded = number.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_UP, context)
    if rounded and rounded.adjusted() + 1 > precision - scale:
        raise IncompatibleDefaultError(f"{number} does not fit NUMERIC({precision},{scale})")


def _render_string(value: str, cast: SqlType | None, column: SqlType) -> str:
    """Render a string literal for `column`, validating its content for the column type."""
    if cast is not None and cast != column:
        raise IncompatibleDefaultError(
            f"the cast to {cast.canonical} does not match the column type {column.canonical}"
        )
    if column.dims:
        if value.strip() != "{}":
            raise IncompatibleDefaultError("an array default may only be the empty array '{}'")
        value = "{}"
    elif column.base == "BOOLEAN":
        return _boolean_text(value)
    elif column.base in NUMERIC_TYPES:
        number = value.strip()
        if len(number) > 200 or not _NUMBER.fullmatch(number):
            raise IncompatibleDefaultError(f"{column.canonical} needs a number as default")
        return _render_number(Decimal(number), column)
    else:
        value = _check_string_value(value, column)
    literal = sql.Literal(value).as_string(None).strip()
    return f"{literal}::{cast.canonical}" if cast is not None else literal


_BOOLEAN_WORDS = {
    **dict.fromkeys(("true", "t", "yes", "y", "on", "1"), "true"),
    **dict.fromkeys(("false", "f", "no", "n", "off", "0"), "false"),
}


def _boolean_text(value: str) -> str:
    """Return `true`/`false` for a PostgreSQL boolean spelling, or raise."""
    word = value.strip().lower()
    if word not in _BOOLEAN_WORDS:
        raise IncompatibleDefaultError(f"{value!r} is not a boolean")
    return _BOOLEAN_WORDS[word]


def _check_string_value(value: str, column: SqlType) -> str:
    """Validate a literal for a non-numeric scalar column; return its canonical text."""
    check = _STRING_CHECKS.get(column.base)
    if check is None:
        return value
    try:
        return check(value, column)
    except IncompatibleDefaultError:
        raise
    except (ValueError, RecursionError):
        shown = value[:60] + ("..." if len(value) > 60 else "")
        raise IncompatibleDefaultError(
            f"{shown!r} is not a valid {column.canonical} value"
        ) from None


_UUID = re.compile(r"\{?[0-9a-f]{8}-?(?:[0-9a-f]{4}-?){3}[0-9a-f]{12}\}?", re.I | re.A)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.A)
_ISO_TIME = re.compile(r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?", re.A)
_ISO_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?",
    re.A,
)
_INTERVAL = re.compile(r"[0-9A-Za-z .:+-]{1,100}", re.A)
_INTERVAL_FORM = re.compile(
    r" *(?P<pairs>(?:[+-]?[0-9]{1,12} *[a-z]+ *)*?)"
    r"(?P<clock>[+-]?[0-9]{1,6}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)? *(?:ago)? *",
    re.A,
)
_INTERVAL_PAIR = re.compile(r"([+-]?[0-9]+) *([a-z]+)", re.A)
# Per unit: (months, days, microseconds) of one of it.
_INTERVAL_UNITS = {
    "microsecond": (0, 0, 1),
    "millisecond": (0, 0, 1_000),
    "second": (0, 0, 1_000_000),
    "minute": (0, 0, 60_000_000),
    "hour": (0, 0, 3_600_000_000),
    "day": (0, 1, 0),
    "week": (0, 7, 0),
    "month": (1, 0, 0),
    "year": (12, 0, 0),
    "decade": (120, 0, 0),
    "century": (1_200, 0, 0),
    "millennium": (12_000, 0, 0),
}
_INTERVAL_UNIT_NAMES = {
    **dict.fromkeys(("microsecond", "microseconds", "us", "usec", "usecs"), "microsecond"),
    **dict.fromkeys(("millisecond", "milliseconds", "ms", "msec", "msecs"), "millisecond"),
    **dict.fromkeys(("second", "seconds", "s", "sec", "secs"), "second"),
    **dict.fromkeys(("minute", "minutes", "m", "min", "mins"), "minute"),
    **dict.fromkeys(("hour", "hours", "h", "hr", "hrs"), "hour"),
    **dict.fromkeys(("day", "days", "d"), "day"),
    **dict.fromkeys(("week", "weeks", "w"), "week"),
    **dict.fromkeys(("month", "months", "mon", "mons"), "month"),
    **dict.fromkeys(("year", "years", "y", "yr", "yrs"), "year"),
    **dict.fromkeys(("decade", "decades", "dec", "decs"), "decade"),
    **dict.fromkeys(("century", "centuries", "c", "cent"), "century"),
    **dict.fromkeys(("millennium", "millennia", "mil", "mils"), "millennium"),
}
_CLOCK_UNITS = frozenset({"hour", "minute", "second", "millisecond", "microsecond"})
# Far inside PostgreSQL's int32 months and days and int64 microseconds.
_INTERVAL_LIMITS = (10**8, 10**8, 10**17)
_MACADDR = re.compile(r"[0-9a-f]{2}(?:([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}|[0-9a-f]{10})", re.I)
_BYTEA_HEX = re.compile(r"\\x(?:[0-9a-f]{2})*", re.I | re.A)


def _uuid_text(value: str, column: SqlType) -> str:
    if not _UUID.fullmatch(value):
        raise ValueError(value)
    return str(uuid.UUID(value))


def _date_text(value: str, column: SqlType) -> str:
    if not _ISO_DATE.fullmatch(value):
        raise ValueError(value)
    return dt.date.fromisoformat(value).isoformat()


def _time_text(value: str, column: SqlType) -> str:
    if not _ISO_TIME.fullmatch(value):
        raise ValueError(value)
    return dt.time.fromisoformat(value).isoformat()


def _timestamp_text(value: str, column: SqlType) -> str:
    if not _ISO_DATETIME.fullmatch(value):
        raise ValueError(value)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if column.base == "TIMESTAMP" and parsed.tzinfo is not None:
        raise ValueError(value)
    offset = parsed.utcoffset()
    if offset is not None and abs(offset) > MAX_TIME_ZONE_OFFSET:
        raise IncompatibleDefaultError(
            f"the time zone offset of {value!r} is beyond PostgreSQL's limit of +/-15:59"
        )
    return parsed.isoformat(sep=" ")


def _json_text(value: str, column: SqlType) -> str:
    def reject(constant: str) -> object:
        raise ValueError(constant)

    if column.base == "JSONB":
        # jsonb stores numbers as NUMERIC, which refuses some that JSON allows (1e999999).
        json.loads(value, parse_constant=reject, parse_float=_numeric, parse_int=_numeric)
        if "\\u0000" in value:
            raise ValueError(value)
    else:
        json.loads(value, parse_constant=reject)
    return value


def _numeric(text: str) -> Decimal:
    """Return a JSON number as a Decimal, or raise ValueError if NUMERIC cannot hold it."""
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(text)
    if number.adjusted() >= NUMERIC_MAX_INTEGER_DIGITS or -exponent > NUMERIC_MAX_SCALE:
        raise ValueError(text)
    return number


def _text_value(value: str, column: SqlType) -> str:
    if column.params and len(value) > column.params[0]:
        raise IncompatibleDefaultError(f"the default is longer than {column.canonical}")
    return value


def _interval_text(value: str, column: SqlType) -> str:
    """Accept `<whole number> <unit>` pairs, then maybe `[+-]H:MM[:SS[.ffffff]]`, maybe `ago`.

    A subset of what PostgreSQL reads, checked so that PostgreSQL accepts all of it: each unit
    once, a time only without hour/minute/second units, and totals far inside the interval range.
    """
    if not _INTERVAL.fullmatch(value) or not any(c.isdigit() for c in value):
        raise ValueError(value)
    match = _INTERVAL_FORM.fullmatch(value.lower())
    if match is None:
        raise IncompatibleDefaultError(
            f"{value!r} is not an interval default of the form '1 year 2 days', '01:30:00' or "
            "'3 days 04:05:06' (whole numbers with units, each unit once)"
        )
    totals = [0, 0, 0]  # months, days, microseconds: PostgreSQL's three interval fields
    seen: set[str] = set()
    for number, word in _INTERVAL_PAIR.findall(match.group("pairs") or ""):
        unit = _INTERVAL_UNIT_NAMES.get(word)
        if unit is None or unit in seen:
            reason = "is not a unit" if unit is None else "appears twice"
            raise IncompatibleDefaultError(f"{word!r} in the interval {value!r} {reason}")
        seen.add(unit)
        for field, factor in enumerate(_INTERVAL_UNITS[unit]):
            totals[field] += abs(int(number)) * factor
    clock = match.group("clock")
    if clock is not None:
        if seen & _CLOCK_UNITS:
            raise IncompatibleDefaultError(
                f"the interval {value!r} has both a time and hour/minute/second units"
            )
        hours, minutes, seconds = [*clock.lstrip("+-").split(":"), "0"][:3]
        if int(minutes) > 59 or float(seconds) >= 60:
            raise IncompatibleDefaultError(f"the time in the interval {value!r} is out of range")
        totals[2] += int(hours) * 3_600_000_000 + int(minutes) * 60_000_000
    if any(total > limit for total, limit in zip(totals, _INTERVAL_LIMITS, strict=True)):
        raise IncompatibleDefaultError(f"the interval {value!r} is out of range")
    return value


def _inet_text(value: str, column: SqlType) -> str:
    if "%" in value:
        raise ValueError(value)
    if column.base == "CIDR":
        return str(ipaddress.ip_network(value, strict=True))
    return str(ipaddress.ip_interface(value) if "/" in value else ipaddress.ip_address(value))


def _macaddr_text(value: str, column: SqlType) -> str:
    if not _MACADDR.fullmatch(value):
        raise ValueError(value)
    digits = re.sub(r"[:-]", "", value).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _bytea_text(value: str, column: SqlType) -> str:
    if not _BYTEA_HEX.fullmatch(value):
        raise ValueError(value)
    return value.lower()


_STRING_CHECKS = {
    "UUID": _uuid_text,
    "DATE": _date_text,
    "TIME": _time_text,
    "TIMESTAMP": _timestamp_text,
    "TIMESTAMPTZ": _timestamp_text,
    "JSON": _json_text,
    "JSONB": _json_text,
    "VARCHAR": _text_value,
    "CHAR": _text_value,
    "INTERVAL": _interval_text,
    "INET": _inet_text,
    "CIDR": _inet_text,
    "MACADDR": _macaddr_text,
    "BYTEA": _bytea_text,
}
