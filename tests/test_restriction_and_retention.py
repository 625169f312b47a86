"""Restriction of processing (GDPR Art. 18) and the retention schedule (issue 6).

A restricted case is stored but not processed: every read and write by case workers and
supervisors is refused with 403 `processing-restricted` and recorded as a denial, the case
leaves lists and searches, and nothing of it can be sent; lifting the restriction is audited
and restores access. Retention: closed cases past their period are listed for the DPO and by
`retention run`, and erased by `retention run --apply` through the crypto-shredding path,
skipping legal holds.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem
from race_support import run_during
from rights_support import (
    API,
    World,
    consent_body,
    needs_postgres,
    new_token,
    ok,
    uuid_param,
)
from sqlalchemy import select, update

from referral_api.audit.models import AuditEvent
from referral_api.cases.models import Case
from referral_api.extensions import db
from referral_api.rights.models import ErasureTombstone

RESTRICTED = "/problems/processing-restricted"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["RETENTION_POLICY"] = {"thb": {"closed": 30}, "gbv": {"closed": 30}}
    return app_config


@pytest.fixture
def world(app: Any, factory: Any, client: Any) -> World:
    return World(app, factory, client)


def restrict(world: World, case_id: str, restricted: bool, by: str = "sup") -> Any:
    return world.client.post(
        f"{API}/cases/{case_id}/restriction", json={"restricted": restricted}, headers=world.h[by]
    )


def deny_rows(world: World, case_id: str) -> list[AuditEvent]:
    return world.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.case_id == uuid.UUID(case_id),
            AuditEvent.decision == "deny",
            AuditEvent.reason == "processing restricted",
        )
        .order_by(AuditEvent.id)
    )


def access_log_report(world: World, case_id: str) -> list[dict[str, Any]]:
    """Every row of the DPO's access-log report for the case, following `Link: next`."""
    rows: list[dict[str, Any]] = []
    url: str | None = f"{API}/dpo/reports/access-log?case_id={case_id}&limit=100"
    while url:
        response = world.client.get(url, headers=world.h["dpo"])
        rows += ok(response)
        link = response.headers.get("Link", "")
        url = link[link.index("<") + 1 : link.index(">")] if 'rel="next"' in link else None
    return rows


# ---- restriction --------------------------------------------------------------------------


