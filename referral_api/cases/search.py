"""Blind-index maintenance and exact search over encrypted case fields.

Indexed fields (query parameter → index field):
- `name` → "name": given name, family name, each alias, and "given family"
- `date_of_birth` → "dob" (bits capped for its low cardinality; see plan_bits)
- `family_name` + `birth_year` → "family_birth" (compound)
- `phone` → "phone" (E.164)
- `document_number` → "document" (upper-case alphanumerics)
Sex, nationality and other low-cardinality attributes are never indexed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from referral_api.crypto.blind_index import (
    blind_index,
    normalise_document,
    normalise_name,
    normalise_phone,
    plan_bits,
)
from referral_api.crypto.fields import decrypt_fields
from referral_api.crypto.keys import CryptoContext, KeyService

if TYPE_CHECKING:
    from referral_api.cases.models import Case

INDEX_FIELDS = ("name", "dob", "family_birth", "phone", "document")
# The encrypted fields each index is built from (decrypted to remove false positives).
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "name": ("given_name", "family_name", "aliases"),
    "dob": ("date_of_birth",),
    "family_birth": ("family_name", "date_of_birth"),
    "phone": ("phone",),
    "document": ("documents",),
}
INDEXED_SOURCE_FIELDS = frozenset(name for names in SOURCE_FIELDS.values() for name in names)

# Distinct dates of birth across ~100 years.
_DOB_CARDINALITY = 36_500


def default_plan(expected_cases: int) -> dict[str, int]:
    """Bits per index field for an expected number of cases (stored with each key version)."""
    return {
        "name": plan_bits(expected_cases * 4).bits,
        "dob": plan_bits(expected_cases, cardinality=_DOB_CARDINALITY).bits,
        "family_birth": plan_bits(expected_cases).bits,
        "phone": plan_bits(expected_cases).bits,
        "document": plan_bits(expected_cases).bits,
    }


def birth_year(date_of_birth: str | None) -> str | None:
    if not date_of_birth or len(date_of_birth) < 4:
        return None
    return date_of_birth[:4]


def _name_terms(case: Case, phone_region: str) -> set[str]:
    terms: set[str] = set()
    given = normalise_name(case.given_name) if case.given_name else ""
    family = normalise_name(case.family_name) if case.family_name else ""
    for name in (given, family, *(normalise_name(a) for a in case.aliases or [] if a)):
        if name:
            terms.add(name)
    if given and family:
        terms.add(f"{given} {family}")
    return terms


def _dob_terms(case: Case, phone_region: str) -> set[str]:
    return {case.date_of_birth} if case.date_of_birth else set()


def _family_birth_terms(case: Case, phone_region: str) -> set[str]:
    year = birth_year(case.date_of_birth)
    if not year or not case.family_name:
        return set()
    family = normalise_name(case.family_name)
    return {f"{family}|{year}"} if family else set()


def _phone_terms(case: Case, phone_region: str) -> set[str]:
    if not case.phone:
        return set()
    phone = normalise_phone(case.phone, phone_region)
    # Text without digits ("ask her sister") normalises to "" or "+": indexing it would
    # let any digitless query match every such case.
    return {phone} if any(ch.isdigit() for ch in phone) else set()


def _document_terms(case: Case, phone_region: str) -> set[str]:
    numbers = (normalise_document(str(d.get("number") or "")) for d in case.documents or [])
    return {number for number in numbers if number}


# Each index field's terms, computed from (and decrypting) only the fields it is built from.
_TERMS: dict[str, Callable[[Case, str], set[str]]] = {
    "name": _name_terms,
    "dob": _dob_terms,
    "family_birth": _family_birth_terms,
    "phone": _phone_terms,
    "document": _document_terms,
}


def index_terms(case: Case, phone_region: str) -> dict[str, set[str]]:
    """Normalised terms of one case, per index field."""
    return {field: _TERMS[field](case, phone_region) for field in INDEX_FIELDS}


def refresh_blind_index(session: Session, crypto: CryptoContext, case: Case) -> None:
    """Replace a case's index entries for every writable index-key version (dual-write
    during an index-key rotation)."""
    from referral_api.cases.models import add_index_entries, delete_index_entries

    if case not in session.new:
        # A case being inserted has no entries yet: skip the DELETE round trip.
        delete_index_entries(session, case.id)
    add_index_entries(session, written_index_entries(crypto.keys(session), crypto, case))


def written_index_entries(
    keys: KeyService, crypto: CryptoContext, case: Case
) -> list[dict[str, Any]]:
    """The case's entries (column values) under every index-key version written."""
    terms = index_terms(case, crypto.phone_region)
    return [
        entry
        for version in keys.index_versions(case.org_id, for_query=False)
        for entry in index_entries(keys, case, version, terms)
    ]


