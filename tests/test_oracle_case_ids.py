"""Every case-scoped route answers another organisation's case (in every state) and a
made-up id identically; consent, export and erasure-request ids likewise."""

from __future__ import annotations

from typing import Any

import pytest
from oracle_support import diff, fresh, indistinguishable, send
from rights_support import World, ok

from referral_api.access.roles import Role

API = "/api/v1"


@pytest.fixture
def world(app: Any, factory: Any, client: Any) -> World:
    w = World(app, factory, client)
    admin = factory.user(Role.ORG_ADMIN, w.outsider_org)
    w.h["outsider_admin"] = factory.headers(admin)
    police_org = factory.org(
        __import__("referral_api.access.roles", fromlist=["OrgType"]).OrgType.POLICE
    )
    w.h["police"] = factory.headers(factory.user(Role.POLICE_OFFICER, police_org))
    return w


def _case_requests(case_id: str) -> list[tuple[str, str, Any, dict[str, str]]]:
    return [
        ("GET", f"/cases/{case_id}", None, {}),
        ("PATCH", f"/cases/{case_id}", {"risk_level": "low"}, {}),
        ("PATCH", f"/cases/{case_id}", {"risk_level": "low"}, {"If-Match": '"x"'}),
        ("POST", f"/cases/{case_id}/status", {"to": "active"}, {}),
        (
            "POST",
            f"/cases/{case_id}/status",
            {"to": "closed", "reason": "services_completed"},
            {"If-Match": '"x"'},
        ),
        ("POST", f"/cases/{case_id}/assign", {"assignee_id": None}, {}),
        ("GET", f"/cases/{case_id}/notes", None, {}),
        ("GET", f"/cases/{case_id}/notes?limit=1", None, {}),
        ("POST", f"/cases/{case_id}/notes", {"category": "needs", "text": "x"}, {}),
        (
            "POST",
            f"/cases/{case_id}/notes",
            {"category": "needs", "text": "x"},
            {"Idempotency-Key": "probe-key-1"},
        ),
        ("GET", f"/cases/{case_id}/access-log", None, {}),
        ("GET", f"/cases/{case_id}/consents", None, {}),
        (
            "POST",
            f"/cases/{case_id}/consent-check",
            {
                "recipient_org_id": fresh(),
                "purpose": "legal_assistance",
                "categories": ["identity"],
            },
            {},
        ),
        (
            "POST",
            f"/cases/{case_id}/referrals",
            {
                "to_org_id": fresh(),
                "purpose": "legal_assistance",
                "categories": ["identity"],
                "send": False,
            },
            {},
        ),
        ("POST", f"/cases/{case_id}/export", {"reason": "subject access"}, {}),
        ("POST", f"/cases/{case_id}/erasure", {"basis": "consent_withdrawn"}, {}),
        ("POST", f"/cases/{case_id}/legal-hold", {"hold": True, "reason": "court"}, {}),
        ("POST", f"/cases/{case_id}/legal-hold", {"hold": False}, {}),
        ("POST", f"/cases/{case_id}/restriction", {"restricted": True}, {}),
        ("POST", f"/cases/{case_id}/restriction", {"restricted": False}, {}),
    ]


def _states(world: World) -> dict[str, str]:
    """The owning organisation's cases, one per state."""
    plain = world.case("PLAIN")
    world.note(plain, "needs", "n1")
    restricted = world.case("RESTR")
    ok(
        world.client.post(
            f"{API}/cases/{restricted}/restriction",
            json={"restricted": True},
            headers=world.h["sup"],
        )
    )
    held = world.case("HELD")
    ok(world.hold(held, True, reason="court order"))
    closed = world.case("CLOSED")
    world.close(closed)
    erased = world.case("ERASED")
    req = world.request_erasure(erased)
    ok(world.approve(req))
    pending = world.case("PENDING")
    world.request_erasure(pending)
    return {
        "plain": plain,
        "restricted": restricted,
        "held": held,
        "closed": closed,
        "erased": erased,
        "pending-erasure": pending,
    }


CALLERS = ["outsider", "outsider_sup", "outsider_dpo", "outsider_admin", "police"]


def test_every_case_route_answers_another_orgs_case_like_a_made_up_id(world: World) -> None:
    client = world.client
    states = _states(world)
    failures = []
    for caller in CALLERS:
        headers = world.h[caller]
        for state, case_id in states.items():
            made_up = fresh()
            for (method, path, body, extra), (_, fake_path, fake_body, fake_extra) in zip(
                _case_requests(case_id), _case_requests(made_up), strict=True
            ):
                real = send(client, method, path, body, {**headers, **extra})
                fake = send(client, method, fake_path, fake_body, {**headers, **fake_extra})
                if not indistinguishable(real, fake):
                    failures.append(f"{caller} {state} {method} {path}{diff(real, fake)}")
                # Never a 2xx for another organisation's case.
                assert real.status_code >= 400 or caller == "x", (
                    caller,
                    state,
                    method,
                    path,
                    real.status_code,
                )
    assert not failures, "\n".join(failures)