def test_restriction_refuses_every_processing_and_records_each_refusal(app, client, world):
    token = new_token("restricted")
    case_id = world.case(token)
    note_id = world.note(case_id, "needs", f"note {token}")
    consent = world.consent(case_id, world.receiver_org, ["identity", "legal"])
    draft = world.refer(case_id, ["identity"], send=False, message=f"draft {token}")["id"]
    live = world.refer(case_id, ["identity"], send=True, message=f"live {token}")["id"]
    assert client.get(
        f"{API}/referrals/{live}/packet", headers=world.h["receiver"]
    ).status_code == (200)
    etags = {name: world.case_etag(case_id, name) for name in ("worker", "sup")}

    assert_problem(restrict(world, case_id, True, by="worker"), 403)
    assert_problem(restrict(world, case_id, True, by="dpo"), 403)
    assert_problem(restrict(world, case_id, True, by="outsider_sup"), 404)
    assert ok(restrict(world, case_id, True)) == {"case_id": case_id, "restricted": True}
    assert_problem(restrict(world, case_id, True), 409)

    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/cases/{case_id}", None),
        ("PATCH", f"/cases/{case_id}", {"risk_level": "low"}),
        ("POST", f"/cases/{case_id}/status", {"to": "active"}),
        ("GET", f"/cases/{case_id}/notes", None),
        ("POST", f"/cases/{case_id}/notes", {"category": "needs", "text": "more"}),
        ("GET", f"/cases/{case_id}/consents", None),
        ("POST", f"/cases/{case_id}/consents", consent_body(world.receiver_org, ["identity"])),
        ("GET", f"/consents/{consent['id']}", None),
        (
            "POST",
            f"/cases/{case_id}/consent-check",
            {
                "recipient_org_id": str(world.receiver_org),
                "purpose": "legal_assistance",
                "categories": ["identity"],
            },
        ),
        (
            "POST",
            f"/cases/{case_id}/referrals",
            {
                "to_org_id": str(world.receiver_org),
                "purpose": "legal_assistance",
                "categories": ["identity"],
                "send": True,
            },
        ),
    ]
    refused = 0
    for name in ("worker", "sup"):
        for method, path, body in attempts:
            response = client.open(
                f"{API}{path}",
                method=method,
                json=body,
                headers={**world.h[name], "If-Match": etags[name]},
            )
            problem = assert_problem(response, 403)
            assert problem["type"] == RESTRICTED, (name, method, path, problem)
            assert token not in response.get_data(as_text=True)
            refused += 1
    # A supervisor's assignment is refused likewise.
    response = client.post(
        f"{API}/cases/{case_id}/assign",
        json={"assignee_id": str(world.ids["worker"])},
        headers={**world.h["sup"], "If-Match": etags["sup"]},
    )
    assert assert_problem(response, 403)["type"] == RESTRICTED
    refused += 1

    # Other organisations still cannot tell the case exists.
    assert_problem(client.get(f"{API}/cases/{case_id}", headers=world.h["outsider"]), 404)

    # Nothing can be sent, and the receiver's packet is closed.
    send = client.post(
        f"{API}/referrals/{draft}/transitions",
        json={"to": "requested"},
        headers={
            **world.h["worker"],
            "If-Match": client.get(f"{API}/referrals/{draft}", headers=world.h["worker"]).headers[
                "ETag"
            ],
        },
    )
    assert "restricted" in assert_problem(send, 403)["detail"]
    assert ok(client.get(f"{API}/referrals/{draft}", headers=world.h["worker"]))["status"] == (
        "draft"
    )
    assert_problem(client.get(f"{API}/referrals/{live}/packet", headers=world.h["receiver"]), 404)

    # Out of lists and searches.
    for params in ({}, {"name": f"Olena{token}"}, {"phone": "+380501234567"}):
        listed = ok(client.get(f"{API}/cases", query_string=params, headers=world.h["worker"]))
        assert case_id not in [c["id"] for c in listed], params

    # Every refusal is on the record: who, which case, denied, why; ids only.
    denials = deny_rows(world, case_id)
    assert len(denials) == refused + 1  # + the refused send
    assert {d.actor_id for d in denials} == {world.ids["worker"], world.ids["sup"]}
    for row in denials:
        assert row.decision == "deny"
        assert token not in json.dumps(
            [row.details, row.reason, row.categories, row.resource_id], default=str
        )
    restrict_rows = world.scalars(
        select(AuditEvent)
        .where(AuditEvent.case_id == uuid.UUID(case_id), AuditEvent.action == "case:restrict")
        .order_by(AuditEvent.id)
    )
    # The refused attempts to restrict (caseworker, DPO, outsider), then the supervisor's.
    assert [(r.decision, r.actor_id) for r in restrict_rows] == [
        ("deny", world.ids["worker"]),
        ("deny", world.ids["dpo"]),
        ("deny", world.ids["outsider_sup"]),
        ("allow", world.ids["sup"]),
    ]
    # The DPO sees them in the case's access log (a metadata report, still open to the DPO
    # under restriction), exactly as recorded, and can verify the chain that holds them.
    report = access_log_report(world, case_id)
    reported = [r for r in report if r["reason"] == "processing restricted"]
    assert [(r["action"], r["actor_id"], r["resource_id"]) for r in reported] == [
        (d.action, str(d.actor_id), d.resource_id) for d in reversed(denials)
    ]
    assert {(r["decision"], r["actor_role"]) for r in reported} == {
        ("deny", "caseworker"),
        ("deny", "supervisor"),
    }
    assert token not in json.dumps(report)
    assert ok(client.get(f"{API}/audit/verify", headers=world.h["platform_dpo"]))["ok"] is True

    # Lifting is audited and restores access.
    assert ok(restrict(world, case_id, False)) == {"case_id": case_id, "restricted": False}
    assert_problem(restrict(world, case_id, False), 409)
    lifted = world.scalars(
        select(AuditEvent).where(
            AuditEvent.case_id == uuid.UUID(case_id),
            AuditEvent.action == "case:lift-restriction",
        )
    )
    assert [(r.decision, r.actor_id) for r in lifted] == [("allow", world.ids["sup"])]
    body = ok(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]))
    assert body["identity"]["given_name"] == f"Olena{token}"
    notes = ok(client.get(f"{API}/cases/{case_id}/notes", headers=world.h["worker"]))
    assert [n["id"] for n in notes] == [note_id]
    listed = ok(
        client.get(
            f"{API}/cases", query_string={"name": f"Olena{token}"}, headers=world.h["worker"]
        )
    )
    assert [c["id"] for c in listed] == [case_id]
    assert world.move(draft, "requested", by="worker")["status"] == "requested"
    ok(client.get(f"{API}/referrals/{live}/packet", headers=world.h["receiver"]))
    assert len(deny_rows(world, case_id)) == refused + 1  # nothing new after lifting


