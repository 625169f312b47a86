"""JSON in and out of HTTP through orjson, answering as Flask's and webargs' stdlib JSON does.

Every response body is serialised once and every request body parsed once; the stdlib does
both in Python-heavy code (a case's response is a few kilobytes of nested objects). orjson
(already the field-plaintext codec, `crypto.fields`) does them in compiled code. What a
client receives is the same JSON value, keys sorted as before; the bytes differ only in
that non-ASCII text is sent as UTF-8 (RFC 8259's encoding for JSON) instead of \\u escapes.

Anything orjson treats differently from the stdlib is handed to the stdlib, so behaviour at
the edges is unchanged: values orjson cannot serialise (integers past 64 bits, non-string
keys, types only Flask's `default` knows; datetimes go to it too, as Flask writes them in
HTTP-date form) and text orjson reads otherwise (integers past 64 bits, which it makes
floats), rejects while the stdlib accepts (NaN, lone surrogates) or rejects with another
error than the stdlib's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, cast

import orjson
from flask.json.provider import DefaultJSONProvider
from marshmallow import ValidationError
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from webargs.multidictproxy import MultiDictProxy
from werkzeug.datastructures import MultiDict
from werkzeug.sansio.response import Response

from referral_api.exceptions import nest_field_paths

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


# orjson reads an integer past 64 bits as a float (the stdlib: an exact int). A run of 19
# digits anywhere (in a number, or in a string, where it is harmless) sends the text to
# the stdlib.
_LONG_DIGITS = re.compile(r"[0-9]{19}")


class RepeatedMember(ValueError):
    """A JSON object naming one member twice (RFC 8259 §4: its meaning is unpredictable)."""

    def __init__(self, name: str) -> None:
        super().__init__("repeated member")
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise RepeatedMember(name)
            seen.add(name)
    return members


def loads(data: str | bytes, *, unique_members: bool = False) -> Any:
    """`json.loads(data)`, in compiled code where orjson reads the text alike (the stdlib
    decides everything else, from `data` itself: a byte-order mark, UTF-16, ...).

    `unique_members`: an object naming a member twice raises `RepeatedMember` (orjson, like
    the stdlib, keeps the last silently; a proxy or client library reading the first would
    see another request than the one stored). Read by the stdlib, which can tell: 8.7 µs
    for a bench case body, against 9.8 µs through orjson behind its digit scan."""
    try:
        if unique_members:
            return json.loads(data, object_pairs_hook=_unique_members)
        return _loads(data)
    except RecursionError:
        # Nested past the stdlib's recursion limit (orjson stops at 1,024 levels), in any
        # encoding: not a body anyone sends, answered as the malformed JSON it is rather
        # than as a crash.
        raise json.JSONDecodeError("Nested too deeply", _document(data), 0) from None
    except (json.JSONDecodeError, RepeatedMember):
        raise
    except ValueError:
        # An integer of more than 4,300 digits (Python's int_max_str_digits limit, against
        # quadratic-time conversion) or undecodable bytes: the stdlib raises a plain
        # ValueError, which webargs does not read as malformed JSON; it was a 500 with a
        # traceback for anyone, signed in or not, who can send a body.
        raise json.JSONDecodeError("Not JSON that can be read", _document(data), 0) from None


def _document(data: str | bytes) -> str:
    """`data` as the text a JSONDecodeError carries; never empty, as webargs reads an error
    on an empty document as "no body"."""
    document = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return document or "<empty>"


def _loads(data: str | bytes) -> Any:
    if isinstance(data, bytes | bytearray):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return json.loads(data)
    else:
        text = data
    if _LONG_DIGITS.search(text):
        return json.loads(data)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(data)


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson for compact output and for parsing."""

    ensure_ascii = False

    def _compact(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=self.default, option=_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError included
            return self.dumps(obj, separators=(",", ":")).encode("utf-8")

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:
            return super().dumps(obj, **kwargs)
        return self._compact(obj).decode("utf-8")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            return super().loads(s, **kwargs)
        return loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(*args, **kwargs)  # indented, for people reading it
        body = self._compact(self._prepare_response_obj(args, kwargs))
        response_class: Any = self._app.response_class  # typed for str bodies only
        return response_class(body + b"\n", mimetype=self.mimetype)  # type: ignore[no-any-return]


NUL_MESSAGE = "Text must not contain the NUL character (U+0000)."
SURROGATE_MESSAGE = "Text must be valid Unicode (an unpaired surrogate was sent)."
# Escapes that can put U+0000 or an unpaired surrogate (U+D800-U+DFFF) in a JSON string.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as sent (U+0000, an unpaired surrogate), or None. Also
    the command line's check (`cli`): a non-UTF-8 argument arrives as a lone surrogate."""
    if "\x00" in text:
        return NUL_MESSAGE
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE_MESSAGE
    return None


# A body is refused for its first few unstorable texts, not listed whole.
_MAX_TEXT_PROBLEMS = 20
# Where an item sits: (where its container sits, its key or index); None for the body.
_Place = tuple[Any, str] | None


def _path(place: _Place) -> str:
    keys: list[str] = []
    while place is not None:
        place, key = place
        keys.append(key)
    return ".".join(reversed(keys)) or "_schema"


def _text_problems(value: Any) -> dict[str, list[str]]:
    """{dotted path: [message]} for the strings and keys in `value` holding U+0000 or an
    unpaired surrogate, at most _MAX_TEXT_PROBLEMS of them. Walked with a stack (a body may
    nest deeper than Python recurses), each item's place a link to its container's: a path
    is joined only for a problem found (built for every item, a body nested 900 deep with a
    wide list at the bottom took ~1 GB for 1 MB)."""
    problems: dict[str, list[str]] = {}
    stack: list[tuple[_Place, Any]] = [(None, value)]
    while stack and len(problems) < _MAX_TEXT_PROBLEMS:
        place, item = stack.pop()
        if isinstance(item, str):
            message = text_problem(item)
            if message:
                problems[_path(place)] = [message]
        elif isinstance(item, Mapping):
            for key in item:
                here = (place, str(key))
                message = text_problem(key) if isinstance(key, str) else None
                if message:
                    problems[_path(here)] = [message]
                else:
                    stack.append((here, item[key]))
        elif isinstance(item, list | tuple):
            stack.extend(((place, str(index)), element) for index, element in enumerate(item))
    return problems


_PARAMETERS = frozenset({"query", "querystring", "form", "json_or_form"})


def _refuse_repeated(values: MultiDictProxy) -> None:
    """A query or form parameter given twice where one value is read: webargs takes the
    first silently, so `?status=open&status=closed` listed the open cases as if that were
    what was asked, and a token request naming `client_secret` twice was answered (RFC 6749
    §3.2: a parameter MUST NOT be included more than once). A list parameter may repeat."""
    given_values = cast("MultiDict[str, str]", values.data)  # werkzeug's: query, form
    repeated = {
        name: ["Given more than once: send it once."]
        for name, given in given_values.lists()
        if len(given) > 1 and name not in values.multiple_keys
    }
    if repeated:
        raise ValidationError(repeated)


class Parser(FlaskParser):
    """webargs' Flask parser reading JSON bodies through `loads`, refusing text that cannot
    be stored as sent.

    PostgreSQL's text cannot hold U+0000, and an unpaired surrogate (JSON can escape one,
    `\\ud800`) is no Unicode text at all: neither can be encoded as UTF-8, encrypted or
    stored (a plaintext column answered with a database error, a 500), and no name, code or
    note needs them. Any request value or key holding one is a 422 naming the field, on
    every database alike. JSON carries them only escaped, so a body without such an escape
    is not walked.
    """

    def pre_load(self, location_data: Any, *, schema: Any, req: Any, location: str) -> Any:
        if location in _PARAMETERS and isinstance(location_data, MultiDictProxy):
            _refuse_repeated(location_data)
        if location == "json" and not _SUSPECT_ESCAPE.search(req.get_data(cache=True)):
            return location_data
        if location not in ("json", "json_or_form", "form", "query", "querystring"):
            return location_data
        problems = _text_problems(location_data)
        if problems:
            raise ValidationError(nest_field_paths(problems))
        return location_data

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            # webargs reads an empty document as no body at all, and the schema loads {}: a
            # PATCH with an empty body answered 200 (and moved the case's version). Declared
            # JSON, it is malformed JSON (400). Without a Content-Type it is no body.
            raise json.JSONDecodeError("Empty body", "<empty>", 0)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return core.parse_json(data)  # the stdlib's error, as before
        try:
            return loads(text, unique_members=True)
        except RepeatedMember as repeated:
            name = repeated.name
            named = f'"{name}"' if name.isprintable() and len(name) <= 64 else "A member"
            message = f"{named} is given more than once in one object: send each member once."
            raise ValidationError({"_schema": [message]}) from None
