"""Property tests of the wire codec: whatever a client sends, decoding either succeeds with
values inside the proto's ranges or raises the service's 400, never anything else.

The generated bodies follow the codec's own schemas, with every field sometimes given a
hostile value: int64 edges, numbers as strings, NaN, infinities, -0.0, 1e400, lone
surrogates, NUL, right-to-left marks, 1 MB strings and deep nesting."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunesmith.api import wire
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.training.prompt import PromptCodec, detect_prompt_format

# `make fuzz` raises the budget; `make test` keeps it to seconds.
EXAMPLES = int(os.environ.get("TUNESMITH_PROPERTY_EXAMPLES", "300"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT32, INT64 = wire.INTEGER_RANGES[wire.INT32], wire.INTEGER_RANGES[wire.INT64]
EDGES = sorted({b + d for b in (0, *INT32, *INT64, 10**12, 10**30) for d in (-1, 0, 1)} | {10**400})
ODD_CHARACTERS = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\u202e", "\u200f", "\ufeff"]

characters = st.one_of(st.characters(exclude_categories=()), st.sampled_from(ODD_CHARACTERS))
texts = st.one_of(
    st.text(characters, max_size=20),
    st.sampled_from(["", "NaN", "Infinity", "-Infinity", "1e400", "-0", " 1", "0x10", "1_0"]),
)
megabyte_texts = st.builds(
    lambda c, odd: c * (1 << 20) + odd, st.sampled_from(["x", "é", "\u202e"]), texts
)
integers = st.one_of(st.sampled_from(EDGES), st.integers())
floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]), st.floats()
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    integers.map(str),
    floats,
    floats.map(repr),
    texts,
)
any_json = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(characters, max_size=8), inner)
    ),
    max_leaves=8,
)


def field_values(kind: Any, depth: int) -> st.SearchStrategy:
    """Values for one field: mostly of the field's own type (so that whole requests get
    past the first violation), sometimes anything at all."""
    typed = _typed(kind, depth)
    return st.one_of(typed, typed, typed, any_json) if depth < 4 else any_json


def _typed(kind: Any, depth: int) -> st.SearchStrategy:
    if isinstance(kind, wire.Repeated):
        return st.lists(field_values(kind.item, depth + 1), max_size=3)
    if kind in wire.ENUMS:
        members = list(wire.ENUMS[kind])
        known = st.sampled_from([m.name for m in members] + [int(m) for m in members])
        return st.one_of(known, integers, floats)
    if kind in wire.SCHEMAS:
        return messages(kind, depth + 1)
    return {
        wire.STRING: texts,
        wire.BOOL: st.booleans(),
        wire.FLOAT: st.one_of(floats, floats.map(repr)),
        wire.INT32: st.one_of(integers, integers.map(str)),
        wire.INT64: st.one_of(integers, integers.map(str)),
        "Any": any_json,
    }[kind]


def messages(schema: str, depth: int = 0) -> st.SearchStrategy:
    fields = wire.SCHEMAS[schema]
    optional = {name: field_values(kind, depth) for name, kind in fields.items()}
    return st.fixed_dictionaries({}, optional=optional)


def is_invalid_argument(error: ServiceError) -> bool:
    return error.code is Code.INVALID_ARGUMENT and bool(error.message)


def decoded_or_invalid(decode, *args) -> Any:
    """The decoder's result, or None after the service's 400; any other error fails."""
    try:
        return decode(*args)
    except ServiceError as error:
        assert is_invalid_argument(error), error
        return None


def wire_bytes(body: dict, trailing_commas: bool) -> bytes:
    """The body as a client sends it: lone surrogates as \\u escapes, NaN and Infinity
    as JavaScript writes them, and optionally the tutorials' trailing commas."""
    try:
        text = json.dumps(body)
    except ValueError:  # an integer of thousands of digits
        text = json.dumps({"topK": "1" * 5000})
    if trailing_commas:
        text = text.replace("}", ",}").replace("{,}", "{}")
    return text.encode()


def in_range(value: int, kind: str) -> bool:
    low, high = wire.INTEGER_RANGES[kind]
    return low <= value <= high


# ---------------------------------------------------------------- scalars


@PROPERTY
@given(value=st.one_of(integers, integers.map(str), floats, texts))
def test_int32_fields_are_in_range_or_400(value):
    data = decoded_or_invalid(wire.read_message, {"topK": value}, "TunedModel")
    if data is not None:
        assert type(data["topK"]) is int and in_range(data["topK"], wire.INT32)
        assert data["topK"] == (int(value) if not isinstance(value, str) else int(value, 10))


@PROPERTY
@given(value=st.one_of(integers, integers.map(str)))
def test_int64_fields_are_in_range_or_400(value):
    body = {"readerProjectNumbers": [value]}
    data = decoded_or_invalid(wire.read_message, body, "TunedModel")
    assert (data is not None) == in_range(int(value), wire.INT64)


@PROPERTY
@given(value=st.one_of(floats, floats.map(repr), integers))
@example(value=10**400)
@example(value=-0.0)
def test_sampling_floats_are_in_range_or_400(value):
    change = decoded_or_invalid(wire.decode_update, {"temperature": value, "topP": value}, None)
    if change is not None:
        assert 0.0 <= change.temperature <= 1.0 and 0.0 <= change.top_p <= 1.0


