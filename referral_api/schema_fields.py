"""Marshmallow fields shared by the request and response schemas of every blueprint."""

from __future__ import annotations

import re
import unicodedata
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
_DEGREES = r"\d{1,3}[.,\u00b7\u066b]\d{4,}"
_MINUTE_MARKS = "['\u2032\u2019\u00b4]"
# Open Location Code ("plus code") digits: what a maps app shows for a dropped pin.
_OLC = "[23456789CFGHJMPQRVWX]"
# Degrees and decimal minutes (to ~2 m), degrees, minutes and seconds, written without marks.
_DM = r"\d{1,3} \d{1,2}[.,]\d{3,}"
_DMS = r"\d{1,3} \d{1,2} \d{1,2}(?:[.,]\d+)?"
_COORDINATES = re.compile(
    # The first number starts a number; the second may follow a comma straight away.
    rf"(?<![\d.,]){_DEGREES}\D{{0,24}}?(?<![\d.]){_DEGREES}"
    rf"|\d{{1,3}} ?[°º] ?\d{{1,2}}(?:[.,]\d+)? ?{_MINUTE_MARKS}"
    # Found by review, each a building's place as devices and map apps hand them out:
    # a plus code, full (`9G2GFG3H+2V`, ~14 m) or short (`FG3H+2V Kyiv`);
    rf"|(?<![0-9A-Z]){_OLC}{{4,8}}\+{_OLC}{{2,3}}(?![0-9A-Z])"
    # a what3words address (3 m);
    r"|///[^\W\d_]+\.[^\W\d_]+\.[^\W\d_]+"
    # an MGRS grid reference to 10 m or 1 m (`35U NR 51234 45678`), or UTM in metres;
    r"|(?<![0-9A-Z])\d{1,2}[C-HJ-NP-X] ?[A-HJ-NP-Z]{2} ?\d{4,5} ?\d{4,5}(?!\d)"
    r"|(?<![0-9A-Z])\d{1,2}[C-HJ-NP-X] ?\d{6}(?:[.,]\d+)? ?m?E? ?\d{7}(?!\d)"
    # degrees and decimal minutes, or degrees, minutes and seconds, without the marks, as
    # a latitude and a longitude (one alone is not a place, and numbers in a row followed
    # by a capital are common: `044 12 34 E-mail`): `N 50 27.006 E 030 31.404`,
    # `50 27 00.4 N 30 31 24.2 E`, `5045.01N/03031.40E`, `504500N 0303124E`; and
    # `50d27m00s`, as GPS units print it.
    rf"|(?<![A-Z])[NS] ?{_DM},? ?[EW] ?{_DM}"
    rf"|(?<![A-Z])[NS] ?{_DMS},? ?[EW] ?{_DMS}"
    rf"|(?<![\d.,]){_DMS} ?[NS],? ?{_DMS} ?[EW](?![A-Z])"
    r"|(?<![\d.,])\d{4,5}[.,]\d{2,} ?[NS][ /,]{0,2}\d{4,5}[.,]\d{2,} ?[EW](?![A-Z])"
    r"|(?<![\d.,])\d{6,7}(?:[.,]\d+)? ?[NS] ?\d{6,7}(?:[.,]\d+)? ?[EW](?![A-Z])"
    r"|\d{1,3} ?d ?\d{1,2} ?m ?\d{1,2}(?:[.,]\d+)? ?s(?![A-Z])"
    # and a link to a map, which points at a place whatever it holds.
    r"|maps\.app\.goo\.gl|goo\.gl/maps|maps\.google\.|google\.[a-z.]{2,6}/maps"
    r"|openstreetmap\.org|osm\.org/go|w3w\.co/|what3words\.com/|maps\.apple\.com"
    r"|waze\.com/|yandex\.[a-z]{2,3}/maps|2gis\.[a-z]{2,3}/",
    re.IGNORECASE,
)


def no_coordinates(value: str | None) -> None:
    # As written, and under NFKC: fullwidth digits and points (U+FF10-FF19, U+FF0E) are then the
    # ones above (NFKC alone would turn the ordinal sign typed for a degree into an `o`).
    if value and any(
        _COORDINATES.search(" ".join(text.split()))
        for text in (value, unicodedata.normalize("NFKC", value))
    ):
        raise ma.ValidationError(
            "Must not hold map coordinates, a plus code, a what3words address or a map "
            "link: the directory is shown to every organisation. Describe the area served "
            "instead."
        )
