"""Shared arrangements for the data-subject-rights tests (issue 6): an owning organisation
with every role, a receiving and an outsider organisation, cases whose every free-text
field carries a per-case canary, and brief raw reads of the database.

Every database read opens a session and closes it at once: on SQLite each transaction
begins IMMEDIATE (it takes the write lock), so a session left open would block the app.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import LargeBinary, text

from referral_api.access.roles import OrgType, Role
from referral_api.db import Base

API = "/api/v1"

needs_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL (SQLite runs one writer at a time)",
)
ALL_CATEGORIES = [
    "identity",
    "contact",
    "location",
    "incident",
    "health",
    "psychosocial",
    "legal",
    "immigration",
    "needs",
]


def new_token(label: str) -> str:
    """A canary unique to one case (upper-case: survives no normaliser unchanged but is
    never produced by one either)."""
    return f"CANARY{label.upper()}{uuid.uuid4().hex[:10].upper()}"


def canary_case(token: str, case_type: str = "thb") -> dict[str, Any]:
    """A case with a value in every category; every free-text field carries `token`."""
    return {
        "case_type": case_type,
        "risk_level": "high",
        "identity": {
            "given_name": f"Olena{token}",
            "family_name": f"Kovalenko{token}",
            "aliases": [f"Lena{token}"],
            "date_of_birth": "1999-04-02",
            "sex": "female",
            "nationality": "UA",
            "languages": ["uk"],
            "documents": [{"type": "passport", "country": "UA", "number": f"FA{token}"}],
        },
        "contact": {
            "phone": "+380501234567",
            "email": f"{token.lower()}@example.net",
            "safe_contact_notes": f"text only {token}",
        },
        "location": {"address": f"vul. Tykha 7 {token}", "is_shelter": True},
        "incident": {
            "exploitation_types": ["labour"],
            "means_of_control": ["debt_bondage"],
            "recruiter_relation": "acquaintance",
            "incident_date": "2026-09",
            "incident_place": f"Farm {token}",
            "narrative": f"Passport taken {token}",
        },
        "health": {"notes": f"Diabetic {token}"},
        "psychosocial": {"notes": f"Nightmares {token}"},
        "legal": {
            "status": f"Witness {token}",
            "proceedings": f"Case 12/2026 {token}",
            "lawyer": f"Adv. Petrenko {token}",
        },
        "immigration": {
            "residence_status": f"Reflection period {token}",
            "reflection_period_until": "2027-01-15",
        },
        "needs": {"assessment": f"Shelter {token}", "plan": f"Weekly sessions {token}"},
    }


def consent_body(to_org_id: Any, categories: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "grantor": "person",
        "collection_method": "interpreter_assisted",
        "language": "uk",
        "notice_version": "2026-01",
        "jurisdiction": "UA",
        "legal_basis": {"article6": "a", "article9": "a"},
        "provisions": [
            {
                "purpose": "legal_assistance",
                "recipient_org_id": str(to_org_id),
                "categories": categories,
            }
        ],
        **extra,
    }


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()


def strings_of(value: Any) -> Iterator[str]:
    """Every key and string value at any depth of a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from strings_of(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from strings_of(inner)


def assert_absent(document: Any, *tokens: str) -> None:
    """Neither the serialised document nor any string inside it holds any of `tokens`."""
    raw = json.dumps(document, ensure_ascii=False)
    for token in tokens:
        assert token not in raw, token
        assert not any(token in s for s in strings_of(document)), token


class World:
    """The owning NGO (caseworker, two supervisors, DPO, org admin), a receiving legal-aid
    organisation, an outsider NGO (supervisor, DPO), and a platform DPO."""

    def __init__(self, app: Any, factory: Any, client: Any) -> None:
        self.app = app
        self.client = client
        self.org = factory.org(OrgType.NGO)
        self.receiver_org = factory.org(OrgType.LEGAL_AID)
        self.outsider_org = factory.org(OrgType.NGO)
        self.platform_org = factory.org(OrgType.PLATFORM)
        self.ids: dict[str, uuid.UUID] = {}
        self.h: dict[str, dict[str, str]] = {}
        self.principals: dict[str, Any] = {}
        for name, role, org in (
            ("worker", Role.CASEWORKER, self.org),
            ("sup", Role.SUPERVISOR, self.org),
            ("sup2", Role.SUPERVISOR, self.org),
            ("dpo", Role.DPO, self.org),
            ("admin", Role.ORG_ADMIN, self.org),
            ("receiver", Role.CASEWORKER, self.receiver_org),
            ("outsider", Role.CASEWORKER, self.outsider_org),
            ("outsider_sup", Role.SUPERVISOR, self.outsider_org),
            ("outsider_dpo", Role.DPO, self.outsider_org),
            ("platform_dpo", Role.DPO, self.platform_org),
        ):
            principal = factory.user(role, org)
            self.principals[name] = principal
            self.ids[name] = principal.id
            self.h[name] = factory.headers(principal)

    # ---- arranging over HTTP ------------------------------------------------------------

    def case(self, token: str, *, by: str = "worker", case_type: str = "thb") -> str:
        response = self.client.post(
            f"{API}/cases", json=canary_case(token, case_type), headers=self.h[by]
        )
        return ok(response, 201)["id"]  # type: ignore[no-any-return]

    def note(self, case_id: str, category: str, body: str, by: str = "worker") -> str:
        response = self.client.post(
            f"{API}/cases/{case_id}/notes",
            json={"category": category, "text": body},
            headers=self.h[by],
        )
        return ok(response, 201)["id"]  # type: ignore[no-any-return]

    def consent(self, case_id: str, to_org: Any, categories: list[str], **extra: Any) -> Any:
        response = self.client.post(
            f"{API}/cases/{case_id}/consents",
            json=consent_body(to_org, categories, **extra),
            headers=self.h["worker"],
        )
        return ok(response, 201)

    def refer(
        self, case_id: str, categories: list[str], *, send: bool, message: str, **headers: str
    ) -> Any:
        response = self.client.post(
            f"{API}/cases/{case_id}/referrals",
            json={
                "to_org_id": str(self.receiver_org),
                "purpose": "legal_assistance",
                "categories": categories,
                "message": message,
                "send": send,
            },
            headers={**self.h["worker"], **headers},
        )
        return ok(response, 201)

    def move(self, referral_id: str, to: str, by: str = "receiver", **fields: Any) -> Any:
        etag = self.client.get(f"{API}/referrals/{referral_id}", headers=self.h[by])
        assert etag.status_code == 200, etag.get_data(as_text=True)
        response = self.client.post(
            f"{API}/referrals/{referral_id}/transitions",
            json={"to": to, **fields},
            headers={**self.h[by], "If-Match": etag.headers["ETag"]},
        )
        return ok(response)

    def message(self, referral_id: str, body: str, by: str = "receiver") -> Any:
        response = self.client.post(
            f"{API}/referrals/{referral_id}/messages", json={"body": body}, headers=self.h[by]
        )
        return ok(response, 201)

    def case_etag(self, case_id: str, by: str = "worker") -> str:
        response = self.client.get(f"{API}/cases/{case_id}", headers=self.h[by])
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.headers["ETag"]  # type: ignore[no-any-return]

    def close(self, case_id: str) -> None:
        response = self.client.post(
            f"{API}/cases/{case_id}/status",
            json={"to": "closed", "reason": "services_completed"},
            headers={**self.h["sup"], "If-Match": self.case_etag(case_id, "sup")},
        )
        assert ok(response)["status"] == "closed"

    def request_erasure(self, case_id: str, basis: str = "consent_withdrawn") -> str:
        response = self.client.post(
            f"{API}/cases/{case_id}/erasure", json={"basis": basis}, headers=self.h["sup"]
        )
        body = ok(response, 201)
        assert body["status"] == "pending"
        return body["id"]  # type: ignore[no-any-return]

    def approve(self, request_id: str, by: str = "dpo") -> Any:
        return self.client.post(f"{API}/erasures/{request_id}/approve", headers=self.h[by])

    def hold(self, case_id: str, hold: bool, by: str = "sup", reason: str | None = None) -> Any:
        body: dict[str, Any] = {"hold": hold}
        if reason is not None:
            body["reason"] = reason
        return self.client.post(f"{API}/cases/{case_id}/legal-hold", json=body, headers=self.h[by])

    # ---- the database, read briefly -----------------------------------------------------

    def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        from referral_api.extensions import db

        with db.session_factory_for(self.app)() as session:
            found = [tuple(row) for row in session.execute(text(statement), params)]
            session.rollback()
        return found

    def scalars(self, statement: Any) -> list[Any]:
        from referral_api.extensions import db

        with db.session_factory_for(self.app)() as session:
            found = list(session.scalars(statement))
            session.expunge_all()
            session.rollback()
        return found


def uuid_param(app: Any, value: Any) -> Any:
    """A UUID as the dialect stores it in raw SQL (SQLite: 32 hex digits; PostgreSQL: uuid)."""
    from referral_api.extensions import db

    value = uuid.UUID(str(value))
    if db.engine_for(app).dialect.name == "sqlite":
        return value.hex
    return value


def as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, memoryview):
        return value.tobytes()
    return bytes(value)


