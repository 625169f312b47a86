"""Marshmallow fields shared by the request and response schemas of every blueprint."""

from __future__ import annotations

import re
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


def not_blank(value: str) -> None:
    """Names and texts are stored stripped: "   " would otherwise pass Length and be saved
    as ""."""
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


# Map coordinates precise to a street or a building: what a service's published text must
# never hold, as a shelter's place would then be on every organisation's screen and in HSDS.
# Two decimal degrees with four or more decimals (~11 m; a decimal comma too, as most of
# Europe writes them) at most 24 characters apart — a bare comma as maps apps, `geo:` URIs
# and map links write them, `N`, ` lon `, `, Longitude: ` —, or degrees and (decimal)
# minutes, with the degree sign or the ordinal sign phones offer for it and any of the
# apostrophes keyboards type. Four decimals, not three: three-digit groups are thousands
# (`1.500 - 2.000`). No quantifier here can match the same text two ways, so a long input
# (4,000 characters of spaces and digits) costs linear time: the first version backtracked
# as n⁴ on blank runs.
_DEGREES = r"\d{1,3}[.,]\d{4,}"
_MINUTE_MARKS = "['\u2032\u2019\u00b4]"
_COORDINATES = re.compile(
    # The first number starts a number; the second may follow a comma straight away.
    rf"(?<![\d.,]){_DEGREES}\D{{0,24}}?(?<![\d.]){_DEGREES}"
    rf"|\d{{1,3}} ?[°º] ?\d{{1,2}}(?:[.,]\d+)? ?{_MINUTE_MARKS}"
)


def no_coordinates(value: str | None) -> None:
    if value and _COORDINATES.search(" ".join(value.split())):
        raise ma.ValidationError(
            "Must not hold map coordinates: the directory is shown to every organisation. "
            "Describe the area served instead."
        )