def test_a_refused_send_of_a_restricted_case_is_on_the_record(app, client, world):
    case_id = world.case(new_token("send"))
    world.consent(case_id, world.receiver_org, ["identity"])
    draft = world.refer(case_id, ["identity"], send=False, message="draft")["id"]
    ok(restrict(world, case_id, True))
    etag = client.get(f"{API}/referrals/{draft}", headers=world.h["worker"]).headers["ETag"]
    send = client.post(
        f"{API}/referrals/{draft}/transitions",
        json={"to": "requested"},
        headers={**world.h["worker"], "If-Match": etag},
    )
    problem = assert_problem(send, 403)
    assert problem["type"] == "/problems/processing-restricted"
    denied = world.scalars(
        select(AuditEvent).where(
            AuditEvent.case_id == uuid.UUID(case_id), AuditEvent.decision == "deny"
        )
    )
    assert [r.actor_id for r in denied] == [world.ids["worker"]]


def test_restriction_of_one_case_leaves_the_others_alone(app, client, world):
    restricted = world.case(new_token("r"))
    other = world.case(new_token("o"))
    ok(restrict(world, restricted, True))
    ok(client.get(f"{API}/cases/{other}", headers=world.h["worker"]))
    listed = [c["id"] for c in ok(client.get(f"{API}/cases", headers=world.h["worker"]))]
    assert listed == [other]


# ---- retention ----------------------------------------------------------------------------