def binary_columns(table: Any) -> list[str]:
    return [c.name for c in table.columns if isinstance(c.type, LargeBinary)]


def case_linked_rows(world: World, case_id: Any) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table in the schema that belongs to the case: `cases` by id, any
    table with a `case_id` column by it, notifications through the case's referrals."""
    cid = uuid_param(world.app, case_id)
    found: dict[str, list[dict[str, Any]]] = {}
    for table in Base.metadata.sorted_tables:
        names = [c.name for c in table.columns]
        if table.name == "cases":
            where = "id = :cid"
        elif "case_id" in names:
            where = "case_id = :cid"
        elif "referral_id" in names:
            where = "referral_id IN (SELECT id FROM referrals WHERE case_id = :cid)"
        else:
            continue
        rows = world.sql(f"SELECT {', '.join(names)} FROM {table.name} WHERE {where}", cid=cid)
        found[table.name] = [dict(zip(names, row, strict=True)) for row in rows]
    return found


def all_binary_values(world: World) -> list[bytes]:
    """Every non-null binary value anywhere in the database."""
    values: list[bytes] = []
    for table in Base.metadata.sorted_tables:
        for column in binary_columns(table):
            for (value,) in world.sql(
                f"SELECT {column} FROM {table.name} WHERE {column} IS NOT NULL"
            ):
                values.append(as_bytes(value) or b"")
    return values


def database_text(world: World) -> str:
    """Every value of every column of every table, as text (binary values decoded
    leniently), to look for plaintext anywhere at rest."""
    parts: list[str] = []
    for table in Base.metadata.sorted_tables:
        names = [c.name for c in table.columns]
        for row in world.sql(f"SELECT {', '.join(names)} FROM {table.name}"):
            for value in row:
                raw = as_bytes(value) if isinstance(value, bytes | memoryview) else None
                parts.append(raw.decode("latin-1") if raw is not None else str(value))
    return "\n".join(parts)
