"""Writes racing an erasure approval, which holds the case row FOR UPDATE: a note or consent
that passed its checks before the erasure and waited on the row to seal its ciphertext found
no key afterwards, an AssertionError and a 500 (found by a reviewer's race probes). It is a
410, as for a case already erased, and nothing of it is stored; the refusal is on the
record like one at the request's start (a `deny` row, reason `case erased`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import assert_problem
from rights_support import World as RightsWorld
from rights_support import new_token

from referral_api.rights import service as rights_service

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL",
)

API = "/api/v1"


def _erase_while(
    world: RightsWorld, case_id: str, monkeypatch: pytest.MonkeyPatch, racer: Callable[[], Any]
) -> tuple[Any, dict[str, Any]]:
    request_id = world.request_erasure(case_id)
    during: dict[str, Any] = {}
    real = rights_service.active_hold

    def run() -> None:
        try:
            during["response"] = racer()
        except BaseException as error:  # noqa: BLE001
            during["error"] = error

    def hold_check_while_a_write_comes_in(session: Any, cid: Any) -> Any:
        if "thread" not in during:
            during["thread"] = threading.Thread(target=run, daemon=True)
            during["thread"].start()
            during["thread"].join(timeout=1.5)
            during["waited"] = during["thread"].is_alive()
        return real(session, cid)

    monkeypatch.setattr(rights_service, "active_hold", hold_check_while_a_write_comes_in)
    before = world.sql("SELECT COALESCE(MAX(id), 0) FROM audit_events")[0][0]
    approved = world.approve(request_id, by="dpo")
    during["thread"].join(timeout=30)
    assert "error" not in during, during.get("error")
    during["denials"] = world.sql(
        "SELECT action, resource_type, resource_id, actor_id FROM audit_events"
        " WHERE id > :before AND case_id = :c AND decision = 'deny' AND reason = 'case erased'",
        before=before,
        c=case_id,
    )
    return approved, during


def test_a_note_racing_an_erasure_is_a_410(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = RightsWorld(app, factory, client)
    case_id = world.case(new_token("erase-note"))

    def note() -> Any:
        return app.test_client().post(
            f"{API}/cases/{case_id}/notes",
            json={"category": "needs", "text": "written while the case is erased"},
            headers=world.h["worker"],
        )

    approved, during = _erase_while(world, case_id, monkeypatch, note)
    assert approved.status_code == 200, approved.get_data(as_text=True)
    assert during["waited"], "the note did not wait for the erasure"
    response = during["response"]
    # Nothing half-written (the failed request was rolled back) ...
    assert world.sql("SELECT COUNT(*) FROM case_notes WHERE case_id = :c", c=case_id) == [(0,)]
    # ... and the answer is the case's: gone, and audited.
    assert assert_problem(response, 410)["type"] == "/problems/erased"
    assert during["denials"] == [("case:note", "case", case_id, world.ids["worker"])]


def test_a_consent_racing_an_erasure_is_a_410(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rights_support import consent_body

    world = RightsWorld(app, factory, client)
    case_id = world.case(new_token("erase-consent"))

    def consent() -> Any:
        return app.test_client().post(
            f"{API}/cases/{case_id}/consents",
            json=consent_body(world.receiver_org, ["identity"]),
            headers=world.h["worker"],
        )

    approved, during = _erase_while(world, case_id, monkeypatch, consent)
    assert approved.status_code == 200, approved.get_data(as_text=True)
    assert during["waited"], "the consent did not wait for the erasure"
    response = during["response"]
    assert world.sql("SELECT COUNT(*) FROM consent_records WHERE case_id = :c", c=case_id) == [(0,)]
    assert assert_problem(response, 410)["type"] == "/problems/erased"
    assert during["denials"] == [("consent:record", "case", case_id, world.ids["worker"])]


def test_a_withdrawal_racing_an_erasure_waits_for_it(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawal locks its consent and then the case row (writing its event); an erasure
    locked the case row and then updated the case's consents: a deadlock, and PostgreSQL
    killed one of them (503: the erasure not done, or the withdrawal refused). The erasure
    now takes the consents first: the withdrawal waits, and then finds the case erased."""
    world = RightsWorld(app, factory, client)
    case_id = world.case(new_token("erase-withdraw"))
    consent = world.consent(case_id, world.receiver_org, ["identity"])

    def withdraw() -> Any:
        return app.test_client().post(
            f"{API}/consents/{consent['id']}/withdraw",
            json={"reason": "changed my mind"},
            headers=world.h["worker"],
        )

    approved, during = _erase_while(world, case_id, monkeypatch, withdraw)
    assert approved.status_code == 200, approved.get_data(as_text=True)
    assert during["waited"], "the withdrawal did not wait for the erasure"
    assert assert_problem(during["response"], 410)["type"] == "/problems/erased"
    events = world.sql(
        "SELECT e.event_type FROM consent_events e JOIN consent_records c"
        " ON c.id = e.consent_id WHERE c.case_id = :c ORDER BY e.occurred_at",
        c=case_id,
    )
    assert [row[0] for row in events] == ["given"]
