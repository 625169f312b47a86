"""Idempotency-Key on every POST: honoured where a repeat would make something twice,
declared harmless (accepted and ignored, the reason documented) where it cannot, and refused
(422, nothing done) on any POST that decided neither — so a retried POST is never silently
done twice.

The administration, directory and subject-rights POSTs keep no response: the record holds
the id of what the first request made, and a replay answers it as it is now (an API
client's never with its secret).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import assert_problem
from idempotency_support import as_written_before
from referral_support import API, canary_case, count, keyed_post, raw_bytes, rows
from rights_support import World, new_token, ok
from sqlalchemy import inspect, select
from test_directory import service_body

from referral_api.access.roles import OrgType, Role, permissions_for
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.db import Base
from referral_api.directory.models import Service
from referral_api.extensions import db
from referral_api.idempotency import ERASED, IdempotencyRecord, IdempotentResponse
from referral_api.rights.models import ErasureRequest, LegalHold, SubjectExport

KEY = "retry-after-timeout-0001"


def _headers_problem(response: Any) -> str:
    """The 422's message about the Idempotency-Key header (errors under `headers`)."""
    errors = assert_problem(response, 422)["errors"]
    assert list(errors) == ["headers"], errors
    return " ".join(errors["headers"]["Idempotency-Key"])


# ---- the POSTs that now honour the key ----------------------------------------------------


@dataclass
class Arranged:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    other: dict[str, Any]  # another body: the same key with it is refused
    made: tuple[Any, ...]  # what one request adds: a model (and conditions) to count
    status: int = 201
    case_id: str | None = None  # the case the URL names (its id is what was made)


def _admin(factory: Any, role: Role = Role.ORG_ADMIN) -> tuple[uuid.UUID, dict[str, str]]:
    principal = factory.user(role)
    return principal.org_id, factory.headers(principal)


def _orgs(app: Any, client: Any, factory: Any) -> Arranged:
    _, headers = _admin(factory, Role.PLATFORM_ADMIN)
    name = f"Shelter {uuid.uuid4().hex[:8]}"
    return Arranged(
        f"{API}/orgs",
        headers,
        {"name": name, "org_type": "shelter"},
        {"name": name, "org_type": "ngo"},
        (Organisation, Organisation.name == name),
    )


def _clients(app: Any, client: Any, factory: Any) -> Arranged:
    org_id, headers = _admin(factory)
    return Arranged(
        f"{API}/orgs/{org_id}/clients",
        headers,
        {"name": "case-system", "role": "caseworker"},
        {"name": "case-system", "role": "supervisor"},
        (ApiClient, ApiClient.org_id == org_id),
    )


def _services(app: Any, client: Any, factory: Any) -> Arranged:
    org_id, headers = _admin(factory)
    return Arranged(
        f"{API}/orgs/{org_id}/services",
        headers,
        service_body(),
        service_body(name="Another service"),
        (Service, Service.org_id == org_id),
    )


def _case_world(app: Any, client: Any, factory: Any) -> tuple[World, str]:
    world = World(app, factory, client)
    return world, world.case(new_token("retried"))


def _export(app: Any, client: Any, factory: Any) -> Arranged:
    world, case_id = _case_world(app, client, factory)
    return Arranged(
        f"{API}/cases/{case_id}/export",
        world.h["sup"],
        {"reason": "Subject access request of 1 December"},
        {"reason": "Another request"},
        (SubjectExport, SubjectExport.case_id == uuid.UUID(case_id)),
    )


def _erasure(app: Any, client: Any, factory: Any) -> Arranged:
    world, case_id = _case_world(app, client, factory)
    return Arranged(
        f"{API}/cases/{case_id}/erasure",
        world.h["sup"],
        {"basis": "consent_withdrawn"},
        {"basis": "objection"},
        (ErasureRequest, ErasureRequest.case_id == uuid.UUID(case_id)),
    )


def _legal_hold(app: Any, client: Any, factory: Any) -> Arranged:
    world, case_id = _case_world(app, client, factory)
    return Arranged(
        f"{API}/cases/{case_id}/legal-hold",
        world.h["sup"],
        {"hold": True, "reason": "Criminal proceedings 12/2026"},
        {"hold": True, "reason": "Another reason"},
        (LegalHold, LegalHold.case_id == uuid.UUID(case_id)),
        status=200,
        case_id=case_id,
    )


