"""A seeded world for the DPO report tests (issue 6), built through the HTTP API.

Organisation A (an NGO) controls nine canary-filled cases covering every consent state, a
renewal, an override, a withdrawal that cancelled a referral, a consent covered only by two
provisions together, and record-keeping faults; organisation B controls one more. Legal
aid (L), police (P) and a shelter (S) receive referrals; the platform has its own DPO.
The expected report answers are spelled out next to the arrangement that causes them.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import consent_if_match
from referral_support import (
    API,
    CANARY,
    MESSAGE_CANARY,
    canary_case,
    consent_body,
    create_case,
    move,
    ok,
    provision,
    refer,
)
from sqlalchemy import text

from referral_api.access.roles import OrgType, Role

NOTICE = "2026-01"
WITHDRAWAL_CANARY = "CANARY-WITHDRAWAL-7Q3X"
OVERRIDE_CANARY = "CANARY-OVERRIDE-7Q3X"
SIGN_IN_CANARY = "canary-sign-in-7q3x@example.org"
# Personal values of canary_case() that carry no category canary.
PERSONAL_VALUES = (
    "Olena",
    "Kovalenko",
    "+380501234567",
    "olena.k@example.net",
    "FA123456",
    "1999-04-02",
    MESSAGE_CANARY,
    WITHDRAWAL_CANARY,
    OVERRIDE_CANARY,
    SIGN_IN_CANARY,
    *CANARY.values(),
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class DpoWorld:
    def __init__(self, app: Any, client: Any, factory: Any) -> None:
        self.app = app
        self.client = client
        self.now = datetime.now(UTC)
        self.org = {
            "A": factory.org(OrgType.NGO),
            "B": factory.org(OrgType.NGO),
            "L": factory.org(OrgType.LEGAL_AID),
            "P": factory.org(OrgType.POLICE),
            "S": factory.org(OrgType.SHELTER),
            "PLAT": factory.org(OrgType.PLATFORM),
        }
        self.user: dict[str, uuid.UUID] = {}
        self.email: dict[str, str] = {}
        self.h: dict[str, dict[str, str]] = {}
        for name, role, org in (
            ("a", Role.CASEWORKER, "A"),
            ("a_sup", Role.SUPERVISOR, "A"),
            ("a_dpo", Role.DPO, "A"),
            ("b", Role.CASEWORKER, "B"),
            ("b_dpo", Role.DPO, "B"),
            ("l_dpo", Role.DPO, "L"),
            ("p", Role.POLICE_OFFICER, "P"),
            ("s_dpo", Role.DPO, "S"),
            ("plat_dpo", Role.DPO, "PLAT"),
        ):
            principal = factory.user(role, self.org[org])
            self.user[name] = principal.id
            self.email[name] = principal.email
            self.h[name] = factory.headers(principal)
        self.case: dict[str, str] = {}
        self.consent: dict[str, str] = {}
        self.referral: dict[str, str] = {}
        self._build()

    # ---- arrangement ----------------------------------------------------------------------

    def _case(self, name: str, by: str = "a") -> str:
        self.case[name] = create_case(self.client, self.h[by], canary_case())
        return self.case[name]

    def _consent(self, name: str, case: str, *provisions: Any, by: str = "a", **extra: Any) -> str:
        body = {**consent_body(*provisions), **extra}
        response = self.client.post(
            f"{API}/cases/{self.case[case]}/consents", json=body, headers=self.h[by]
        )
        self.consent[name] = ok(response, 201)["id"]
        return self.consent[name]

    def _refer(self, name: str, case: str, to: str, categories: list[str], purpose: str) -> str:
        response = refer(
            self.client,
            self.h["b" if case == "caseB" else "a"],
            self.case[case],
            self.org[to],
            categories,
            purpose=purpose,
            message=f"Please help {MESSAGE_CANARY}",
        )
        self.referral[name] = ok(response, 201)["id"]
        return self.referral[name]

    def _post(self, path: str, by: str, body: dict[str, Any], status: int = 200) -> Any:
        headers = self.h[by]
        if path.endswith(("/renew", "/revoke", "/entered-in-error")):
            headers = consent_if_match(self.client, path.split("/")[2], headers)
        return ok(self.client.post(f"{API}{path}", json=body, headers=headers), status)

    def _build(self) -> None:
        n, org = self.now, self.org
        # case1: consent with evidence; legal aid by id (open-ended) and police by type
        # (ends in 10 days). R1 to legal aid stays requested; R2 is accepted by the police.
        self._case("case1")
        self._consent(
            "C1",
            "case1",
            provision("legal_assistance", ["identity", "legal"], org_id=org["L"]),
            provision(
                "law_enforcement_report",
                ["identity", "contact"],
                org_type="police",
                valid_until=iso(n + timedelta(days=10)),
            ),
            evidence={"media_type": "application/pdf", "content_base64": "JVBERi0xLjQK"},
        )
        self._refer("R1", "case1", "L", ["identity", "legal"], "legal_assistance")
        self._refer("R2", "case1", "P", ["contact", "identity"], "law_enforcement_report")
        ok(move(self.client, self.h["p"], self.referral["R2"], "accepted"))
        # case2: shelter consent ending in 40 days, renewed to end in 5; R3 to the shelter.
        self._case("case2")
        self._consent(
            "C2",
            "case2",
            provision(
                "shelter",
                ["identity", "location", "needs"],
                org_id=org["S"],
                valid_until=iso(n + timedelta(days=40)),
            ),
        )
        self._post(
            f"/consents/{self.consent['C2']}/renew",
            "a",
            {"valid_until": iso(n + timedelta(days=5))},
        )
        self._refer("R3", "case2", "S", ["identity", "location"], "shelter")
        # case3: psychosocial support by legal aid; R4 sent, then the consent is withdrawn
        # (R4 cancelled by the system).
        self._case("case3")
        self._consent(
            "C3",
            "case3",
            provision("psychosocial_support", ["identity", "psychosocial"], org_id=org["L"]),
        )
        self._refer("R4", "case3", "L", ["identity", "psychosocial"], "psychosocial_support")
        self._post(f"/consents/{self.consent['C3']}/withdraw", "a", {"reason": WITHDRAWAL_CANARY})
        # case4: revoked by a supervisor.
        self._case("case4")
        self._consent(
            "C4", "case4", provision("legal_assistance", ["identity"], org_type="legal_aid")
        )
        self._post(f"/consents/{self.consent['C4']}/revoke", "a_sup", {"reason": "pressure"})
        # case5: a minor's consent given by a guardian, under an unknown notice version; the
        # grantor is later rewritten to `person` in the database (a record-keeping fault).
        self._case("case5")
        self._consent(
            "C5",
            "case5",
            provision("case_management", ["needs"], org_type="social_services"),
            grantor="guardian",
            guardian_relation="parent",
            is_minor=True,
            notice_version="2019-01",
        )
        self.sql(
            "UPDATE consent_records SET grantor = 'person' WHERE id = :id",
            id=self.uuid(self.consent["C5"]),
        )
        # case6: a health provision that ended yesterday (expired by time, no event).
        self._case("case6")
        self._consent(
            "C6",
            "case6",
            provision(
                "health",
                ["health"],
                org_type="health",
                valid_from=iso(n - timedelta(days=10)),
                valid_until=iso(n - timedelta(days=1)),
            ),
        )
        # case7: entered in error.
        self._case("case7")
        self._consent("C7", "case7", provision("statistics", ["needs"], org_type="ngo"))
        self._post(
            f"/consents/{self.consent['C7']}/entered-in-error", "a_sup", {"reason": "wrong case"}
        )
        # case8: no consent; R5 to the shelter on an approved vital-interests override.
        self._case("case8")
        response = refer(
            self.client,
            self.h["a"],
            self.case["case8"],
            org["S"],
            ["identity", "location"],
            purpose="shelter",
            send=False,
            override_reason="vital_interests",
            override_note=f"Imminent danger {OVERRIDE_CANARY}",
        )
        draft = ok(response, 201)
        self.referral["R5"] = draft["id"]
        ok(
            self.client.post(
                f"{API}/referrals/{draft['id']}/override-approval",
                headers={**self.h["a_sup"], "If-Match": response.headers["ETag"]},
            )
        )
        ok(move(self.client, self.h["a"], draft["id"], "requested"))
        # case9: identity and legal covered by two provisions together; R6 to legal aid.
        self._case("case9")
        self._consent(
            "C9",
            "case9",
            provision("legal_assistance", ["identity"], org_id=org["L"]),
            provision("legal_assistance", ["legal"], org_id=org["L"]),
        )
        self._refer("R6", "case9", "L", ["identity", "legal"], "legal_assistance")
        # Organisation B: one case, consent and live referral to legal aid.
        self._case("caseB", by="b")
        self._consent(
            "CB",
            "caseB",
            provision("legal_assistance", ["identity", "legal"], org_id=org["L"]),
            by="b",
        )
        self._refer("RB", "caseB", "L", ["identity", "legal"], "legal_assistance")
        # Refused sign-ins: two on A's caseworker, one on B's, one on no account at all
        # (sign-in-failures: A's DPO sees two, B's one, the platform's four).
        for who in ("a", "a", "b"):
            self._sign_in(self.email[who], "not the password")
        self._sign_in(SIGN_IN_CANARY, "not the password")

    def erase(self, case: str) -> None:
        """A's supervisor asks for the case's erasure and A's DPO approves it."""
        request = self._post(
            f"/cases/{self.case[case]}/erasure", "a_sup", {"basis": "consent_withdrawn"}, 201
        )
        self._post(f"/erasures/{request['id']}/approve", "a_dpo", {})

    def _sign_in(self, email: str, password: str) -> None:
        response = self.client.post(
            f"{API}/auth/login", json={"email": email, "password": password}
        )
        assert response.status_code == 401, response.get_data(as_text=True)

    # ---- the database, briefly ------------------------------------------------------------

    @staticmethod
    def uuid(value: str) -> Any:
        return uuid.UUID(value)

    def sql(self, statement: str, **params: Any) -> None:
        """Tamper with the database directly (no service, no audit, no side effects)."""
        from referral_api.extensions import db

        with db.engine_for(self.app).begin() as connection:
            if connection.dialect.name == "sqlite":
                params = {k: _sqlite_value(v) for k, v in params.items()}
            connection.execute(text(statement), params)

    # ---- asking ---------------------------------------------------------------------------

    def report(self, name: str, who: str, status: int = 200, **params: Any) -> Any:
        response = self.client.get(
            f"{API}/dpo/reports/{name}", query_string=params, headers=self.h[who]
        )
        assert response.status_code == status, (response.status_code, response.get_data(True))
        return response

    def rows(self, name: str, who: str, **params: Any) -> list[dict[str, Any]]:
        """Every row, following `Link: rel=next` pages."""
        rows: list[dict[str, Any]] = []
        response = self.report(name, who, **params)
        rows += response.get_json()
        while "Link" in response.headers:
            link = response.headers["Link"]
            url = link[link.index("<") + 1 : link.index(">")]
            response = self.client.get(url, headers=self.h[who])
            assert response.status_code == 200, response.get_data(True)
            rows += response.get_json()
        return rows

    def csv_rows(self, name: str, who: str, **params: Any) -> tuple[list[str], list[dict]]:
        response = self.client.get(
            f"{API}/dpo/reports/{name}",
            query_string=params,
            headers={**self.h[who], "Accept": "text/csv"},
        )
        assert response.status_code == 200, response.get_data(True)
        assert response.mimetype == "text/csv"
        reader = csv.DictReader(io.StringIO(response.get_data(as_text=True)))
        return list(reader.fieldnames or []), list(reader)


def next_cursor(response: Any) -> str:
    """The cursor in a page's `Link: rel=next`."""
    link = response.headers["Link"]
    return str(link[link.index("cursor=") + 7 :].split("&")[0].split(">")[0])


def _sqlite_value(value: Any) -> Any:
    """As the models store it on SQLite: UUIDs as 32 hex digits, times as naive UTC text."""
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def as_csv_cells(row: dict[str, Any]) -> dict[str, str]:
    """A JSON row as its CSV cells (lists comma-joined, booleans lower-case, null empty)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(value)
        return str(value)

    return {key: cell(value) for key, value in row.items()}


def assert_no_personal_data(raw: str) -> None:
    """Neither the raw text nor any string inside parsed JSON holds a personal value."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    texts = list(_strings(parsed))
    for token in PERSONAL_VALUES:
        assert token not in raw, token
        assert not any(token in value for value in texts), token


def _strings(value: Any) -> Any:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)
