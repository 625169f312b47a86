"""Blind indexes: keyed HMAC-SHA256 over a normalised value, truncated to a planned bit length.

Search = compute the index value → candidate rows → decrypt → compare normalised values, so
truncation collisions (false positives) never reach the caller. Index keys are per
organisation and versioned: the same value has unrelated index values in two organisations.

Normalisation rules (documented for users in docs/search.md), version `RULES`:
- names: Unicode NFKD; combining marks (accents, diacritics, Arabic harakat) removed;
  case-folded (ß → ss); German umlaut spellings folded (ae → a, oe → o, ue → u, so Müller,
  MULLER and Mueller match); Arabic alef forms → ا, taa marbuta → ه, alef maksura and
  Persian yeh → ي, Persian keheh → ك, tatweel removed; Cyrillic ё → е, й → и; invisible
  format characters (soft hyphen, zero-width space and joiners) removed; Turkish dotless ı
  → i (so Yıldız matches YILDIZ); apostrophes (' ’ ʼ ` ʻ ‘ ´ ′) removed; other punctuation
  and hyphens a space; whitespace collapsed.
- phones: the first number in the text (a note after it, "(sister)", "(18:00-20:00)", or a
  second number, is not part of it), parsed with libphonenumber and formatted E.164
  (national forms use the deployment's default region); unparseable input falls back to
  digits only.
- document numbers: letters and digits of any script, upper-cased; digits of any script as
  ASCII digits; Cyrillic letters that look like Latin ones (А В Е К М Н О Р С Т У Х) as those.
- dates: ISO 8601 `YYYY-MM-DD`.

Rules 2 (2026-11-30) kept the dotless ı and the apostrophes ʻ ‘ ´ ′ (‘ and ´ as a space),
and read a phone up to its last digit before a letter, so a note with digits or a second
number became part of it. Rules 1 (before 2026-11-30) kept only ASCII letters and digits of
a document number, read a phone's trailing words as digits (a vanity number), and kept
tatweel, Persian yeh and keheh and format characters. Entries stored under older rules
differ for such values until `referral-api keys rotate-index` recomputes them (each index
key records the rules its entries were computed under; `keys status` counts them).
"""

from __future__ import annotations

import hmac
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import Leniency

# The version of these rules; each index key records the one its entries were made under.
RULES = 3

_SPACES = re.compile(r"\s+")
_ARABIC_FOLDS = str.maketrans(
    {
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ة": "ه",
        "ى": "ي",
        "ی": "ي",  # Persian yeh (U+06CC)
        "ک": "ك",  # Persian keheh (U+06A9)
        "ـ": None,  # tatweel: typographic elongation
    }
)
_UMLAUT_DIGRAPHS = re.compile(r"([aou])e")
# Apostrophes and the marks typed for one (Uzbek ʻ, left quote, acute accent, prime).
_APOSTROPHES = frozenset("'’ʼ`ʻ‘´′")
# Before the compatibility form: it turns the acute accent ´ into a space and a mark.
_BEFORE_COMPATIBILITY = str.maketrans({"´": None})
# After case folding, which keeps the dotless ı (its capital I folds to i).
_AFTER_FOLDING = {"ı": "i"}


class _CharacterTable(dict[int, int | str | None]):
    """A `str.translate` table that decides each character the first time it is met (by
    `rule`: the character itself, its replacement, or None to drop it) and remembers the
    answer, for up to `_REMEMBERED` characters (names use a few hundred; input made of
    many more is still translated right, just not remembered): one C-level pass per string
    where a Python test per character was needed. What is remembered are properties of
    Unicode characters, never anyone's data."""

    def __init__(self, rule: Callable[[str], str | None]) -> None:
        super().__init__()
        self._rule = rule

    def __missing__(self, code: int) -> int | str | None:
        result = self._rule(chr(code))
        value: int | str | None = code if result == chr(code) else result
        if len(self) < _REMEMBERED:
            self[code] = value
        return value


_REMEMBERED = 20_000


