"""Shared arrangements for the referral tests (issue 5): canary-filled cases, consents,
referrals moved through the status machine over HTTP, and short-lived database reads.

Every database read here opens a session and closes it at once: on SQLite each transaction
takes the write lock, so a session left open would block the app's requests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func, select

from referral_api.access.categories import Category
from referral_api.cases.layout import CATEGORY_FIELDS

API = "/api/v1"
ALL = [c.value for c in Category]

# One unmistakable token per category: it appears in every free-text field of that category,
# so a value leaking from a category the receiver was not given is found in the raw text.
CANARY = {c.value: f"CANARY-{c.value.upper()}-7Q3X" for c in Category}
MESSAGE_CANARY = "CANARY-MESSAGE-7Q3X"


def canary_case(case_type: str = "thb") -> dict[str, Any]:
    """A case with a value in every category, each carrying its category's canary."""
    c = CANARY
    return {
        "case_type": case_type,
        "risk_level": "high",
        "identity": {
            "given_name": f"Olena {c['identity']}",
            "family_name": "Kovalenko",
            "aliases": [f"Lena {c['identity']}"],
            "date_of_birth": "1999-04-02",
            "sex": "female",
            "nationality": "UA",
            "languages": ["uk"],
            "documents": [{"type": "passport", "country": "UA", "number": "FA123456"}],
        },
        "contact": {
            "phone": "+380501234567",
            "email": "olena.k@example.net",
            "safe_contact_notes": f"text only {c['contact']}",
        },
        "location": {"address": f"vul. Tykha 7 {c['location']}", "is_shelter": True},
        "incident": {
            "exploitation_types": ["labour"],
            "means_of_control": ["debt_bondage"],
            "recruiter_relation": "acquaintance",
            "incident_date": "2026-09",
            "incident_place": f"Farm {c['incident']}",
            "narrative": f"Passport taken {c['incident']}",
        },
        "health": {"notes": f"Diabetic {c['health']}"},
        "psychosocial": {"notes": f"Nightmares {c['psychosocial']}"},
        "legal": {
            "status": f"Witness {c['legal']}",
            "proceedings": f"Case 12/2026 {c['legal']}",
            "lawyer": f"Adv. Petrenko {c['legal']}",
        },
        "immigration": {
            "residence_status": f"Reflection period {c['immigration']}",
            "reflection_period_until": "2027-01-15",
        },
        "needs": {
            "assessment": f"Shelter and counselling {c['needs']}",
            "plan": f"Weekly sessions {c['needs']}",
        },
    }


def provision(
    purpose: str,
    categories: Iterable[str],
    *,
    org_id: Any = None,
    org_type: str | None = None,
    valid_until: str | None = None,
    valid_from: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "purpose": purpose,
        "recipient_org_id": str(org_id) if org_id else None,
        "recipient_org_type": org_type,
        "categories": list(categories),
    }
    if valid_until is not None:
        body["valid_until"] = valid_until
    if valid_from is not None:
        body["valid_from"] = valid_from
    return body


def consent_body(*provisions: dict[str, Any]) -> dict[str, Any]:
    return {
        "grantor": "person",
        "collection_method": "interpreter_assisted",
        "language": "uk",
        "notice_version": "2026-01",
        "jurisdiction": "UA",
        "legal_basis": {"article6": "a", "article9": "a"},
        "provisions": list(provisions),
    }


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()


def create_case(client: Any, headers: dict[str, str], body: dict[str, Any] | None = None) -> str:
    return ok(client.post(f"{API}/cases", json=body or canary_case(), headers=headers), 201)["id"]


def record_consent(
    client: Any, headers: dict[str, str], case_id: str, *provisions: dict[str, Any]
) -> dict[str, Any]:
    response = client.post(
        f"{API}/cases/{case_id}/consents", json=consent_body(*provisions), headers=headers
    )
    return ok(response, 201)  # type: ignore[no-any-return]


