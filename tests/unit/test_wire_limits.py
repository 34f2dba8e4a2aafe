"""The wire codec's limits on hostile input: proto integer ranges, nesting depth, body
size and Unicode. Each one is a 400 INVALID_ARGUMENT naming the field and the rule."""

from __future__ import annotations

import json

import pytest

from tunesmith.api import wire
from tunesmith.domain.errors import Code, ServiceError

INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1
EXAMPLES = {"examples": {"examples": [{"textInput": "1", "output": "2"}]}}


def rejected(call, *args) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call(*args)
    assert caught.value.code is Code.INVALID_ARGUMENT
    return caught.value


def generate_body(**config) -> dict:
    return {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": config}


@pytest.mark.parametrize("value", [INT32_MAX, -(2**31), str(INT32_MAX), float(INT32_MAX)])
def test_int32_edges_are_read(value):
    assert wire.read_message({"topK": value}, "TunedModel") == {"topK": int(value)}


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63, str(2**63), 1e12, "1" * 500])
def test_int32_beyond_its_range_names_the_field(value):
    error = rejected(wire.decode_update, {"topK": value}, None)
    assert error.violations[0].field == "topK"
    assert "out of range" in error.message and str(INT32_MAX) in error.message


@pytest.mark.parametrize("value", [INT64_MAX, str(INT64_MAX), -(2**63), str(-(2**63))])
def test_int64_edges_are_read_as_numbers_or_strings(value):
    data = wire.read_message({"readerProjectNumbers": [value]}, "TunedModel")
    assert data == {"readerProjectNumbers": [int(value)]}


@pytest.mark.parametrize("value", [2**63, str(2**63), -(2**63) - 1, str(10**30)])
def test_int64_beyond_its_range_names_the_field(value):
    error = rejected(wire.read_message, {"readerProjectNumbers": [value]}, "TunedModel")
    assert error.violations[0].field == "readerProjectNumbers[0]"
    assert "out of range" in error.message


@pytest.mark.parametrize("value", ["12abc", " 12", "1_000", "1.5", "١٢", 1.5, True, [], {}])
def test_integers_must_be_integers(value):
    error = rejected(wire.read_message, {"topK": value}, "TunedModel")
    assert "expected an integer" in error.message


def test_generation_seed_and_top_k_follow_int32():
    for name, value in (("seed", 2**70), ("topK", 2**63), ("candidateCount", 2**40)):
        error = rejected(wire.decode_generate, generate_body(**{name: value}))
        assert error.violations[0].field == f"generationConfig.{name}"


def test_create_with_a_huge_epoch_count_or_top_k_is_refused_whole():
    body = {
        "baseModel": "models/x",
        "topK": 10**12,
        "tuningTask": {"hyperparameters": {"epochCount": 10**30}, "trainingData": EXAMPLES},
    }
    error = rejected(wire.decode_create, body, None)
    assert {v.field for v in error.violations} == {
        "topK",
        "tuningTask.hyperparameters.epochCount",
    }


@pytest.mark.parametrize("text", ["1e400", "-1e400", "1" + "0" * 400])
def test_floats_beyond_a_double_are_refused_by_the_range_rule(text):
    body = json.loads(f'{{"temperature": {text}}}')
    error = rejected(wire.decode_update, body, None)
    assert error.violations[0].field == "temperature"


@pytest.mark.parametrize("raw", [b'{"temperature": NaN}', b'{"temperature": "NaN"}'])
def test_nan_is_refused_by_the_range_rule(raw):
    error = rejected(wire.decode_update, wire.parse_body(raw), None)
    assert "temperature must be in" in error.message


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", 2.5, 10**400])
def test_enums_refuse_non_integers(value):
    body = {"state": float(value) if isinstance(value, str) else value}
    error = rejected(wire.read_message, body, "TunedModel")
    assert error.violations[0].field == "state"


def test_query_integers_follow_int32():
    assert wire.read_integer("1000", wire.INT32, "pageSize") == 1000
    error = rejected(wire.read_integer, str(10**30), wire.INT32, "pageSize")
    assert error.violations[0].field == "pageSize"
    assert "out of range" in error.message