@PROPERTY
@given(text=texts)
@example(text="\ud800")
def test_strings_are_valid_unicode_or_400_naming_the_field(text):
    assert_valid_unicode_or_400(text)


@settings(PROPERTY, max_examples=max(EXAMPLES // 30, 10))
@given(text=megabyte_texts)
@example(text="x" * (1 << 20) + "\udfff")
def test_megabyte_strings_are_valid_unicode_or_400(text):
    assert_valid_unicode_or_400(text)


def assert_valid_unicode_or_400(text: str) -> None:
    raw = json.dumps({"displayName": text, "description": text}).encode()
    try:
        assert wire.parse_body(raw) == {"displayName": text, "description": text}
        text.encode("utf-8")
    except ServiceError as error:
        assert is_invalid_argument(error)
        assert {v.field for v in error.violations} == {"displayName", "description"}
        if "\x00" in text:  # no store's text column holds NUL
            assert "must not contain NUL" in error.message
        else:
            assert "must be valid Unicode" in error.message
            with pytest.raises(UnicodeEncodeError):
                text.encode("utf-8")


# ---------------------------------------------------------------- nesting and raw bytes


@PROPERTY
@given(
    depth=st.one_of(st.integers(1, 130), st.sampled_from([1_000, 10_000, 100_000])),
    opener=st.sampled_from([b"[", b'{"a":']),
    trailing_comma=st.booleans(),
)
def test_nesting_is_read_up_to_the_limit_and_400_beyond(depth, opener, trailing_comma):
    closer = b"]" if opener == b"[" else b"}"
    inner = b"[1,]" if trailing_comma else b"[1]"
    raw = b'{"tools":' + opener * (depth - 2) + inner + closer * (depth - 2) + b"}"
    if depth < 2:
        raw = b'{"tools": 1}'
    body = decoded_or_invalid(wire.parse_body, raw)
    assert (body is not None) == (depth <= wire.MAX_DEPTH)


@PROPERTY
@given(raw=st.binary(max_size=200))
@example(raw=b'{"a": "\xed\xa0\x80"}')
@example(raw=b"\xff\xfe{\x00}\x00")
def test_any_bytes_decode_or_400(raw):
    body = decoded_or_invalid(wire.parse_body, raw)
    assert body is None or isinstance(body, dict)


# ---------------------------------------------------------------- whole requests


DECODERS = {
    "TunedModel": [
        lambda body: wire.decode_create(body, None),
        lambda body: wire.decode_update(body, None),
    ],
    "GenerateContentRequest": [wire.decode_generate],
    "Permission": [
        wire.decode_permission,
        lambda body: wire.decode_permission_update(body, "role"),
    ],
    "TransferOwnershipRequest": [wire.decode_transfer],
}


@PROPERTY
@given(
    schema_and_body=st.sampled_from(sorted(DECODERS)).flatmap(
        lambda schema: st.tuples(st.just(schema), messages(schema))
    ),
    trailing_commas=st.booleans(),
)
def test_whole_requests_decode_or_400(schema_and_body, trailing_commas):
    schema, body = schema_and_body
    parsed = decoded_or_invalid(wire.parse_body, wire_bytes(body, trailing_commas))
    if parsed is None:
        return
    for decode in DECODERS[schema]:
        result = decoded_or_invalid(decode, parsed)
        if result is not None:
            assert_within_ranges(result)


def assert_within_ranges(result: Any) -> None:
    """Every integer a decoder hands on fits an int64; every string is valid Unicode."""
    values = vars(result).values() if hasattr(result, "__dict__") else [result]
    for value in values:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, int):
                assert in_range(item, wire.INT64)
            elif isinstance(item, str):
                item.encode("utf-8")
            elif hasattr(item, "__dict__"):
                assert_within_ranges(item)


# ---------------------------------------------------------------- into the tokenizer


@pytest.fixture(scope="module")
def prompt_codec(tiny_model_dir) -> PromptCodec:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return PromptCodec(tokenizer, detect_prompt_format(tokenizer))


parts = st.one_of(st.fixed_dictionaries({}, optional={"text": any_json}), any_json)
contents = st.fixed_dictionaries(
    {"parts": st.lists(parts, max_size=3)},
    optional={"role": st.one_of(st.sampled_from(["user", "model"]), any_json)},
)
generate_requests = st.fixed_dictionaries(
    {"contents": st.one_of(st.lists(contents, min_size=1, max_size=3), any_json)},
    optional={"systemInstruction": contents},
)


@PROPERTY
@given(body=generate_requests, trailing_commas=st.booleans())
@example(body={"contents": [{"parts": [{"text": "a\ud800"}]}]}, trailing_commas=False)
def test_every_prompt_generate_accepts_can_be_tokenized(prompt_codec, body, trailing_commas):
    parsed = decoded_or_invalid(wire.parse_body, wire_bytes(body, trailing_commas))
    request = parsed and decoded_or_invalid(wire.decode_generate, parsed)
    if request:
        assert prompt_codec.encode_prompt(request.turns)
