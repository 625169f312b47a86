"""Subject access and portability (GDPR Art. 15/20; issue 6): the owning organisation's
supervisor exports everything held about the person — case fields in every category, notes,
consents with their terms and events, referrals and disclosures, legal holds, erasure
requests and the access log — as one JSON document, kept encrypted, downloadable once, by
the requester only, before it expires. The export holds nothing of any other case or
organisation."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem
from race_support import run_during
from rights_support import (
    ALL_CATEGORIES,
    API,
    World,
    assert_absent,
    canary_case,
    database_text,
    needs_postgres,
    new_token,
    ok,
    uuid_param,
)
from sqlalchemy import event, select

from referral_api.audit.models import AuditEvent
from referral_api.rights import service as rights_service


@pytest.fixture
def world(app: Any, factory: Any, client: Any) -> World:
    return World(app, factory, client)


class Scenario:
    """The person's case with notes in three categories, a consent given and one withdrawn,
    a referral the receiver has read and accepted (a disclosure), and a draft referral; a
    second case of the same organisation and a case of another organisation, each with
    canaries of their own; and the receiver's own case opened from the referral."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.token = new_token("subject")
        self.case_id = world.case(self.token)
        self.notes = {
            world.note(self.case_id, category, f"{category} note {self.token}"): category
            for category in ("health", "psychosocial", "needs")
        }
        self.form = base64.b64encode(f"signed form {self.token}".encode()).decode()
        self.consent = world.consent(
            self.case_id,
            world.receiver_org,
            ["identity", "legal"],
            evidence={"media_type": "application/pdf", "content_base64": self.form},
        )
        withdrawn = world.consent(self.case_id, world.outsider_org, ["needs"])
        self.withdrawn = ok(
            world.client.post(
                f"{API}/consents/{withdrawn['id']}/withdraw",
                json={"reason": f"withdrawal {self.token}"},
                headers=world.h["worker"],
            )
        )
        self.referral = world.refer(
            self.case_id, ["identity", "legal"], send=True, message=f"Please {self.token}"
        )["id"]
        ok(world.client.get(f"{API}/referrals/{self.referral}/packet", headers=world.h["receiver"]))
        world.move(self.referral, "accepted", note=f"transition {self.token}")
        world.message(self.referral, f"thread {self.token}")
        self.receiver_case = ok(
            world.client.post(f"{API}/referrals/{self.referral}/case", headers=world.h["receiver"]),
            201,
        )["receiver_case_id"]
        self.draft = world.refer(self.case_id, ["identity"], send=False, message="draft")["id"]

        self.other_token = new_token("othercase")
        self.other_case = world.case(self.other_token)
        world.note(self.other_case, "health", f"other {self.other_token}")
        world.consent(self.other_case, world.receiver_org, ["identity"])
        self.foreign_token = new_token("foreign")
        self.foreign_case = world.case(self.foreign_token, by="outsider")

    def export(self, by: str = "sup", reason: str = "subject access request 42") -> Any:
        return self.world.client.post(
            f"{API}/cases/{self.case_id}/export", json={"reason": reason}, headers=self.world.h[by]
        )


@pytest.fixture
def scenario(world: World) -> Scenario:
    return Scenario(world)