# ---------------------------------------------------------------- nesting


def nested(depth: int, trailing_comma: bool = False) -> bytes:
    """A body whose deepest container is `depth` levels down (the body itself is 1)."""
    inner = b"[1,]" if trailing_comma else b"[1]"
    return b'{"tools":' + b"[" * (depth - 2) + inner + b"]" * (depth - 2) + b"}"


@pytest.mark.parametrize("trailing_comma", [False, True])
def test_nesting_up_to_the_limit_is_read(trailing_comma):
    assert "tools" in wire.parse_body(nested(wire.MAX_DEPTH, trailing_comma))


@pytest.mark.parametrize("trailing_comma", [False, True])
@pytest.mark.parametrize("depth", [wire.MAX_DEPTH + 1, 5_000, 100_000])
def test_nesting_beyond_the_limit_is_refused(depth, trailing_comma):
    error = rejected(wire.parse_body, nested(depth, trailing_comma))
    assert f"deeper than {wire.MAX_DEPTH}" in error.message


def test_deep_nesting_in_objects_is_refused():
    raw = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    assert "deeper than" in rejected(wire.parse_body, raw).message


def test_nesting_inside_strings_does_not_count():
    text = "[" * 10_000
    assert wire.parse_body(json.dumps({"displayName": text}).encode())["displayName"] == text


# ---------------------------------------------------------------- size


def test_body_size_limit():
    small = b'{"displayName": "x"}'
    padded = small + b" " * (wire.MAX_BODY_BYTES - len(small))
    assert wire.parse_body(padded) == {"displayName": "x"}
    error = rejected(wire.parse_body, padded + b" ")
    assert f"exceeds the limit: {wire.MAX_BODY_BYTES} bytes" in error.message


# ---------------------------------------------------------------- Unicode


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"display_name": "\\ud800"}', "display_name"),
        (b'{"displayName": "ok \\udfff"}', "displayName"),
        (
            b'{"tuningTask": {"trainingData": {"examples": {"examples": '
            b'[{"textInput": "a", "output": "b\\udc00c"}]}}}}',
            "tuningTask.trainingData.examples.examples[0].output",
        ),
        (b'{"contents": [{"parts": [{"text": "\\ud83d"}]}]}', "contents[0].parts[0].text"),
        (b'{"tools": [{"x": ["\\ud800"]}]}', "tools[0].x[0]"),  # free-form fields too
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(raw, field):
    error = rejected(wire.parse_body, raw)
    assert error.violations[0].field == field
    assert "must be valid Unicode" in error.message


def test_a_lone_surrogate_on_the_json5_path_is_refused():
    # pyjson5 itself refuses the escape; the strict parser's complaint is what is shown.
    error = rejected(wire.parse_body, b'{"display_name": "\\ud800",}')
    assert "Invalid JSON payload received" in error.message


def test_a_lone_surrogate_in_a_key_is_refused_and_reported_escaped():
    error = rejected(wire.parse_body, b'{"\\ud800": 1}')
    assert error.violations[0].field == "\\ud800"
    error.message.encode("utf-8")  # the error body itself stays valid UTF-8


def test_surrogate_bytes_in_utf8_are_refused():
    # CESU-8 bytes for U+D800: Python's JSON reader lets them through as a lone surrogate.
    error = rejected(wire.parse_body, b'{"displayName": "\xed\xa0\x80"}')
    assert "must be valid Unicode" in error.message


def test_nul_is_refused_naming_the_field():
    # Valid Unicode, but no PostgreSQL text column can hold it: refused on every store alike.
    error = rejected(wire.parse_body, json.dumps({"displayName": "a\x00b"}).encode())
    assert [v.field for v in error.violations] == ["displayName"]
    assert "must not contain NUL" in error.message


@pytest.mark.parametrize(
    "text", ["שלום עולם", "\u202eevil", "😀 paired surrogates", "\ufffe\uffff"]
)
def test_valid_unicode_is_read(text):
    raw = json.dumps({"displayName": text}).encode()
    assert wire.parse_body(raw) == {"displayName": text}
