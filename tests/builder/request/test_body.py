"""Reading request bodies: what json.loads accepts but the system cannot store or hash."""

from __future__ import annotations

import pytest

import builder.request.envelope
from builder.request.body import (
    MAX_DEPTH,
    InvalidRequestJSON,
    RequestObject,
    find_unusable,
    parse_request_json,
    sha256_prefixed,
)
from builder.request.envelope import parse_envelope


def test_a_plain_envelope_parses():
    assert parse_request_json(b'{"payload": {"tables": [1, 2.5, "x", null]}}') == {
        "payload": {"tables": [1, 2.5, "x", None]}
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a": 1, "a": 2}', "Duplicate key"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": "x\\u0000y"}', "\\u0000"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\ud800": 1}', "surrogate"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper"),
    ],
)
def test_unusable_bodies_are_refused_with_a_reason(body, fragment):
    for _ in range(2):  # refused bodies are not remembered: refused again
        with pytest.raises(InvalidRequestJSON, match=None) as caught:
            parse_request_json(body)
        assert fragment in str(caught.value)


def test_nesting_up_to_the_limit_is_accepted():
    body = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    value = parse_request_json(body)
    assert find_unusable(value) is None
    # Levels are containers: a scalar inside the deepest allowed one is fine.
    assert find_unusable(parse_request_json("[" * MAX_DEPTH + '"x"' + "]" * MAX_DEPTH)) is None


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, {"b": ["ok", "\x00"]}]},
        {"a": [1, {"\ud800": 1}]},
        {"a": {float("inf"): 1}},
        [[["caf\u00e9", "\udfff"]]],
        "\x00",
        {"n": [0.5, {"m": float("nan")}]},
        float("-inf"),
    ],
)
def test_find_unusable_finds_bad_scalars_at_any_depth_keys_included(value):
    assert find_unusable(value) is not None


def test_find_unusable_accepts_non_ascii_text():
    assert find_unusable({"café": ["naïve", "日本", 1.5, None, True]}) is None


def test_find_unusable_walks_values_too_deep_for_recursion():
    value: dict = {}
    node = value
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    assert "deeper" in find_unusable(value)
    assert find_unusable({"x": float("inf")}) is not None


# --- bodies read before: services retry with the same bytes ---------------------------------------

ENVELOPE = '{"meta": {"tenant_id": "t1"}, "payload": {"schema_version": "1", "note": "é"}}'


def test_an_object_body_is_a_request_object_with_the_hash_of_its_value():
    value = parse_request_json(ENVELOPE.encode())

    assert isinstance(value, RequestObject)
    assert value == {"meta": {"tenant_id": "t1"}, "payload": {"schema_version": "1", "note": "é"}}
    assert value.inputs_hash == sha256_prefixed(dict(value))
    assert parse_request_json(ENVELOPE).inputs_hash == value.inputs_hash  # str or bytes


def test_each_body_keeps_its_own_hash():
    one = parse_request_json(b'{"payload": {"schema_version": "1"}}')
    two = parse_request_json(b'{"payload": {"schema_version": "2"}}')
    one_again = parse_request_json(b'{"payload": {"schema_version": "1"}}')

    assert one.inputs_hash != two.inputs_hash
    assert one_again.inputs_hash == one.inputs_hash == sha256_prefixed(dict(one_again))


def test_a_body_that_is_not_an_object_is_returned_as_it_is():
    assert parse_request_json(b"[1, 2]") == [1, 2]
    assert not isinstance(parse_request_json(b"[1, 2]"), RequestObject)
    assert parse_request_json(b'"text"') == "text"


def test_parse_envelope_uses_what_the_reading_found(monkeypatch):
    read = parse_request_json(ENVELOPE.encode())
    plain = parse_envelope(dict(read))

    monkeypatch.setattr(builder.request.envelope, "find_unusable", lambda v: "must not be called")
    envelope = parse_envelope(read)
    assert envelope.inputs_hash == plain.inputs_hash
    assert envelope.issues == plain.issues == ()
    assert (envelope.tenant_id, envelope.payload) == (plain.tenant_id, plain.payload)
    # A plain dict is still checked.
    assert [i.code for i in parse_envelope({"payload": {}}).issues] == ["invalid_json"]
