"""JSON in and out through orjson (referral_api.jsonio): the same JSON values the stdlib
gives, and the stdlib's answers wherever orjson would differ."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from referral_api.jsonio import OrjsonProvider, loads


@dataclass
class _Point:
    x: int
    label: str


VALUES: list[Any] = [
    {"b": 1, "a": [True, None, 1.5, -0.0, 1e300], "ü": "Müller Олена محمد 😀"},
    {
        "id": uuid.UUID("11111111-2222-3333-4444-555555555555"),
        "at": datetime(2026, 11, 29, 8, tzinfo=UTC),
    },
    {"day": date(2026, 1, 2), "point": _Point(3, "x")},
    {"big": 2**70, "small": -(2**70)},  # past 64 bits: the stdlib writes them
    {1: "int key"},  # non-string keys: the stdlib's conversion
    ["\u2028\u2029", 'tab\tquote"back\\slash', "\x00\x1f"],
]


# A provider holds its app weakly: the apps live as long as the module.
_FAST_APP, _STDLIB_APP = Flask(__name__), Flask(__name__)


@pytest.fixture
def providers() -> tuple[OrjsonProvider, DefaultJSONProvider]:
    return OrjsonProvider(_FAST_APP), DefaultJSONProvider(_STDLIB_APP)


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_responses_carry_the_json_values_the_stdlib_would(providers: Any, value: Any) -> None:
    fast, stdlib = providers
    with fast._app.app_context():
        body = fast.response(value).get_data()
    with stdlib._app.app_context():
        expected = stdlib.response(value).get_data()
    assert json.loads(body) == json.loads(expected)
    assert body.endswith(b"\n")
    assert json.loads(fast.dumps(value)) == json.loads(stdlib.dumps(value))


def test_keys_are_sorted_and_text_is_utf8(providers: Any) -> None:
    fast, _ = providers
    with fast._app.app_context():
        response = fast.response({"z": 1, "a": "Müller"})
    assert response.get_data() == '{"a":"Müller","z":1}\n'.encode()
    assert response.mimetype == "application/json"


def test_datetimes_keep_flasks_http_date_form(providers: Any) -> None:
    fast, _ = providers
    assert fast.dumps({"at": datetime(2026, 11, 29, 8, tzinfo=UTC)}) == (
        '{"at":"Sun, 29 Nov 2026 08:00:00 GMT"}'
    )


def test_what_neither_can_serialise_fails_as_before(providers: Any) -> None:
    fast, _ = providers
    with pytest.raises(TypeError):
        fast.dumps({"x": object()})


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5, "x\\u00fc"], "a": 3}',
        "NaN",
        "[Infinity, -Infinity]",
        '"\\ud800"',
        "123456789012345678901234567890",
        '{"n": 1e400}',
        "  [ ]  ",
    ],
)
def test_request_bodies_read_as_the_stdlib_reads_them(text: str) -> None:
    expected = json.loads(text)
    got = loads(text)
    assert repr(got) == repr(expected)
    assert repr(loads(text.encode())) == repr(expected)


@pytest.mark.parametrize(
    "data",
    [b'\xef\xbb\xbf{"bom": 1}', '{"utf16": "ü"}'.encode("utf-16"), b'{"a": "\xc3\xbc"}'],
    ids=["utf-8 bom", "utf-16", "utf-8"],
)
def test_request_bytes_are_decoded_as_the_stdlib_decodes_them(data: bytes) -> None:
    assert loads(data) == json.loads(data)


@pytest.mark.parametrize("text", ["{", "[1,]", "{'a': 1}", ""])
def test_malformed_bodies_raise_the_stdlib_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(text)


_DEEP = "[" * 100_000 + "]" * 100_000  # past orjson's 1,024 levels and the stdlib's recursion


@pytest.mark.parametrize(
    "data",
    [_DEEP, _DEEP.encode(), _DEEP.encode("utf-16"), _DEEP.replace("[", "[1", 1) + "0" * 19],
    ids=["text", "utf-8", "utf-16", "long digits"],
)
def test_bodies_nested_too_deeply_are_malformed_json_in_every_encoding(data: Any) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(data)


def test_the_api_reads_and_answers_through_orjson(app: Any, client: Any) -> None:
    assert isinstance(app.json, OrjsonProvider)
    bad = client.post(
        "/api/v1/auth/login", data=b'{"email": "x@example.org",', content_type="application/json"
    )
    assert bad.status_code in (400, 422)
    assert bad.mimetype == "application/problem+json"


def test_request_bodies_of_every_view_go_through_the_parser_as_webargs_read_them() -> None:
    from flask import request
    from webargs import core

    from referral_api.jsonio import Parser
    from referral_api.smorest import Blueprint

    assert isinstance(Blueprint.ARGUMENTS_PARSER, Parser)
    parser, app = Parser(), Flask(__name__)
    body = b'{"n": 1180591620717411303425, "name": "\\u00d6z"}'  # 2**70 + 1: no float holds it
    with app.test_request_context(data=body, content_type="application/json"):
        assert parser._raw_load_json(request) == {"n": 2**70 + 1, "name": "Öz"}
    invalid_utf8 = app.test_request_context(data=b'{"a": "\xff"}', content_type="application/json")
    with invalid_utf8, pytest.raises(json.JSONDecodeError):  # webargs: "Invalid JSON body."
        parser._raw_load_json(request)
    empty = app.test_request_context(data=b"", content_type="application/json")
    with empty, pytest.raises(json.JSONDecodeError) as error:
        parser._raw_load_json(request)
    # Declared JSON but empty is malformed JSON (400), not "no body" (webargs reads an error
    # on an empty document so): a PATCH with it answered 200 and moved the case's version.
    assert error.value.doc != ""
    with app.test_request_context(data=b"a=1", content_type="text/plain"):
        assert parser._raw_load_json(request) is core.missing