def _restriction(app: Any, client: Any, factory: Any) -> Arranged:
    world, case_id = _case_world(app, client, factory)
    return Arranged(
        f"{API}/cases/{case_id}/restriction",
        world.h["sup"],
        {"restricted": True},
        {"restricted": False},
        (AuditEvent, AuditEvent.action == "case:restrict"),
        status=200,
        case_id=case_id,
    )


HONOURED: dict[str, Callable[[Any, Any, Any], Arranged]] = {
    "admin.create_org": _orgs,
    "admin.create_client": _clients,
    "directory.create_service": _services,
    "rights.create_export": _export,
    "rights.request_erasure": _erasure,
    "rights.legal_hold": _legal_hold,
    "rights.restriction": _restriction,
}


@pytest.mark.parametrize("endpoint", HONOURED)
def test_a_retry_makes_nothing_new_and_another_body_is_422(
    app: Any, client: Any, factory: Any, endpoint: str
) -> None:
    """Same key and body: the first status, `Idempotent-Replayed: true`, what the first
    request made, and no second row; the same key with another body: 422, nothing done. No
    response is stored: the record keeps the id of what was made."""
    arranged = HONOURED[endpoint](app, client, factory)
    before = count(app, *arranged.made)
    first = keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY)
    made = ok(first, arranged.status)
    assert "Idempotent-Replayed" not in first.headers
    assert count(app, *arranged.made) == before + 1
    for _ in range(2):
        again = keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY)
        assert again.status_code == arranged.status, again.get_data(as_text=True)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.get_json().get("id") == made.get("id")
        assert again.get_json().get("case_id") == made.get("case_id")
    assert count(app, *arranged.made) == before + 1

    other = keyed_post(client, arranged.url, arranged.headers, arranged.other, KEY)
    assert "another request" in _headers_problem(other)
    assert count(app, *arranged.made) == before + 1
    (record,) = rows(app, IdempotencyRecord)
    assert str(record.resource_id) == (arranged.case_id or made["id"])
    assert record.status_code == arranged.status
    assert count(app, IdempotentResponse) == 0


def test_a_retried_client_creation_never_answers_or_keeps_the_secret(
    app: Any, client: Any, factory: Any
) -> None:
    """The secret is shown once: the replay answers the client as GET /clients/{id} shows
    it, without `client_secret` (the description says so: lost it, rotate it), and nothing
    the database holds about the request carries the secret."""
    arranged = _clients(app, client, factory)
    first = keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY)
    created = ok(first, 201)
    secret = created["client_secret"]
    again = keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    replayed = again.get_json()
    assert "client_secret" not in replayed and secret not in again.get_data(as_text=True)
    assert replayed == {k: v for k, v in created.items() if k != "client_secret"}
    assert again.headers["ETag"] == first.headers["ETag"]
    assert count(app, *arranged.made) == 1

    held = b"".join(
        raw_bytes(app, f"SELECT * FROM {table}")
        for table in ("idempotency_records", "idempotent_responses", "audit_events")
    )
    assert held and secret.encode() not in held
    assert count(app, IdempotentResponse) == 0
    # The secret of the one client made still works.
    token = client.post(
        f"{API}/auth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": secret,
        },
    )
    ok(token)
    spec = client.get(f"{API}/openapi.json").get_json()
    description = " ".join(
        spec["paths"]["/api/v1/orgs/{org_id}/clients"]["post"]["description"].split()
    )
    assert "without `client_secret`" in description and "Rotate it" in description