def test_consent_ids_answer_like_made_up_ids(world: World) -> None:
    client = world.client
    case_id = world.case("C1")
    consent = world.consent(case_id, world.receiver_org, ["identity"])
    withdrawn_case = world.case("C2")
    withdrawn = world.consent(withdrawn_case, world.receiver_org, ["identity"])
    ok(
        client.post(
            f"{API}/consents/{withdrawn['id']}/withdraw", json={}, headers=world.h["worker"]
        )
    )
    restricted_case = world.case("C3")
    restricted = world.consent(restricted_case, world.receiver_org, ["identity"])
    ok(
        client.post(
            f"{API}/cases/{restricted_case}/restriction",
            json={"restricted": True},
            headers=world.h["sup"],
        )
    )
    erased_case = world.case("C4")
    erased = world.consent(erased_case, world.receiver_org, ["identity"])
    ok(world.approve(world.request_erasure(erased_case)))

    def requests(cid: str) -> list[tuple[str, str, Any]]:
        return [
            ("GET", f"/consents/{cid}", None),
            ("GET", f"/consents/{cid}/receipt", None),
            ("POST", f"/consents/{cid}/withdraw", {}),
            ("POST", f"/consents/{cid}/renew", {"valid_until": None}),
            ("POST", f"/consents/{cid}/renew", {"valid_until": "2000-01-01T00:00:00+00:00"}),
            ("POST", f"/consents/{cid}/revoke", {"reason": "pressure"}),
            ("POST", f"/consents/{cid}/entered-in-error", {"reason": "typo"}),
        ]

    failures = []
    for caller in CALLERS:
        for label, cid in (
            ("active", consent["id"]),
            ("withdrawn", withdrawn["id"]),
            ("restricted", restricted["id"]),
            ("erased", erased["id"]),
        ):
            for (method, path, body), (_, fpath, fbody) in zip(
                requests(cid), requests(fresh()), strict=True
            ):
                real = send(client, method, path, body, world.h[caller])
                fake = send(client, method, fpath, fbody, world.h[caller])
                if not indistinguishable(real, fake):
                    failures.append(f"{caller} {label} {method} {path}{diff(real, fake)}")
    assert not failures, "\n".join(failures)


def test_export_and_erasure_request_ids_answer_like_made_up_ids(world: World) -> None:
    client = world.client
    case_id = world.case("E1")
    export = ok(
        client.post(
            f"{API}/cases/{case_id}/export",
            json={"reason": "subject access"},
            headers=world.h["sup"],
        ),
        201,
    )
    used_case = world.case("E2")
    used = ok(
        client.post(
            f"{API}/cases/{used_case}/export",
            json={"reason": "subject access"},
            headers=world.h["sup"],
        ),
        201,
    )
    ok(client.get(f"{API}/exports/{used['id']}/download", headers=world.h["sup"]))
    erased_case = world.case("E3")
    erased_export = ok(
        client.post(
            f"{API}/cases/{erased_case}/export",
            json={"reason": "subject access"},
            headers=world.h["sup"],
        ),
        201,
    )
    ok(world.approve(world.request_erasure(erased_case)))
    pending_case = world.case("E4")
    pending = world.request_erasure(pending_case)
    done_case = world.case("E5")
    done = world.request_erasure(done_case)
    ok(world.approve(done))
    held_case = world.case("E6")
    held_req = world.request_erasure(held_case)
    ok(world.hold(held_case, True, reason="court"))

    failures = []
    for caller in [*CALLERS, "platform_dpo"]:
        for label, path in (
            ("export", f"/exports/{export['id']}/download"),
            ("export-used", f"/exports/{used['id']}/download"),
            ("export-erased", f"/exports/{erased_export['id']}/download"),
        ):
            real = client.get(f"{API}{path}", headers=world.h[caller])
            fake = client.get(f"{API}/exports/{fresh()}/download", headers=world.h[caller])
            if not indistinguishable(real, fake):
                failures.append(f"{caller} {label}{diff(real, fake)}")
        if caller == "platform_dpo":
            continue
        for label, rid in (("pending", pending), ("executed", done), ("held", held_req)):
            real = client.post(f"{API}/erasures/{rid}/approve", headers=world.h[caller])
            fake = client.post(f"{API}/erasures/{fresh()}/approve", headers=world.h[caller])
            if not indistinguishable(real, fake):
                failures.append(f"{caller} erasure {label}{diff(real, fake)}")
    assert not failures, "\n".join(failures)
