"""Marshmallow fields shared by the request and response schemas of every blueprint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma


class AwareDateTime(ma.fields.AwareDateTime):
    """marshmallow's AwareDateTime (an offset is required), refusing an instant whose UTC
    time falls outside years 1 to 9999: `0001-01-01T00:00:00+14:00` is in year 0 in UTC,
    and converting it (to compare or to store it) overflowed, a 500."""

    default_error_messages = {"out_of_range": "Must be within years 0001 to 9999 in UTC."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment.astimezone(UTC)
        except OverflowError:
            raise self.make_error("out_of_range") from None
        return moment


class Pattern(ma.validate.Regexp):
    """marshmallow's Regexp checked against the whole value. Its `re.match` of an anchored
    pattern lets a final line break through (`$` matches before one: "UA\n" passed
    `^[A-Z]{2}$` and was stored); the OpenAPI document still states the anchored pattern,
    which JSON Schema reads as a whole-value match."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


# A BCP 47 language tag (`uk`, `pt-BR`, `sr-Latn-RS`), at most 35 characters (RFC 5646 §4.4.1).
LANGUAGE_TAG = [
    Pattern(
        r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", error="Use a BCP 47 language tag, e.g. uk or pt-BR."
    ),
    ma.validate.Length(max=35),
]


class Boolean(ma.fields.Boolean):
    """A JSON body's boolean: `true` or `false` only. marshmallow's also reads "yes", "0",
    1 and their kin, so `{"send": "true"}` sent a referral and `{"restricted": "yes"}`
    restricted a case where the schema (and openapi.json) says boolean. Query strings,
    where every value is text, keep marshmallow's own."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value