def test_concurrent_twins_create_one_client_and_only_the_first_shows_its_secret(
    app: Any, factory: Any
) -> None:
    arranged = _clients(app, app.test_client(), factory)
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def send(slot: int) -> None:
        twin = app.test_client()
        barrier.wait()
        results[slot] = keyed_post(twin, arranged.url, arranged.headers, arranged.body, KEY)

    threads = [threading.Thread(target=send, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [r.status_code for r in results] == [201, 201], [r.get_json() for r in results]
    first, replay = sorted(results, key=lambda r: r.headers.get("Idempotent-Replayed", ""))
    assert "Idempotent-Replayed" not in first.headers
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "client_secret" in first.get_json() and "client_secret" not in replay.get_json()
    assert first.get_json()["id"] == replay.get_json()["id"]
    assert count(app, *arranged.made) == 1 and count(app, IdempotencyRecord) == 1


def test_a_retried_restriction_or_hold_answers_the_case_as_it_is_now(
    app: Any, client: Any, factory: Any
) -> None:
    """Lifted by someone else in between, a restriction or hold retried is not set again:
    the replay answers the case as it is now (unrestricted, the hold lifted)."""
    world, case_id = _case_world(app, client, factory)
    url = f"{API}/cases/{case_id}/restriction"
    ok(keyed_post(client, url, world.h["sup"], {"restricted": True}, "restrict-0001"))
    ok(client.post(url, json={"restricted": False}, headers=world.h["sup2"]))
    again = keyed_post(client, url, world.h["sup"], {"restricted": True}, "restrict-0001")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert ok(again) == {"case_id": case_id, "restricted": False}
    assert count(app, AuditEvent, AuditEvent.action == "case:restrict") == 1

    url = f"{API}/cases/{case_id}/legal-hold"
    body = {"hold": True, "reason": "Criminal proceedings"}
    placed = ok(keyed_post(client, url, world.h["sup"], body, "hold-0001"))
    assert placed["hold"] is True and placed["lifted_at"] is None
    ok(world.hold(case_id, False, by="sup2"))
    again = keyed_post(client, url, world.h["sup"], body, "hold-0001")
    assert again.headers["Idempotent-Replayed"] == "true"
    replayed = ok(again)
    assert replayed["hold"] is False and replayed["placed_at"] == placed["placed_at"]
    assert replayed["lifted_at"] is not None
    assert count(app, LegalHold) == 1


def test_an_erasure_request_retried_after_the_erasure_answers_410(
    app: Any, client: Any, factory: Any
) -> None:
    """The erasure settles the keys of its case as before (410, no body digest) and clears
    the id of what each request made; the approval's repeat does nothing (409)."""
    world, case_id = _case_world(app, client, factory)
    url = f"{API}/cases/{case_id}/erasure"
    body = {"basis": "consent_withdrawn"}
    requested = ok(keyed_post(client, url, world.h["sup"], body, "erasure-0001"), 201)
    replayed = keyed_post(client, url, world.h["sup"], body, "erasure-0001")
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert ok(replayed, 201) == requested
    export = f"{API}/cases/{case_id}/export"
    ok(keyed_post(client, export, world.h["sup"], {"reason": "Subject access"}, "export-0001"), 201)

    approve = f"{API}/erasures/{requested['id']}/approve"
    ok(client.post(approve, headers={**world.h["dpo"], "Idempotency-Key": "approve-0001"}))
    repeat = client.post(approve, headers={**world.h["dpo"], "Idempotency-Key": "approve-0001"})
    assert_problem(repeat, 409)
    assert_problem(keyed_post(client, url, world.h["sup"], body, "erasure-0001"), 410)
    assert count(app, ErasureRequest) == 1
    records = rows(app, IdempotencyRecord)
    assert len(records) == 2
    assert {(r.body_sha256, r.resource_id) for r in records} == {(ERASED, None)}


def test_a_retried_export_once_downloaded_or_expired_answers_410(
    app: Any, client: Any, factory: Any
) -> None:
    """The export it made is spent: its download link answers 410, so the retry does too
    (on the record), rather than 201 with that link."""
    world, case_id = _case_world(app, client, factory)
    url = f"{API}/cases/{case_id}/export"
    body = {"reason": "Subject access request"}
    made = ok(keyed_post(client, url, world.h["sup"], body, KEY), 201)
    ok(client.get(made["download"], headers=world.h["sup"]))
    before = count(app, AuditEvent)
    assert_problem(keyed_post(client, url, world.h["sup"], body, KEY), 410)
    (row,) = rows(
        app, AuditEvent, AuditEvent.action == "case:export", AuditEvent.decision == "deny"
    )
    assert row.reason == "export already downloaded"
    assert count(app, AuditEvent) == before + 1 and count(app, SubjectExport) == 1


def test_a_retried_erasure_request_is_read_on_the_record(
    app: Any, client: Any, factory: Any
) -> None:
    """A replay shows the request (basis, status, who asked): an `erasure:read` row on its
    case's access log, as each request GET /erasures shows is an `erasure:list` row."""
    world, case_id = _case_world(app, client, factory)
    url = f"{API}/cases/{case_id}/erasure"
    body = {"basis": "consent_withdrawn"}
    requested = ok(keyed_post(client, url, world.h["sup"], body, KEY), 201)
    assert count(app, AuditEvent, AuditEvent.action == "erasure:read") == 0
    ok(keyed_post(client, url, world.h["sup"], body, KEY), 201)
    (row,) = rows(app, AuditEvent, AuditEvent.action == "erasure:read")
    assert (row.resource_type, row.resource_id, str(row.case_id), row.decision) == (
        "erasure_request",
        requested["id"],
        case_id,
        "allow",
    )


def test_a_retry_on_an_erased_case_is_refused_on_the_record(
    app: Any, client: Any, factory: Any
) -> None:
    """Answered 410 like the same request without a key, and recorded like it."""
    world, case_id = _case_world(app, client, factory)
    url = f"{API}/cases/{case_id}/export"
    body = {"reason": "Subject access request"}
    ok(keyed_post(client, url, world.h["sup"], body, KEY), 201)
    erasure = ok(
        client.post(
            f"{API}/cases/{case_id}/erasure", json={"basis": "objection"}, headers=world.h["sup"]
        ),
        201,
    )
    ok(client.post(f"{API}/erasures/{erasure['id']}/approve", headers=world.h["dpo"]))

    def refusals() -> list[tuple[str, str, str | None]]:
        return [
            (r.action, r.decision, r.reason)
            for r in rows(app, AuditEvent, AuditEvent.case_id == uuid.UUID(case_id))
            if r.decision == "deny"
        ]

    before = refusals()
    assert_problem(client.post(url, json=body, headers=world.h["sup"]), 410)
    unkeyed = refusals()[len(before) :]
    assert unkeyed == [("case:export", "deny", "case erased")]
    assert_problem(keyed_post(client, url, world.h["sup"], body, KEY), 410)
    assert refusals()[len(before) + 1 :] == unkeyed


def test_a_new_user_is_not_kept_as_a_record_of_its_request(
    app: Any, client: Any, factory: Any
) -> None:
    """The body holds the new user's password: a record of the request would keep a fast
    digest of it (an offline oracle beside the users row, which holds the rest of the body).
    A repeat is harmless anyway: the e-mail is taken (409), and no second user is made."""
    org_id, headers = _admin(factory)
    body = {
        "email": f"new-{uuid.uuid4().hex[:8]}@example.org",
        "display_name": "New person",
        "role": "caseworker",
        "password": "another long pass phrase 42",
    }
    url = f"{API}/orgs/{org_id}/users"
    ok(keyed_post(client, url, headers, body, KEY), 201)
    assert_problem(keyed_post(client, url, headers, body, KEY), 409)
    assert count(app, User, User.org_id == org_id, User.email == body["email"]) == 1
    assert count(app, IdempotencyRecord) == 0
    spec = client.get(f"{API}/openapi.json").get_json()
    assert (
        "no record of the request is kept"
        in spec["paths"]["/api/v1/orgs/{org_id}/users"]["post"]["description"]
    )


def test_the_answers_the_key_can_give_are_documented(client: Any) -> None:
    spec = client.get(f"{API}/openapi.json").get_json()["paths"]
    assert {"409", "410", "422"} <= set(
        spec["/api/v1/cases/{case_id}/erasure"]["post"]["responses"]
    )
    assert "422" in spec["/api/v1/clients/{client_pk}/secret"]["post"]["responses"]


# ---- the POSTs that refuse the key or declare a repeat harmless ---------------------------


def test_a_secret_rotation_refuses_the_key_and_a_repeat_cannot_rotate_twice(
    app: Any, client: Any, factory: Any
) -> None:
    """A replay could not show the new secret (never stored), so the key is refused before
    anything happens; without it, If-Match stops a repeat from rotating again (412)."""
    arranged = _clients(app, client, factory)
    created = ok(client.post(arranged.url, json=arranged.body, headers=arranged.headers), 201)
    url = f"{API}/clients/{created['id']}/secret"
    headers = {**arranged.headers, "If-Match": client_etag(client, arranged, created)}
    audit_rows = count(app, AuditEvent)
    refused = client.post(url, headers={**headers, "Idempotency-Key": KEY})
    assert "does not honour" in _headers_problem(refused)
    assert client_etag(client, arranged, created) == headers["If-Match"]
    assert count(app, AuditEvent) == audit_rows and count(app, IdempotencyRecord) == 0

    ok(client.post(url, headers=headers))
    assert_problem(client.post(url, headers=headers), 412)


def client_etag(client: Any, arranged: Arranged, created: dict[str, Any]) -> str:
    response = client.get(f"{API}/clients/{created['id']}", headers=arranged.headers)
    ok(response)
    return response.headers["ETag"]  # type: ignore[no-any-return]


def test_declared_repeats_accept_and_ignore_the_key(app: Any, client: Any, factory: Any) -> None:
    """A status change repeated with the same If-Match is refused (412), a consent check
    only reads, and a repeated refresh spends a used token (the login is revoked): the key
    changes none of that, and no record is kept."""
    world, case_id = _case_world(app, client, factory)
    headers = {
        **world.h["sup"],
        "If-Match": world.case_etag(case_id, "sup"),
        "Idempotency-Key": KEY,
    }
    status = f"{API}/cases/{case_id}/status"
    ok(client.post(status, json={"to": "active"}, headers=headers))
    assert_problem(client.post(status, json={"to": "active"}, headers=headers), 412)
    check = {
        "recipient_org_id": str(world.receiver_org),
        "purpose": "legal_assistance",
        "categories": ["identity"],
    }
    for _ in range(2):
        response = keyed_post(
            client, f"{API}/cases/{case_id}/consent-check", world.h["worker"], check, KEY
        )
        assert ok(response)["permit"] is False
        assert "Idempotent-Replayed" not in response.headers

    tokens = factory.login(world.principals["worker"])
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}", "Idempotency-Key": KEY}
    ok(client.post(f"{API}/auth/refresh", headers=refresh))
    assert_problem(client.post(f"{API}/auth/refresh", headers=refresh), 401)
    assert count(app, IdempotencyRecord) == 0


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def _row_counts(app: Any) -> dict[str, int]:
    return {table.name: count(app, table) for table in Base.metadata.sorted_tables}


def test_every_post_honours_the_key_declares_a_repeat_harmless_or_refuses_it(
    app: Any, client: Any, factory: Any
) -> None:
    """Walk the URL map: each POST is idempotent, declared repeatable (its reason in its
    description), or refuses a request carrying the key — 422 under `headers`, before
    anything is written — and documents which."""
    spec = client.get(f"{API}/openapi.json").get_json()
    decided: dict[str, set[str]] = {"honoured": set(), "repeatable": set(), "refused": set()}
    for rule in app.url_map.iter_rules():
        if "POST" not in rule.methods:
            continue
        view = app.view_functions[rule.endpoint]
        operation = spec["paths"][_openapi_path(rule.rule)]["post"]
        documented = [p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"]
        assert len(documented) == 1, rule.rule
        decision = getattr(view, "__idempotency__", None) or "refused"
        decided[decision].add(rule.endpoint)
        if decision == "repeatable":
            reason = view.__repeatable_reason__
            assert reason and reason in operation["description"], rule.rule
        if decision != "refused":
            continue
        permission = getattr(view, "__required_permission__", None)
        headers: dict[str, str] = {}
        if permission is not None:
            role = next(r for r in Role if permission in permissions_for(r))
            headers = factory.headers(factory.user(role))
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **{arg: uuid.uuid4() for arg in rule.arguments})
        before = _row_counts(app)
        response = client.post(url, json={}, headers={**headers, "Idempotency-Key": KEY})
        assert "does not honour" in _headers_problem(response), rule.rule
        assert _row_counts(app) == before, rule.rule
        assert "refused (422)" in documented[0]["description"]

    assert set(HONOURED) | {"cases.create_case", "referrals.intake"} <= decided["honoured"]
    assert {
        "auth.login",
        "auth.client_token",
        "auth.refresh",
        "auth.logout",
        "cases.change_status",
        "cases.assign_case",
        "consent.consent_check",
        "referrals.mark_read",
        "dpo.review_override",
        "rights.approve_erasure",
    } <= decided["repeatable"]
    assert "admin.rotate_client_secret" in decided["refused"]


def test_a_post_that_decided_nothing_refuses_the_key_before_doing_anything(
    app: Any, client: Any, factory: Any
) -> None:
    """A POST added later without a decision: refused with the key (after the permission
    check; a public one before anything), done without it."""
    from referral_api.access.permissions import Permission
    from referral_api.smorest import Blueprint

    blp = Blueprint("forgetful", __name__, url_prefix="/api/v1/forgetful")
    calls: list[str] = []

    @blp.route("/signed-in", methods=["POST"])
    @blp.requires(Permission.SELF_READ)
    def signed_in() -> dict[str, Any]:
        calls.append("signed-in")
        return {}

    @blp.route("/public", methods=["POST"])
    @blp.public
    def public() -> dict[str, Any]:
        calls.append("public")
        return {}

    app.register_blueprint(blp)
    headers = factory.headers(factory.user(Role.CASEWORKER))
    for path, sent in (("signed-in", headers), ("public", {})):
        url = f"{API}/forgetful/{path}"
        refused = client.post(url, headers={**sent, "Idempotency-Key": KEY})
        assert "does not honour" in _headers_problem(refused)
        assert calls == ([] if path == "signed-in" else ["signed-in"])
        ok(client.post(url, headers=sent))
    assert calls == ["signed-in", "public"]
    # Without a token the signed-in one still answers 401 first.
    assert_problem(client.post(f"{API}/forgetful/signed-in", headers={"Idempotency-Key": KEY}), 401)


# ---- migration 0016 -----------------------------------------------------------------------


def test_0016_adds_resource_id_and_its_downgrade_drops_the_records_that_need_it(
    app: Any, client: Any, factory: Any
) -> None:
    """Down to 0015: the records of the endpoints it did not honour go with the column;
    those of the endpoints it honoured stay, a stored response with its record, and a record
    keeping only an id too (the code before answers its retry 409 until the key expires:
    without the record a retry would make a second case). Up again: the column is back."""
    from alembic import command

    from referral_api.migrate import alembic_config, current_revision, head_revision, upgrade

    arranged = _orgs(app, client, factory)
    ok(keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY), 201)
    hold = HONOURED["rights.legal_hold"](app, client, factory)  # a case's, newly honoured
    ok(keyed_post(client, hold.url, hold.headers, hold.body, "hold-0001"), hold.status)
    worker = factory.headers(factory.user(Role.CASEWORKER, factory.org(OrgType.NGO)))
    ok(keyed_post(client, f"{API}/cases", worker, canary_case(), "case-0002"), 201)
    stored = keyed_post(client, f"{API}/cases", worker, canary_case(), "case-0001")
    as_written_before(app, "case-0001", ok(stored, 201))
    url = app.config["DATABASE_URL"]
    engine = db.engine_for(app)
    engine.dispose()
    try:
        command.downgrade(alembic_config(url), "0015")
        assert current_revision(engine) == "0015"
        columns = {c["name"] for c in inspect(engine).get_columns("idempotency_records")}
        assert "resource_id" not in columns
        with engine.connect() as connection:
            keys = connection.execute(select(IdempotencyRecord.__table__.c.key)).scalars().all()
            stored = connection.execute(select(IdempotentResponse.__table__.c.id)).all()
        assert sorted(keys) == ["case-0001", "case-0002"] and len(stored) == 1
        engine.dispose()
    finally:
        upgrade(url)
    assert current_revision(engine) == head_revision()
    columns = {c["name"] for c in inspect(engine).get_columns("idempotency_records")}
    assert "resource_id" in columns
    engine.dispose()


@pytest.mark.parametrize(
    ("endpoint", "action"),
    [
        ("rights.create_export", "case:export-read"),
        ("rights.legal_hold", "case:legal-hold-read"),
        ("rights.restriction", "case:restriction-read"),
    ],
)
def test_a_replay_about_a_case_is_on_its_access_log(
    app: Any, client: Any, factory: Any, endpoint: str, action: str
) -> None:
    """What a replay answers about the case (its export, hold or restriction now) is a read
    of the case, on the record as every other: one row naming the case, per replay."""
    arranged = HONOURED[endpoint](app, client, factory)
    made = ok(
        keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY), arranged.status
    )
    case_id = arranged.case_id or made["case_id"]
    for replays in (1, 2):
        again = keyed_post(client, arranged.url, arranged.headers, arranged.body, KEY)
        assert again.headers["Idempotent-Replayed"] == "true"
        read = rows(app, AuditEvent, AuditEvent.action == action)
        assert len(read) == replays
        assert {(r.resource_type, str(r.case_id), r.decision) for r in read} == {
            ("case", case_id, "allow")
        }