def refer(
    client: Any,
    headers: dict[str, str],
    case_id: str,
    to_org_id: Any,
    categories: Iterable[str],
    *,
    purpose: str = "legal_assistance",
    send: bool = True,
    **extra: Any,
) -> Any:
    """POST a referral; returns the response (callers assert its status)."""
    body = {
        "to_org_id": str(to_org_id),
        "purpose": purpose,
        "categories": list(categories),
        "send": send,
        **extra,
    }
    return client.post(f"{API}/cases/{case_id}/referrals", json=body, headers=headers)


def etag(client: Any, headers: dict[str, str], referral_id: str) -> str:
    response = client.get(f"{API}/referrals/{referral_id}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.headers["ETag"]  # type: ignore[no-any-return]


def move(client: Any, headers: dict[str, str], referral_id: str, to: str, **fields: Any) -> Any:
    """One transition with the ETag just read; returns the response."""
    return client.post(
        f"{API}/referrals/{referral_id}/transitions",
        json={"to": to, **fields},
        headers={**headers, "If-Match": etag(client, headers, referral_id)},
    )


def walk(client: Any, headers: dict[str, str], referral_id: str, *steps: str) -> None:
    for step in steps:
        ok(move(client, headers, referral_id, step))


# ---- looking inside responses -------------------------------------------------------------


def keys_of(value: Any) -> set[str]:
    """Every key at any depth of a JSON document."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            found.add(key)
            found |= keys_of(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= keys_of(inner)
    return found


def strings_of(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from strings_of(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from strings_of(inner)


def category_keys(categories: Iterable[str]) -> set[str]:
    """The keys a packet may hold for these categories (plus document sub-keys)."""
    keys: set[str] = set()
    for name in categories:
        keys.add(name)
        keys |= set(CATEGORY_FIELDS[Category(name)])
        if name == "identity":
            keys |= {"type", "country", "number"}
    return keys


def foreign_canaries(shared: Iterable[str]) -> list[str]:
    shared = set(shared)
    return [token for name, token in CANARY.items() if name not in shared]


def assert_no_leak(response: Any, shared: Iterable[str], *extra_forbidden: str) -> None:
    """Neither the parsed JSON nor the raw body holds a canary of a category outside `shared`
    (nor any of `extra_forbidden`)."""
    raw = response.get_data(as_text=True)
    parsed = json.loads(raw) if raw else None
    texts = list(strings_of(parsed))
    for token in [*foreign_canaries(shared), *extra_forbidden]:
        assert token not in raw, (token, raw)
        assert not any(token in text for text in texts), token


# ---- the database, read briefly -----------------------------------------------------------


def rows(app: Any, model: Any, *where: Any) -> list[Any]:
    from referral_api.extensions import db

    with db.session_factory_for(app)() as s:
        found = list(s.scalars(select(model).where(*where)))
        s.expunge_all()
        s.rollback()
    return found


def count(app: Any, model: Any, *where: Any) -> int:
    from referral_api.extensions import db

    with db.session_factory_for(app)() as s:
        value = s.scalar(select(func.count()).select_from(model).where(*where))
        s.rollback()
    return int(value or 0)


def set_status(app: Any, referral_id: str, status: str) -> None:
    """Arrange: put a referral straight into a status (the move under test is then made
    over HTTP). Any status but a draft is that of a referral that was sent (`sent_at` set),
    as over HTTP: whether the receiver may know it exists depends on that alone."""
    from datetime import UTC, datetime

    from referral_api.extensions import db
    from referral_api.referrals.models import Referral
    from referral_api.referrals.vocabulary import ReferralStatus

    with db.session_factory_for(app)() as s:
        referral = s.get(Referral, uuid.UUID(referral_id))
        assert referral is not None
        referral.status = ReferralStatus(status)
        if referral.status is ReferralStatus.DRAFT:
            referral.sent_at = None
        elif referral.sent_at is None:
            referral.sent_at = datetime.now(UTC)
        s.commit()


# ---- a sender, a receiver and an outsider -------------------------------------------------


class World:
    """A sending NGO and a receiving organisation with a caseworker and two supervisors
    each, an outsider organisation, and a canary-filled case of the sender whose consent lets
    the receiver have `shared` for `purpose`."""

    def __init__(
        self,
        factory: Any,
        client: Any,
        *,
        receiver_type: Any = None,
        shared: Iterable[str] = ("identity", "legal"),
        purpose: str = "legal_assistance",
        consent: bool = True,
    ) -> None:
        from referral_api.access.roles import OrgType, Role

        self.client = client
        self.purpose = purpose
        self.shared = sorted(shared)
        self.sender_org = factory.org(OrgType.NGO)
        self.receiver_org = factory.org(receiver_type or OrgType.LEGAL_AID)
        self.outsider_org = factory.org(OrgType.SHELTER)
        self.ids: dict[str, uuid.UUID] = {}
        self.h: dict[str, dict[str, str]] = {}
        for name, role, org in (
            ("sender", Role.CASEWORKER, self.sender_org),
            ("sender_sup", Role.SUPERVISOR, self.sender_org),
            ("sender_sup2", Role.SUPERVISOR, self.sender_org),
            ("sender_dpo", Role.DPO, self.sender_org),
            ("receiver", Role.CASEWORKER, self.receiver_org),
            ("receiver_sup", Role.SUPERVISOR, self.receiver_org),
            ("outsider", Role.CASEWORKER, self.outsider_org),
            ("outsider_sup", Role.SUPERVISOR, self.outsider_org),
        ):
            principal = factory.user(role, org)
            self.ids[name] = principal.id
            self.h[name] = factory.headers(principal)
        self.case_id = create_case(client, self.h["sender"])
        self.consent: dict[str, Any] | None = None
        if consent:
            self.consent = self.consent_to_receiver()

    def consent_to_receiver(self, **window: Any) -> dict[str, Any]:
        """A consent of the case for the receiver, the purpose and the shared categories;
        `window`: the provision's valid_from / valid_until."""
        provided = provision(self.purpose, self.shared, org_id=self.receiver_org, **window)
        return record_consent(self.client, self.h["sender"], self.case_id, provided)

    def refer(self, *, send: bool = True, status: int = 201, **extra: Any) -> dict[str, Any]:
        extra.setdefault("purpose", self.purpose)
        extra.setdefault("message", f"Please help {MESSAGE_CANARY}")
        response = refer(
            self.client,
            self.h[extra.pop("by", "sender")],
            extra.pop("case_id", self.case_id),
            extra.pop("to_org_id", self.receiver_org),
            extra.pop("categories", self.shared),
            send=send,
            **extra,
        )
        return ok(response, status)  # type: ignore[no-any-return]


def raw_bytes(app: Any, sql: str) -> bytes:
    """Everything a raw query returns, as bytes (to look for plaintext at rest)."""
    from sqlalchemy import text

    from referral_api.extensions import db

    with db.session_factory_for(app)() as s:
        found = [value for row in s.execute(text(sql)) for value in row]
        s.rollback()
    return b"\n".join(
        bytes(v) if isinstance(v, bytes | bytearray | memoryview) else str(v).encode()
        for v in found
    )


def request_erasure(client: Any, world: Any, basis: str = "consent_withdrawn") -> str:
    """The sending organisation's supervisor asks for the world's case to be erased; the
    request's id."""
    response = client.post(
        f"{API}/cases/{world.case_id}/erasure", json={"basis": basis}, headers=world.h["sender_sup"]
    )
    return ok(response, 201)["id"]  # type: ignore[no-any-return]


def keyed_post(client: Any, url: str, headers: dict[str, str], body: Any, key: str) -> Any:
    """A POST of `body` with `Idempotency-Key: key`."""
    return client.post(url, json=body, headers={**headers, "Idempotency-Key": key})