def backdate(app: Any, case_id: str, days: int) -> datetime:
    closed_at = datetime.now(UTC) - timedelta(days=days)
    with db.session_factory_for(app)() as session:
        session.execute(
            update(Case)
            .where(Case.id == uuid.UUID(case_id))
            .values(closed_at=closed_at)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return closed_at


class Schedule:
    """Closed cases on both sides of the 30-day period, one under legal hold, one open, and
    one of another organisation."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.closed_at: dict[str, datetime] = {}
        for label, case_type, days, by in (
            ("due_thb", "thb", 40, "worker"),
            ("due_gbv", "gbv", 31, "worker"),
            ("recent", "thb", 10, "worker"),
            ("open", "thb", None, "worker"),
            ("held", "gbv", 100, "worker"),
            ("foreign", "thb", 50, "outsider"),
        ):
            token = new_token(label.replace("_", ""))
            case_id = world.case(token, by=by, case_type=case_type)
            self.tokens[label], self.ids[label] = token, case_id
            if days is None:
                continue
            sup = "sup" if by == "worker" else "outsider_sup"
            etag = world.case_etag(case_id, sup)
            response = world.client.post(
                f"{API}/cases/{case_id}/status",
                json={"to": "closed", "reason": "services_completed"},
                headers={**world.h[sup], "If-Match": etag},
            )
            assert ok(response)["status"] == "closed"
            self.closed_at[label] = backdate(world.app, case_id, days)
        ok(world.hold(self.ids["held"], True, reason="criminal proceedings"))


def _due(client: Any, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        row["case_id"]: row
        for row in ok(client.get(f"{API}/dpo/reports/retention-due", headers=headers))
    }


def test_retention_due_lists_exactly_the_cases_past_their_period(app, client, world):
    schedule = Schedule(world)
    ids = schedule.ids
    due = _due(client, world.h["dpo"])
    assert set(due) == {ids["due_thb"], ids["due_gbv"], ids["held"]}
    assert {case: row["legal_hold"] for case, row in due.items()} == {
        ids["due_thb"]: False,
        ids["due_gbv"]: False,
        ids["held"]: True,
    }
    for label in ("due_thb", "due_gbv", "held"):
        row = due[ids[label]]
        assert row["org_id"] == str(world.org)
        closed = datetime.fromisoformat(row["closed_at"])
        assert abs(closed - schedule.closed_at[label]) < timedelta(seconds=1)
        assert datetime.fromisoformat(row["due_at"]) - closed == timedelta(days=30)
    assert due[ids["due_gbv"]]["case_type"] == "gbv"
    # Metadata only.
    raw = json.dumps(due)
    assert not [t for t in schedule.tokens.values() if t in raw]
    # The platform DPO sees every organisation's; another organisation's DPO only theirs.
    assert set(_due(client, world.h["platform_dpo"])) == {
        ids["due_thb"],
        ids["due_gbv"],
        ids["held"],
        ids["foreign"],
    }
    assert set(_due(client, world.h["outsider_dpo"])) == {ids["foreign"]}
    for name in ("worker", "sup", "admin"):
        assert_problem(client.get(f"{API}/dpo/reports/retention-due", headers=world.h[name]), 403)


def test_retention_run_lists_then_apply_erases_the_due_cases_except_held_ones(
    app, client, runner, world
):
    schedule = Schedule(world)
    ids = schedule.ids
    # A pending erasure request for a due case is settled by the retention erasure.
    pending = world.request_erasure(ids["due_thb"], "no_longer_necessary")

    listed = runner.invoke(args=["retention", "run"])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.stdout.splitlines() if line.strip()]
    assert sorted(line.split()[0] for line in lines) == sorted(
        [ids["due_thb"], ids["due_gbv"], ids["held"], ids["foreign"]]
    )
    held_line = next(line for line in lines if line.startswith(ids["held"]))
    assert "legal hold" in held_line
    assert "3 cases due for erasure, 1 on legal hold" in listed.output
    # Listing erased nothing.
    assert world.sql("SELECT count(*) FROM erasure_tombstones")[0][0] == 0
    for label in ("due_thb", "due_gbv"):
        ok(client.get(f"{API}/cases/{ids[label]}", headers=world.h["worker"]))
    assert world.sql("SELECT count(*) FROM case_keys")[0][0] == 6

    applied = runner.invoke(args=["retention", "run", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert "3 cases erased, 1 skipped under legal hold" in applied.output
    assert not [t for t in schedule.tokens.values() if t in applied.output]

    for label in ("due_thb", "due_gbv"):
        assert_problem(client.get(f"{API}/cases/{ids[label]}", headers=world.h["worker"]), 410)
    assert_problem(client.get(f"{API}/cases/{ids['foreign']}", headers=world.h["outsider"]), 410)
    for label in ("recent", "open", "held"):
        body = ok(client.get(f"{API}/cases/{ids[label]}", headers=world.h["worker"]))
        assert body["identity"]["given_name"] == f"Olena{schedule.tokens[label]}"

    tombstones = world.scalars(select(ErasureTombstone))
    assert {str(t.case_id) for t in tombstones} == {
        ids["due_thb"],
        ids["due_gbv"],
        ids["foreign"],
    }
    for tombstone in tombstones:
        assert tombstone.basis.value == "retention_expired"
        assert (tombstone.request_id, tombstone.requested_by, tombstone.approved_by) == (
            None,
            None,
            None,
        )
        assert tombstone.data_keys_destroyed == 1
        assert tombstone.ciphertexts_cleared > 0
    erased_ids = [uuid_param(app, ids[label]) for label in ("due_thb", "due_gbv", "foreign")]
    for cid in erased_ids:
        assert world.sql("SELECT count(*) FROM case_keys WHERE case_id = :c", c=cid)[0][0] == 0
        assert (
            world.sql("SELECT count(*) FROM case_search_index WHERE case_id = :c", c=cid)[0][0] == 0
        )
        cleared = "SELECT identity, incident, given_name, narrative FROM cases WHERE id = :c"
        assert world.sql(cleared, c=cid)[0] == (None, None, None, None)
    erase_rows = world.scalars(select(AuditEvent).where(AuditEvent.action == "case:erase"))
    assert len(erase_rows) == 3
    assert {(r.actor_type, r.legal_basis) for r in erase_rows} == {
        ("system", "gdpr-17:retention_expired")
    }
    requests = ok(
        client.get(f"{API}/erasures", query_string={"status": "executed"}, headers=world.h["dpo"])
    )
    assert [r["id"] for r in requests] == [pending]
    assert ok(client.get(f"{API}/erasures", headers=world.h["dpo"])) == []

    # Once done, nothing more is due (but the held case) and a rerun erases nothing.
    assert set(_due(client, world.h["platform_dpo"])) == {ids["held"]}
    again = runner.invoke(args=["retention", "run", "--apply"])
    assert again.exit_code == 0, again.output
    assert "0 cases erased, 1 skipped under legal hold" in again.output
    assert world.sql("SELECT count(*) FROM erasure_tombstones")[0][0] == 3

    # Lifting the hold makes the held case erasable on the next run.
    ok(world.hold(ids["held"], False))
    last = runner.invoke(args=["retention", "run", "--apply"])
    assert "1 cases erased, 0 skipped under legal hold" in last.output
    assert_problem(client.get(f"{API}/cases/{ids['held']}", headers=world.h["worker"]), 410)
    assert ok(client.get(f"{API}/audit/verify", headers=world.h["platform_dpo"]))["ok"] is True


def test_retention_apply_leaves_cases_that_changed_after_listing(
    app, client, runner, world, monkeypatch
):
    """`retention run --apply` works from a snapshot; a case held or reopened after the
    listing (by another worker) must not be erased. Here the listing is taken first, the
    changes made, and the command handed that stale listing."""
    from referral_api.rights import service as rights_service

    schedule = Schedule(world)
    ids = schedule.ids
    with db.session_factory_for(app)() as session:
        snapshot = rights_service.retention_due(session, app.config["RETENTION_POLICY"])
        session.rollback()
    assert len(snapshot) == 4
    ok(world.hold(ids["due_thb"], True, reason="new proceedings"))
    response = client.post(
        f"{API}/cases/{ids['due_gbv']}/status",
        json={"to": "open", "reason": "new_need"},
        headers={**world.h["sup"], "If-Match": world.case_etag(ids["due_gbv"], "sup")},
    )
    assert ok(response)["status"] == "open"
    monkeypatch.setattr(rights_service, "retention_due", lambda *a, **k: snapshot)

    result = runner.invoke(args=["retention", "run", "--apply"])
    assert result.exit_code == 0, result.output
    assert (
        "1 cases erased, 2 skipped under legal hold or restriction, "
        "1 changed since listed and left alone" in result.output
    )
    for label in ("due_thb", "due_gbv", "held"):
        ok(client.get(f"{API}/cases/{ids[label]}", headers=world.h["worker"]))
    assert_problem(client.get(f"{API}/cases/{ids['foreign']}", headers=world.h["outsider"]), 410)
    assert [str(t.case_id) for t in world.scalars(select(ErasureTombstone))] == [ids["foreign"]]


def test_a_database_conflict_on_one_case_leaves_it_for_the_next_run(
    app, client, runner, world, monkeypatch
):
    """A deadlock (or serialization failure, or lock timeout) on one case aborts that case's
    erasure only: nothing of it is stored, the others are erased, the summary counts it and
    the run exits 1 so the timer reports it; the next run erases it."""
    from psycopg.errors import DeadlockDetected
    from sqlalchemy.exc import OperationalError

    from referral_api.rights import service as rights_service

    schedule = Schedule(world)
    ids = schedule.ids
    conflicted = uuid.UUID(ids["due_thb"])  # erased between the foreign case and due_gbv
    real = rights_service._audit

    def deadlocked_at_the_end(session: Any, actor: Any, action: str, case_id: Any, **kw: Any):
        if action == "case:erase" and case_id == conflicted:
            # Everything cleared and the tombstone flushed: all of it must roll back.
            raise OperationalError("UPDATE cases", {}, DeadlockDetected("deadlock detected"))
        return real(session, actor, action, case_id, **kw)

    monkeypatch.setattr(rights_service, "_audit", deadlocked_at_the_end)
    result = runner.invoke(args=["retention", "run", "--apply"])
    assert result.exit_code == 1, (result.output, repr(result.exception))
    assert (
        "2 cases erased, 1 skipped under legal hold or restriction, 1 failed on a database conflict"
        " (retry later)" in result.output
    )
    assert f"{conflicted}: not erased" in result.output
    assert not [t for t in schedule.tokens.values() if t in result.output]
    body = ok(client.get(f"{API}/cases/{conflicted}", headers=world.h["worker"]))
    assert body["identity"]["given_name"] == f"Olena{schedule.tokens['due_thb']}"
    cid = uuid_param(app, conflicted)
    assert world.sql("SELECT count(*) FROM case_keys WHERE case_id = :c", c=cid) == [(1,)]
    assert_problem(client.get(f"{API}/cases/{ids['due_gbv']}", headers=world.h["worker"]), 410)
    assert_problem(client.get(f"{API}/cases/{ids['foreign']}", headers=world.h["outsider"]), 410)
    assert {str(t.case_id) for t in world.scalars(select(ErasureTombstone))} == {
        ids["due_gbv"],
        ids["foreign"],
    }

    monkeypatch.undo()
    again = runner.invoke(args=["retention", "run", "--apply"])
    assert again.exit_code == 0, again.output
    assert "1 cases erased, 1 skipped under legal hold" in again.output
    assert "failed" not in again.output
    assert_problem(client.get(f"{API}/cases/{conflicted}", headers=world.h["worker"]), 410)
    assert world.sql("SELECT count(*) FROM erasure_tombstones") == [(3,)]


@needs_postgres
@pytest.mark.parametrize(
    "withdrawal_first", [True, False], ids=["withdrawal-first", "erasure-first"]
)
def test_retention_and_a_consent_withdrawal_at_once_never_deadlock(
    app, client, runner, world, monkeypatch, withdrawal_first
):
    """A withdrawal locks its consent, then the case row; retention locked the case row and
    then the consents: a deadlock, PostgreSQL killed one (the run ended, or the withdrawal
    answered 503). Retention takes them in the same order as everything else: a withdrawal
    that came first is done first and the case is then erased; one that comes during the
    erasure waits and finds the case erased."""
    from referral_api.rights import service as rights_service

    case_id = world.case(new_token("ret-withdraw"))
    consent = world.consent(case_id, world.receiver_org, ["identity"])
    world.close(case_id)
    backdate(app, case_id, 40)
    during = run_during(
        monkeypatch,
        rights_service,
        "_lock_case_to_erase",
        lambda _session, _case: True,
        lambda: app.test_client().post(
            f"{API}/consents/{consent['id']}/withdraw",
            json={"reason": "changed my mind"},
            headers=world.h["worker"],
        ),
        before=withdrawal_first,
    )
    result = runner.invoke(args=["retention", "run", "--apply"])
    during["thread"].join(timeout=30)
    assert "error" not in during, during.get("error")

    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "1 cases erased, 0 skipped under legal hold" in result.output
    assert_problem(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]), 410)
    events = world.sql(
        "SELECT e.event_type FROM consent_events e JOIN consent_records c"
        " ON c.id = e.consent_id WHERE c.case_id = :c ORDER BY e.occurred_at",
        c=uuid_param(app, case_id),
    )
    if withdrawal_first:
        assert ok(during["response"])["state"] == "withdrawn"
        assert [row[0] for row in events] == ["given", "withdrawn"]
    else:
        assert during["waited"], "the withdrawal did not wait for the erasure"
        assert assert_problem(during["response"], 410)["type"] == "/problems/erased"
        assert [row[0] for row in events] == ["given"]


def test_a_referral_of_a_restricted_case_can_be_stopped_but_nothing_added(app, client, world):
    token = new_token("stop")
    case_id = world.case(token)
    world.consent(case_id, world.receiver_org, ["identity"])
    live = world.refer(case_id, ["identity"], send=True, message=f"live {token}")["id"]
    assert ok(restrict(world, case_id, True))["restricted"] is True
    before = ok(client.get(f"{API}/referrals/{live}", headers=world.h["worker"]))

    def stop(**extra: Any) -> Any:
        etag = client.get(f"{API}/referrals/{live}", headers=world.h["worker"]).headers["ETag"]
        return client.post(
            f"{API}/referrals/{live}/transitions",
            json={"to": "cancelled", "reason": "no_longer_needed", **extra},
            headers={**world.h["worker"], "If-Match": etag},
        )

    for extra in ({"note": f"why {token}"}, {"business_status": "closed-by-ngo"}):
        refused = stop(**extra)
        assert assert_problem(refused, 403)["type"] == RESTRICTED, extra
        assert token not in refused.get_data(as_text=True)
    unchanged = ok(client.get(f"{API}/referrals/{live}", headers=world.h["worker"]))
    assert unchanged == before
    denied = [row for row in deny_rows(world, case_id) if row.action == "referral:cancelled"]
    assert len(denied) == 2
    assert {row.reason for row in denied} == {"processing restricted"}

    stopped = ok(stop())
    assert stopped["status"] == "cancelled"
    assert stopped["business_status"] == before["business_status"]


@needs_postgres
def test_a_legal_hold_placed_while_retention_erases_waits_and_finds_the_case_erased(
    app, client, world, runner, monkeypatch
):
    """Retention erases a due case while a supervisor places a legal hold on it: one of the
    two goes first and the other sees it — never an erased case with a hold in force."""
    import threading

    from referral_api.rights import service as rights_service
    from referral_api.rights.models import LegalHold

    case_id = world.case(new_token("held-meanwhile"))
    world.close(case_id)
    with db.session_factory_for(app)() as s:
        s.execute(
            update(Case)
            .where(Case.id == uuid.UUID(case_id))
            .values(closed_at=datetime.now(UTC) - timedelta(days=40))
            .execution_options(synchronize_session=False)
        )
        s.commit()
    during: dict[str, Any] = {}
    checked = rights_service.active_hold

    def hold_placed_during_the_check(session: Any, cid: Any) -> Any:
        if str(cid) == case_id and "thread" not in during:

            def place() -> None:
                during["hold"] = world.hold(case_id, True, reason="criminal proceedings")

            during["thread"] = threading.Thread(target=place)
            during["thread"].start()
            during["thread"].join(timeout=1.0)
            during["waited"] = during["thread"].is_alive()
        return checked(session, cid)

    monkeypatch.setattr(rights_service, "active_hold", hold_placed_during_the_check)
    result = runner.invoke(args=["retention", "run", "--apply"])
    during["thread"].join(timeout=10)
    assert result.exit_code == 0, result.output
    assert during["waited"], "the hold did not wait for the erasure"
    assert_problem(during["hold"], 410)
    with db.session_factory_for(app)() as s:
        case = s.get(Case, uuid.UUID(case_id))
        holds = s.scalars(select(LegalHold).where(LegalHold.case_id == case.id)).all()
        assert case.erased and holds == []