def index_entries(
    keys: KeyService, case: Case, version: int, terms: dict[str, set[str]]
) -> list[dict[str, Any]]:
    """The case's entries (column values) under index-key `version`."""
    key = keys.index_key(case.org_id, version)
    plan = keys.index_plan(case.org_id, version)
    return [
        {
            "org_id": case.org_id,
            "case_id": case.id,
            "field": field,
            "key_version": version,
            "value": blind_index(key, field, value, plan[field]),
        }
        for field, values in terms.items()
        for value in sorted(values)
    ]


def write_index_entries(
    session: Session,
    crypto: CryptoContext,
    case: Case,
    version: int,
    terms: dict[str, set[str]] | None = None,
) -> int:
    from referral_api.cases.models import add_index_entries

    terms = terms if terms is not None else index_terms(case, crypto.phone_region)
    entries = index_entries(crypto.keys(session), case, version, terms)
    add_index_entries(session, entries)
    return len(entries)


@functools.cache
def candidate_ids_statement(prefix: str) -> Select[Any]:
    """Case ids whose index entry matches (false positives included), built once: its
    parameters are `{prefix}org_id`, `{prefix}field`, `{prefix}version` and
    `{prefix}value` (`candidate_parameters`)."""
    from referral_api.cases.models import CaseSearchIndex

    return select(CaseSearchIndex.case_id).where(
        CaseSearchIndex.org_id == bindparam(f"{prefix}org_id"),
        CaseSearchIndex.field == bindparam(f"{prefix}field"),
        CaseSearchIndex.key_version == bindparam(f"{prefix}version"),
        CaseSearchIndex.value == bindparam(f"{prefix}value"),
    )


def candidate_parameters(
    prefix: str,
    session: Session,
    crypto: CryptoContext,
    org_id: uuid.UUID,
    field: str,
    term: str,
) -> dict[str, Any]:
    """The parameters of `candidate_ids_statement(prefix)` for an organisation's search for
    `term` in index `field`: its blind-index value under the active key version."""
    keys = crypto.keys(session)
    version = keys.index_versions(org_id, for_query=True)[-1]
    value = blind_index(
        keys.index_key(org_id, version), field, term, keys.index_plan(org_id, version)[field]
    )
    return {
        f"{prefix}org_id": org_id,
        f"{prefix}field": field,
        f"{prefix}version": version,
        f"{prefix}value": value,
    }


def matches(case: Case, field: str, term: str, phone_region: str) -> bool:
    """Exact comparison after decryption: removes truncation false positives. Only the
    fields the searched index is built from are decrypted (in one pass)."""
    decrypt_fields(case, SOURCE_FIELDS[field])
    if field == "name":
        return _name_matches(case, term)
    return term in _TERMS[field](case, phone_region)


def _name_matches(case: Case, term: str) -> bool:
    """`term in _name_terms(case)`, normalising only as many of the case's names as it
    takes to decide (a full name is decided by the given and family names, before any
    alias)."""
    if not term:
        return False  # no name normalises to nothing
    given = normalise_name(case.given_name) if case.given_name else ""
    if term == given:
        return True
    family = normalise_name(case.family_name) if case.family_name else ""
    if term == family or (given and family and term == f"{given} {family}"):
        return True
    return any(normalise_name(alias) == term for alias in case.aliases or [] if alias)


def normalised_query(params: dict[str, Any], phone_region: str) -> Iterable[tuple[str, str]]:
    """(index field, normalised term) pairs for the search parameters given."""
    if params.get("name"):
        yield "name", normalise_name(params["name"])
    if params.get("date_of_birth"):
        yield "dob", params["date_of_birth"].isoformat()
    if params.get("family_name") and params.get("birth_year"):
        yield "family_birth", f"{normalise_name(params['family_name'])}|{params['birth_year']:04d}"
    if params.get("phone"):
        yield "phone", normalise_phone(params["phone"], phone_region)
    if params.get("document_number"):
        yield "document", normalise_document(params["document_number"])
