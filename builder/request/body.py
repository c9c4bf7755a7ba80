"""Reading a request body as JSON that the rest of the system can hash, store and validate.

Plain `json.loads` accepts things that break later steps: duplicate keys (which value wins is
ambiguous), `NaN`/`Infinity` and numbers such as `1e999` (not valid in PostgreSQL's json type),
`\\u0000` and unpaired surrogates (PostgreSQL stores neither), and nesting deep enough to exhaust
Python's recursion limit when the value is dumped again. The webhook and the command line both
read requests through `parse_request_json`, which refuses all of them with one clear message.

It also hashes what it accepts (`sha256_prefixed`, the contract's `inputs_hash`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

from builder.errors import InvalidRequestJSON

# Far deeper than any valid envelope (about 6 levels) and far from the recursion limit.
MAX_DEPTH = 64


class RequestObject(dict[str, Any]):
    """A body's top-level object as `parse_request_json` read it: usable, with its hash.

    `find_unusable` found nothing in it, and `inputs_hash` is `sha256_prefixed` of it, so
    `builder.request.envelope.parse_envelope` does neither again. It is an ordinary dict otherwise;
    like every parsed request, it is read, never changed.
    """

    __slots__ = ("inputs_hash",)

    def __init__(self, value: dict[str, Any], inputs_hash: str) -> None:
        super().__init__(value)
        self.inputs_hash = inputs_hash


def parse_request_json(raw: bytes | str) -> object:
    """Return the parsed body, or raise InvalidRequestJSON.

    An object is returned as a `RequestObject`, with its `inputs_hash`.
    """
    value = _parse_checked(raw)
    if not isinstance(value, dict):
        return value
    return RequestObject(value, sha256_prefixed(value))


def _parse_checked(raw: bytes | str) -> object:
    try:
        value = json.loads(
            raw,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except InvalidRequestJSON:
        raise
    except RecursionError as exc:
        raise InvalidRequestJSON(f"The body is nested deeper than {MAX_DEPTH} levels.") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRequestJSON("The body is not valid JSON.") from exc
    problem = find_unusable(value)
    if problem is not None:
        raise InvalidRequestJSON(problem)
    return value


def canonical_dumps(value: object) -> str:
    """Return canonical JSON (sorted keys, no whitespace) of any JSON-like value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_prefixed(value: object) -> str:
    """Return `sha256_<hex>` of the canonical JSON of `value` (meta_out hash format).

    A lone surrogate (JSON `"\\ud800"`) is hashed as is instead of failing to encode: the input
    is hashed before it is validated.
    """
    text = canonical_dumps(value)
    return "sha256_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_UNSTORABLE_TEXT = (
    "The body contains \\u0000 or an unpaired surrogate (\\ud800-\\udfff) in a string; "
    "PostgreSQL can store neither."
)
_NOT_FINITE = "The body contains a number that is not finite (NaN, Infinity, 1e999)."


def find_unusable(value: object) -> str | None:
    """Say why a parsed JSON value cannot be stored or hashed, or return None if it can.

    Every request goes through here (about 2,000 values for a 10-table schema), so scalars are
    checked in place and only containers are queued.
    """
    problem = _scalar_problem(value)
    if problem is not None:
        return problem
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:  # iterative: the value may be nested deeper than the stack allows
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            return f"The body is nested deeper than {MAX_DEPTH} levels."
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
            for key in item:
                if (problem := _scalar_problem(key)) is not None:
                    return problem
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))
            elif (problem := _scalar_problem(child)) is not None:
                return problem
    return None


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, str):
        return None if _storable_text(value) else _UNSTORABLE_TEXT
    if isinstance(value, float) and not math.isfinite(value):
        return _NOT_FINITE
    return None


def _storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequestJSON(f"Duplicate key {key[:60]!r} in a JSON object.")
        result[key] = value
    return result


def _refuse_constant(name: str) -> object:
    raise InvalidRequestJSON(f"{name} is not valid JSON.")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InvalidRequestJSON(f"The number {text[:40]} is out of range.")
    return number