# Combining marks (accents, diacritics, harakat) dropped after NFKD.
_DROP_COMBINING = _CharacterTable(lambda ch: None if unicodedata.combining(ch) else ch)
# After case folding: apostrophes and invisible format characters (soft hyphen, zero-width
# space and joiners: Unicode category Cf) dropped, the dotless ı an i, anything not a letter
# or digit a space.
_WORD_CHARACTERS = _CharacterTable(
    lambda ch: (
        None
        if ch in _APOSTROPHES or unicodedata.category(ch) == "Cf"
        else _AFTER_FOLDING.get(ch, ch)
        if ch.isalnum()
        else " "
    )
)


def normalise_name(value: str) -> str:
    text = value.translate(_BEFORE_COMPATIBILITY)
    text = unicodedata.normalize("NFKC", text).translate(_ARABIC_FOLDS)
    text = unicodedata.normalize("NFKD", text).translate(_DROP_COMBINING).casefold()
    text = text.translate(_WORD_CHARACTERS)
    text = _UMLAUT_DIGRAPHS.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()


# The number at the start of a phone field: from its first digit or "+" to its last digit
# before anything else ("+380 50 123 45 67 (sister)" → "+380 50 123 45 67").
_LEADING_NUMBER = re.compile(r"\(?[+\d][\d\s().\-/]*\d")


def normalise_phone(value: str, default_region: str) -> str:
    region = default_region.upper()
    leading = _LEADING_NUMBER.search(value)
    candidate = leading.group() if leading is not None else value
    try:
        number: phonenumbers.PhoneNumber | None = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        # Too long for a number: the run of digits took in a note ("(18:00-20:00)") or a
        # second number ("050 123 4567 / 067 123 4567"). libphonenumber's own finder reads
        # the first number in the text (only then: it costs several times a parse).
        found = next(
            iter(phonenumbers.PhoneNumberMatcher(value, region, leniency=Leniency.POSSIBLE)),
            None,
        )
        if found is not None:
            number = found.number
    if number is not None:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    digits = re.sub(r"\D", "", candidate)
    return f"+{digits}" if candidate.strip().startswith("+") else digits


# Cyrillic capitals that look like Latin ones: a series typed either way is the same one.
_DOCUMENT_HOMOGLYPHS = str.maketrans("АВЕКМНОРСТУХ", "ABEKMHOPCTYX")


def _document_character(ch: str) -> str:
    digit = unicodedata.decimal(ch, None)
    if digit is not None:
        return str(digit)
    return ch if ch.isalpha() else ""


def normalise_document(value: str) -> str:
    text = unicodedata.normalize("NFKC", value).upper().translate(_DOCUMENT_HOMOGLYPHS)
    return "".join(_document_character(ch) for ch in text)


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """How many bits an index keeps, and why."""

    bits: int
    expected_rows: int
    expected_false_positives: float


MIN_BITS = 8
MAX_BITS = 32


def plan_bits(
    expected_rows: int, target_false_positives: float = 2.0, cardinality: int | None = None
) -> IndexPlan:
    """Choose a truncation length so that a query meets about `target_false_positives`
    unrelated rows at `expected_rows` (cheap to filter after decryption, and every index
    value is shared by several rows, which blunts frequency analysis).

    For low-cardinality attributes (`cardinality` distinct values, e.g. dates of birth)
    the bits are also capped so that each index value covers several distinct values.
    """
    rows = max(expected_rows, 2)
    bits = math.ceil(math.log2(rows / max(target_false_positives, 0.001)))
    if cardinality is not None:
        bits = min(bits, max(MIN_BITS, math.floor(math.log2(cardinality)) - 2))
    bits = max(MIN_BITS, min(MAX_BITS, bits))
    return IndexPlan(bits=bits, expected_rows=rows, expected_false_positives=rows / 2**bits)


def blind_index(key: bytes, field: str, normalised: str, bits: int) -> int:
    """HMAC-SHA256(key, field ‖ 0x00 ‖ value) truncated to `bits` (a non-negative int)."""
    digest = hmac.digest(
        key, field.encode("ascii") + b"\x00" + normalised.encode("utf-8"), "sha256"
    )
    return int.from_bytes(digest[:8], "big") >> (64 - bits)
