"""Audit rows of routes a review found off the record (docs/audit.md): the notification list
(each referral an event is shown of), a refused mark-read of another organisation's
notification, refused directory changes aimed at another organisation, and the categories an
export's download hands out."""

from __future__ import annotations

import json
from typing import Any

from rights_support import API, World, ok
from sqlalchemy import select

from referral_api.access.categories import ALL_CATEGORIES
from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.extensions import db
from referral_api.referrals.models import Referral


def rows_of(app: Any, response: Any) -> list[AuditEvent]:
    with db.session_factory_for(app)() as s:
        found = list(
            s.scalars(
                select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-ID"])
            )
        )
        s.expunge_all()
        return found


def _sent_referral(world: World, token: str) -> tuple[str, str]:
    case_id = world.case(token)
    world.consent(case_id, world.receiver_org, ["identity", "legal"])
    referral = world.refer(case_id, ["identity", "legal"], send=True, message=f"m {token}")
    return case_id, referral["id"]


def test_notification_list_is_on_the_record(app: Any, client: Any, factory: Any) -> None:
    """GET /notifications shows referral ids and events of the caller's organisation: docs
    (audit.md) list no exemption for it; 'each referral shown in a list' writes a row."""
    world = World(app, factory, client)
    _, referral_id = _sent_referral(world, "NOTIF")
    response = client.get(f"{API}/notifications", headers=world.h["receiver"])
    items = ok(response)
    assert any(item["referral_id"] == referral_id for item in items)
    rows = rows_of(app, response)
    assert len(rows) == len(items)
    with db.session_factory_for(app)() as s:
        case_of = {str(r.id): r.case_id for r in s.scalars(select(Referral))}
    assert sorted(
        (r.action, r.decision, r.resource_type, r.resource_id, r.case_id) for r in rows
    ) == sorted(
        ("referral:read", "allow", "referral", i["referral_id"], case_of[i["referral_id"]])
        for i in items
    )
    assert all(json.loads(r.details or "{}")["via"] == "notifications" for r in rows)
    # Nothing unread left to show: the list is still on the record, as every list is.
    for item in items:
        ok(client.post(f"{API}/notifications/{item['id']}/read", headers=world.h["receiver"]))
    empty = client.get(f"{API}/notifications", headers=world.h["receiver"])
    assert ok(empty) == []
    [none] = rows_of(app, empty)
    assert json.loads(none.details or "{}") == {"via": "notifications", "results": 0}


def test_marking_another_orgs_notification_read_leaves_a_deny_row(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(app, factory, client)
    _sent_referral(world, "NOTIF2")
    theirs = ok(client.get(f"{API}/notifications", headers=world.h["receiver"]))[0]["id"]
    response = client.post(f"{API}/notifications/{theirs}/read", headers=world.h["outsider"])
    assert response.status_code == 404
    rows = rows_of(app, response)
    assert [(r.decision, r.resource_type, r.resource_id) for r in rows] == [
        ("deny", "notification", theirs)
    ], "another organisation's notification refused (404) without a trace"


def test_directory_change_of_another_orgs_service_leaves_a_deny_row(
    app: Any, client: Any, factory: Any
) -> None:
    other_org = factory.org(OrgType.LEGAL_AID)
    other_admin = factory.headers(factory.user(Role.ORG_ADMIN, other_org))
    body = {
        "name": "Free legal advice",
        "description": "Residence status.",
        "service_type": "legal_assistance",
        "languages": ["uk"],
        "area_served": "Kyiv",
        "professional_contact": "intake@legal-aid.example",
    }
    created = client.post(f"{API}/orgs/{other_org}/services", json=body, headers=other_admin)
    service = ok(created, 201)
    admin = factory.headers(factory.user(Role.ORG_ADMIN, factory.org(OrgType.NGO)))
    patch = client.patch(
        f"{API}/services/{service['id']}",
        json={"accepting_referrals": False},
        headers={**admin, "If-Match": created.headers["ETag"]},
    )
    post = client.post(f"{API}/orgs/{other_org}/services", json=body, headers=admin)
    assert (patch.status_code, post.status_code) == (404, 404)
    missing = [
        name
        for name, response in (("PATCH /services/{id}", patch), ("POST /orgs/{id}/services", post))
        if not any(r.decision == "deny" for r in rows_of(app, response))
    ]
    assert not missing, f"refused (404) without a deny row: {missing}"


def test_export_download_row_names_the_categories_it_disclosed(
    app: Any, client: Any, factory: Any
) -> None:
    """The download hands out the person's whole record (every category, notes, consents):
    audit.md 'the categories are those the request disclosed'."""
    world = World(app, factory, client)
    case_id = world.case("EXPORT")
    export = ok(
        client.post(
            f"{API}/cases/{case_id}/export",
            json={"reason": "subject asked"},
            headers=world.h["sup"],
        ),
        201,
    )
    download = client.get(f"{API}/exports/{export['id']}/download", headers=world.h["sup"])
    assert download.status_code == 200
    assert "Diabetic" in download.get_data(as_text=True)
    rows = [r for r in rows_of(app, download) if r.action == "case:export-download"]
    assert len(rows) == 1
    assert sorted(rows[0].categories.split(",")) == sorted(c.value for c in ALL_CATEGORIES)
