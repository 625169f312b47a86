"""Shared arrangement for test_refused_inputs_change_nothing: a world with every
role, a case, consent, referrals, a pending erasure, a service and an API client; and a
database snapshot (row count + digest of every row of every table).

Excluded from the snapshot: audit_events and audit_chain_head. The audit trail records
refused attempts by design (audit/hooks.record_denial commits a deny row in its own
transaction) and the chain head moves with every audit row. login_throttle, auth_sessions and
refresh_tokens are NOT excluded: no probe here submits well-formed wrong credentials, so a
refused probe must not touch them either (and none did).
"""

from __future__ import annotations

import hashlib
from typing import Any

from referral_support import canary_case, consent_body, provision

from referral_api.access.roles import OrgType, Role

API = "/api/v1"
EXCLUDED = {"audit_events", "audit_chain_head"}


# ---- database snapshot ---------------------------------------------------------------------


def snapshot(app: Any) -> dict[str, tuple[int, str]]:
    from sqlalchemy import select

    from referral_api.db import Base
    from referral_api.extensions import db

    found: dict[str, tuple[int, str]] = {}
    with db.session_factory_for(app)() as s:
        for table in Base.metadata.sorted_tables:
            if table.name in EXCLUDED:
                continue
            rows = s.execute(select(table)).all()
            reprs = sorted(
                repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
                for row in rows
            )
            found[table.name] = (len(rows), hashlib.sha256("\n".join(reprs).encode()).hexdigest())
        s.rollback()
    return found


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"{t}: {before[t][0]}->{after[t][0]} rows" for t in before if before[t] != after[t]]


# ---- the world -----------------------------------------------------------------------------


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()


class World:
    def __init__(self, app: Any, client: Any, factory: Any) -> None:
        from referral_api.extensions import db

        self.app, self.client = app, client
        self.ngo = factory.org(OrgType.NGO)
        self.recv = factory.org(OrgType.LEGAL_AID)
        self.police = factory.org(OrgType.POLICE)
        self.platform = factory.org(OrgType.PLATFORM)
        self.p: dict[str, Any] = {}
        self.h: dict[str, dict[str, str]] = {}
        for name, role, org in (
            ("worker", Role.CASEWORKER, self.ngo),
            ("worker2", Role.CASEWORKER, self.ngo),
            ("sup", Role.SUPERVISOR, self.ngo),
            ("sup2", Role.SUPERVISOR, self.ngo),
            ("dpo", Role.DPO, self.ngo),
            ("admin", Role.ORG_ADMIN, self.ngo),
            ("rworker", Role.CASEWORKER, self.recv),
            ("officer", Role.POLICE_OFFICER, self.police),
            ("padmin", Role.PLATFORM_ADMIN, self.platform),
        ):
            self.p[name] = factory.user(role, org)
            self.h[name] = factory.headers(self.p[name])
        self.canary_case, self.consent_body, self.provision = canary_case, consent_body, provision
        c = client
        self.case = ok(c.post(f"{API}/cases", json=canary_case(), headers=self.h["worker"]), 201)[
            "id"
        ]
        self.consent = ok(
            c.post(
                f"{API}/cases/{self.case}/consents",
                json=consent_body(
                    provision("legal_assistance", ["identity", "legal"], org_id=self.recv)
                ),
                headers=self.h["worker"],
            ),
            201,
        )["id"]
        self.referral = ok(
            c.post(
                f"{API}/cases/{self.case}/referrals",
                json={
                    "to_org_id": str(self.recv),
                    "purpose": "legal_assistance",
                    "categories": ["identity"],
                    "send": True,
                },
                headers=self.h["worker"],
            ),
            201,
        )["id"]
        self.override = ok(
            c.post(
                f"{API}/cases/{self.case}/referrals",
                json={
                    "to_org_id": str(self.recv),
                    "purpose": "shelter",
                    "categories": ["identity"],
                    "send": False,
                    "override_reason": "vital_interests",
                },
                headers=self.h["worker"],
            ),
            201,
        )["id"]
        notes = ok(c.get(f"{API}/notifications", headers=self.h["rworker"]))
        self.notification = notes[0]["id"]
        # a second case, closed, with a pending erasure request
        self.case2 = ok(c.post(f"{API}/cases", json=canary_case(), headers=self.h["worker"]), 201)[
            "id"
        ]
        ok(
            c.post(
                f"{API}/cases/{self.case2}/status",
                json={"to": "closed", "reason": "services_completed"},
                headers={**self.h["sup"], "If-Match": self.etag(f"/cases/{self.case2}", "sup")},
            )
        )
        self.erasure = ok(
            c.post(
                f"{API}/cases/{self.case2}/erasure",
                json={"basis": "consent_withdrawn"},
                headers=self.h["sup"],
            ),
            201,
        )["id"]
        self.service = ok(
            c.post(
                f"{API}/orgs/{self.ngo}/services",
                json=self.service_body(),
                headers=self.h["admin"],
            ),
            201,
        )["id"]
        client_id, _ = factory.client_credentials(Role.CASEWORKER, self.ngo)
        self.client_id = client_id
        from sqlalchemy import select

        from referral_api.auth.models import ApiClient

        with db.session_factory_for(app)() as s:
            self.client_pk = str(
                s.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id))
            )
            s.rollback()
        _, self.client_secret = None, None

    def fill(self, template: str) -> str:
        ids = {
            "case": self.case,
            "consent": self.consent,
            "referral": self.referral,
            "override": self.override,
            "notification": self.notification,
            "erasure": self.erasure,
            "service": self.service,
            "client_pk": self.client_pk,
            "ngo": str(self.ngo),
            "recv": str(self.recv),
            "worker2": str(self.p["worker2"].id),
        }
        for key, value in ids.items():
            template = template.replace("{" + key + "}", value)
        return template

    def move(self, referral: str, to: str, who: str) -> None:
        ok(
            self.client.post(
                f"{API}/referrals/{referral}/transitions",
                json={"to": to},
                headers={**self.h[who], "If-Match": self.etag(f"/referrals/{referral}", who)},
            )
        )

    def accept_referral(self) -> None:
        for step in ("received", "accepted"):
            self.move(self.referral, step, "rworker")

    def approve_and_send_override(self) -> None:
        ok(
            self.client.post(
                f"{API}/referrals/{self.override}/override-approval",
                headers={
                    **self.h["sup"],
                    "If-Match": self.etag(f"/referrals/{self.override}", "sup"),
                },
            )
        )
        self.move(self.override, "requested", "worker")

    def etag(self, path: str, who: str) -> str:
        r = self.client.get(f"{API}{path}", headers=self.h[who])
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.headers["ETag"]  # type: ignore[no-any-return]

    def json_headers(self, who: str, etag_of: tuple[str, str] | None) -> dict[str, str]:
        """`who`'s headers for a JSON request, with the If-Match of `etag_of` (path
        template, reader) when the endpoint takes one."""
        headers = {**self.h[who], "Content-Type": "application/json"}
        if etag_of:
            headers["If-Match"] = self.etag(self.fill(etag_of[0]), etag_of[1])
        return headers

    @staticmethod
    def service_body() -> dict[str, Any]:
        return {
            "name": "Legal clinic",
            "description": "Free legal advice",
            "service_type": "legal_assistance",
            "languages": ["uk", "en"],
            "area_served": "Kyiv",
            "professional_contact": "intake@example.org",
            "accepting_referrals": True,
            "status": "active",
            "eligibility_notes": "Adults",
        }