def _aware(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_export_holds_everything_about_the_person_once(app, client, world, scenario):
    created = scenario.export()
    body = ok(created, 201)
    assert body["case_id"] == scenario.case_id
    assert body["download"] == f"/api/v1/exports/{body['id']}/download"
    ttl = _aware(body["expires_at"]) - _aware(body["created_at"])
    assert timedelta(seconds=86399) <= ttl <= timedelta(seconds=86401)
    assert scenario.token not in created.get_data(as_text=True)

    # Kept encrypted: the document is ciphertext, no trace of the person anywhere at rest.
    stored = world.sql(
        "SELECT document, reason, requested_by FROM subject_exports WHERE id = :id",
        id=uuid_param(app, body["id"]),
    )
    assert len(stored) == 1 and stored[0][0] is not None and stored[0][1] is not None
    assert scenario.token not in database_text(world)
    assert "subject access request 42" not in database_text(world)

    # Only the requester downloads it: another supervisor of the same organisation cannot
    # even learn it exists; other roles are refused; other organisations see nothing.
    for name, status in (
        ("sup2", 404),
        ("worker", 403),
        ("dpo", 403),
        ("admin", 403),
        ("outsider_sup", 404),
        ("platform_dpo", 403),
    ):
        assert_problem(client.get(body["download"], headers=world.h[name]), status)

    response = client.get(body["download"], headers=world.h["sup"])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    document = response.get_json()

    assert document["format"] == "referral-api-subject-export-1"
    # Case fields in every category, exactly as recorded.
    case = document["case"]
    assert case["id"] == scenario.case_id
    payload = canary_case(scenario.token)
    for category in ALL_CATEGORIES:
        for key, value in payload[category].items():
            assert case[category][key] == value, (category, key)
    # The case's status history (codes), and each referral's outcome and reason codes
    # (found by review: left out).
    first_status = document["status_history"][0]
    assert (first_status["from_status"], first_status["to_status"]) == (None, "open")
    assert all(s["at"] for s in document["status_history"])
    # Notes of every category, with their text.
    assert {n["id"]: (n["category"], n["text"]) for n in document["notes"]} == {
        note_id: (category, f"{category} note {scenario.token}")
        for note_id, category in scenario.notes.items()
    }
    # Consents with provisions and events.
    consents = {c["id"]: c for c in document["consents"]}
    assert set(consents) == {scenario.consent["id"], scenario.withdrawn["id"]}
    given = consents[scenario.consent["id"]]
    assert [e["event_type"] for e in given["events"]] == ["given"]
    assert given["provisions"][0]["recipient_org_id"] == str(world.receiver_org)
    assert sorted(given["provisions"][0]["categories"]) == ["identity", "legal"]
    assert given["evidence"] == {"media_type": "application/pdf", "content_base64": scenario.form}
    assert [
        (e["event_type"], e["reason"]) for e in consents[scenario.withdrawn["id"]]["events"]
    ] == [
        ("given", None),
        ("withdrawn", f"withdrawal {scenario.token}"),
    ]
    # Referrals, and who received what, when.
    referrals = {r["id"]: r for r in document["referrals"]}
    assert set(referrals) == {scenario.referral, scenario.draft}
    sent = referrals[scenario.referral]
    assert (sent["to_org_id"], sent["status"]) == (str(world.receiver_org), "accepted")
    assert sorted(sent["categories"]) == ["identity", "legal"]
    assert sent["message"] == f"Please {scenario.token}" and sent["sent_at"]
    assert [(h["to_status"], h["note"]) for h in sent["history"]][-1] == (
        "accepted",
        f"transition {scenario.token}",
    )
    assert [(m["from_org_id"], m["body"]) for m in sent["messages"]] == [
        (str(world.receiver_org), f"thread {scenario.token}")
    ]
    assert referrals[scenario.draft]["status"] == "draft"
    assert (sent["status_reason"], sent["outcome"]) == (None, None)
    [disclosure] = document["disclosures"]
    assert disclosure["to_org_id"] == str(world.receiver_org)
    assert sorted(disclosure["categories"]) == ["identity", "legal"]
    assert disclosure["disclosed_at"] and disclosure["acknowledged_at"]
    # The access log: who touched the case, including the receiver's read of the packet
    # and this export itself.
    log = document["access_log"]
    actions = [(a["action"], a["actor_id"]) for a in log]
    assert ("case:create", str(world.ids["worker"])) in actions
    assert ("case:export", str(world.ids["sup"])) in actions
    assert any(a["actor_org_id"] == str(world.receiver_org) for a in log)
    export_row = next(a for a in log if a["action"] == "case:export")
    assert sorted(export_row["categories"]) == sorted(ALL_CATEGORIES)

    # Nothing of any other case or organisation.
    assert_absent(
        document,
        scenario.other_token,
        scenario.foreign_token,
        scenario.other_case,
        scenario.foreign_case,
        scenario.receiver_case,
    )

    # Downloadable once: the ciphertext is gone after the download.
    assert_problem(client.get(body["download"], headers=world.h["sup"]), 410)
    after = world.sql(
        "SELECT document, downloaded_at FROM subject_exports WHERE id = :id",
        id=uuid_param(app, body["id"]),
    )
    assert after[0][0] is None and after[0][1] is not None


def test_export_holds_consent_terms_legal_holds_and_erasure_requests(
    app: Any, client: Any, world: World
) -> None:
    """What the person's consent rests on (grantor, legal basis, notice, jurisdiction), the
    legal holds kept on their record (with the reasons given) and the erasure requests made
    are held about them too: Art. 15 gives them all."""
    token = new_token("holds")
    case_id = world.case(token)
    consent = world.consent(case_id, world.receiver_org, ["identity"])
    ok(world.hold(case_id, True, reason=f"first hold {token}"))
    ok(world.hold(case_id, False))
    ok(world.hold(case_id, True, reason=f"second hold {token}"))
    world.close(case_id)
    world.request_erasure(case_id)
    created = ok(
        client.post(
            f"{API}/cases/{case_id}/export", json={"reason": "sar"}, headers=world.h["sup"]
        ),
        201,
    )
    document = ok(client.get(created["download"], headers=world.h["sup"]))

    [terms] = [c for c in document["consents"] if c["id"] == consent["id"]]
    assert {
        key: terms[key]
        for key in (
            "grantor",
            "guardian_relation",
            "is_minor",
            "notice_version",
            "jurisdiction",
            "article6",
            "article9",
            "recorded_by_org_id",
        )
    } == {
        "grantor": "person",
        "guardian_relation": None,
        "is_minor": False,
        "notice_version": "2026-01",
        "jurisdiction": "UA",
        "article6": "a",
        "article9": "a",
        "recorded_by_org_id": str(world.org),
    }
    holds = document["legal_holds"]
    assert [(h["reason"], h["lifted_at"] is None) for h in holds] == [
        (f"first hold {token}", False),
        (f"second hold {token}", True),
    ]
    assert {h["org_id"] for h in holds} == {str(world.org)}
    [erasure] = document["erasure_requests"]
    assert (erasure["basis"], erasure["status"], erasure["decided_at"]) == (
        "consent_withdrawn",
        "pending",
        None,
    )


def test_export_and_download_are_audited(app, client, world, scenario):
    export_id = ok(scenario.export(), 201)["id"]
    assert_problem(client.get(f"{API}/exports/{export_id}/download", headers=world.h["sup2"]), 404)
    ok(client.get(f"{API}/exports/{export_id}/download", headers=world.h["sup"]))
    assert_problem(client.get(f"{API}/exports/{export_id}/download", headers=world.h["sup"]), 410)

    rows = world.scalars(
        select(AuditEvent)
        .where(AuditEvent.case_id == uuid.UUID(scenario.case_id))
        .where(AuditEvent.action.in_(["case:export", "case:export-download"]))
        .order_by(AuditEvent.id)
    )
    summary = [(r.action, r.decision, r.actor_id) for r in rows]
    assert summary == [
        ("case:export", "allow", world.ids["sup"]),
        ("case:export-download", "deny", world.ids["sup2"]),
        ("case:export-download", "allow", world.ids["sup"]),
        ("case:export-download", "deny", world.ids["sup"]),
    ]
    for row in rows:
        assert json.loads(row.details or "{}").get("export_id") in (export_id, None)
        assert scenario.token not in (row.details or "") + (row.reason or "")
    assert json.loads(rows[0].details)["export_id"] == export_id


def test_the_access_log_is_every_audit_row_of_the_case_read_without_orm_rows(
    app, world, scenario, monkeypatch
):
    """The access log grows with every list page that shows the case; the export reads it as
    plain columns a batch at a time (a batch of 2 here), not as AuditEvent objects held by
    the session, and still lists every row, oldest first."""
    from referral_api.cases.models import Case
    from referral_api.extensions import db

    monkeypatch.setattr(rights_service, "_ACCESS_LOG_BATCH", 2)
    case_id = uuid.UUID(scenario.case_id)
    with db.session_factory_for(app)() as session:
        expected = [
            (r.action, str(r.actor_id) if r.actor_id else None, r.decision)
            for r in session.scalars(
                select(AuditEvent).where(AuditEvent.case_id == case_id).order_by(AuditEvent.id)
            )
        ]
        loaded: list[AuditEvent] = []

        def seen(row: AuditEvent, _context: Any) -> None:
            loaded.append(row)

        case = session.get(Case, case_id)
        event.listen(AuditEvent, "load", seen)
        try:
            document = rights_service.build_export(session, case)
        finally:
            event.remove(AuditEvent, "load", seen)
    assert len(expected) > 4
    assert [(a["action"], a["actor_id"], a["decision"]) for a in document["access_log"]] == (
        expected
    )
    assert loaded == []
    json.dumps(document)  # plain values only


@needs_postgres
def test_two_downloads_at_once_hand_out_the_document_once(
    app, client, world, scenario, monkeypatch
):
    """A double click, a retried request or a stolen token used at the same moment: the
    second download comes in while the first has taken the document but not committed. It
    waits for the first and answers like any later download (410, a refused download on the
    record); the person's record is handed out once."""
    export = ok(scenario.export(), 201)
    during = run_during(
        monkeypatch,
        rights_service,
        "_audit",
        lambda _session, _actor, action, *_a, **_k: action == "case:export-download",
        lambda: app.test_client().get(export["download"], headers=world.h["sup"]),
    )
    first = client.get(export["download"], headers=world.h["sup"])
    during["thread"].join(timeout=30)
    assert "error" not in during, during.get("error")

    assert ok(first)["case"]["identity"]["given_name"] == f"Olena{scenario.token}"
    assert during["waited"], "the second download did not wait for the first"
    second = during["response"]
    assert scenario.token not in second.get_data(as_text=True)
    assert_problem(second, 410)
    downloads = world.sql(
        "SELECT decision, reason FROM audit_events WHERE action = 'case:export-download'"
        " ORDER BY id"
    )
    assert downloads == [("allow", None), ("deny", "export already downloaded")]
    assert world.sql(
        "SELECT count(*) FROM subject_exports WHERE document IS NULL AND downloaded_at IS NOT NULL"
    ) == [(1,)]


def test_head_leaves_the_one_download_unspent(app, client, world, scenario):
    """HEAD is safe (RFC 9110 §9.2.1): Flask would answer it with the GET view, which spends
    the export, so a link preview probing first used up the only download and audited a
    hand-out no one received. It is a 405 naming GET; the download still works once."""
    export_id = ok(scenario.export(), 201)["id"]
    url = f"{API}/exports/{export_id}/download"
    head = client.head(url, headers=world.h["sup"])
    assert head.status_code == 405
    assert head.headers["Allow"] == "GET"
    assert head.headers["Content-Type"] == "application/problem+json"
    assert (
        world.scalars(select(AuditEvent).where(AuditEvent.action == "case:export-download")) == []
    )
    document = ok(client.get(url, headers=world.h["sup"]))
    assert document["case"]["id"] == scenario.case_id
    assert_problem(client.get(url, headers=world.h["sup"]), 410)


def test_only_the_owning_supervisor_may_export(app, client, world, scenario):
    for name in ("worker", "dpo", "admin", "platform_dpo", "receiver"):
        assert_problem(scenario.export(by=name), 403)
    assert_problem(scenario.export(by="outsider_sup"), 404)
    # A reason is required.
    response = client.post(
        f"{API}/cases/{scenario.case_id}/export", json={}, headers=world.h["sup"]
    )
    assert_problem(response, 422)
    assert world.sql("SELECT count(*) FROM subject_exports")[0][0] == 0
    # Refusals are recorded as denials.
    denied = world.sql(
        "SELECT count(*) FROM audit_events WHERE action = 'case:export' AND decision = 'deny'"
    )[0][0]
    assert denied == 6


def test_an_expired_export_cannot_be_downloaded(app, client, world, scenario, monkeypatch):
    first = ok(scenario.export(), 201)
    second = ok(scenario.export(), 201)
    expires = _aware(first["expires_at"])

    monkeypatch.setattr(rights_service, "now", lambda: expires + timedelta(seconds=1))
    assert_problem(client.get(first["download"], headers=world.h["sup"]), 410)

    monkeypatch.setattr(rights_service, "now", lambda: expires - timedelta(seconds=5))
    ok(client.get(second["download"], headers=world.h["sup"]))

    # The time to live comes from the configuration.
    monkeypatch.undo()
    app.config["EXPORT_TTL_SECONDS"] = 60
    short = ok(scenario.export(), 201)
    ttl = _aware(short["expires_at"]) - _aware(short["created_at"])
    assert timedelta(seconds=59) <= ttl <= timedelta(seconds=61)


def test_export_of_a_restricted_case_is_still_honoured(app, client, world, scenario):
    """Art. 15 stays available under an Art. 18 restriction."""
    ok(
        client.post(
            f"{API}/cases/{scenario.case_id}/restriction",
            json={"restricted": True},
            headers=world.h["sup"],
        )
    )
    export = ok(scenario.export(), 201)
    document = ok(client.get(export["download"], headers=world.h["sup"]))
    assert document["case"]["identity"]["given_name"] == f"Olena{scenario.token}"


def test_an_erased_case_takes_its_pending_exports_with_it(app, client, world, scenario):
    export = ok(scenario.export(), 201)
    ok(world.approve(world.request_erasure(scenario.case_id)))
    assert_problem(client.get(export["download"], headers=world.h["sup"]), 404)
    assert world.sql("SELECT count(*) FROM subject_exports")[0][0] == 0
    assert_problem(scenario.export(), 410)


def test_an_export_nobody_downloaded_loses_its_ciphertext_once_expired(
    app, client, world, scenario, monkeypatch, runner
):
    """Expiry is not only a refusal: the encrypted document itself is cleared — by the next
    export anywhere, or by `retention run --apply`."""
    first = ok(scenario.export(), 201)
    second = ok(scenario.export(), 201)
    held = "SELECT count(*) FROM subject_exports WHERE document IS NOT NULL"
    assert world.sql(held)[0][0] == 2

    expires = _aware(second["expires_at"])
    monkeypatch.setattr(rights_service, "now", lambda: expires + timedelta(seconds=1))
    result = runner.invoke(args=["retention", "run", "--apply"])
    assert result.exit_code == 0, result.output
    assert "2 expired subject-access exports cleared" in result.output
    assert world.sql(held)[0][0] == 0
    assert world.sql("SELECT count(*) FROM subject_exports")[0][0] == 2  # the register stays
    assert_problem(client.get(first["download"], headers=world.h["sup"]), 410)
    purges = world.sql("SELECT actor_type, details FROM audit_events WHERE action = 'export:purge'")
    assert [(kind, json.loads(details)) for kind, details in purges] == [("system", {"cleared": 2})]

    # A new export clears whatever else has expired by then.
    monkeypatch.undo()
    ok(scenario.export(), 201)
    monkeypatch.setattr(rights_service, "now", lambda: datetime.now(UTC) + timedelta(days=30))
    ok(scenario.export(), 201)
    assert world.sql(held)[0][0] == 1
