"""Retention leaves a restricted case alone (found by review). Art. 18(2): a case whose
processing is restricted is stored, not processed — often because the person needs it kept
for a legal claim after the organisation's own retention period has ended. The schedule's
erasure is the organisation's processing, not the person's request (an erasure the person
asks for is still carried out: docs/data-protection.md)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rights_support import API, World, new_token, ok
from sqlalchemy import select

from referral_api.access.actor import Actor
from referral_api.extensions import db
from referral_api.rights.models import ErasureTombstone
from referral_api.rights.service import erase_if_still_due, retention_due


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "RETENTION_POLICY": {"thb": {"closed": 0}, "gbv": {"closed": 0}}}


@pytest.fixture
def world(app: Any, factory: Any, client: Any) -> World:
    return World(app, factory, client)


def _restrict(client: Any, world: World, case_id: str, on: bool = True) -> None:
    ok(
        client.post(
            f"{API}/cases/{case_id}/restriction", json={"restricted": on}, headers=world.h["sup"]
        )
    )


def _tombstoned(app: Any) -> set[str]:
    with db.session_factory_for(app)() as s:
        return {str(c) for c in s.scalars(select(ErasureTombstone.case_id))}


def test_retention_lists_and_skips_restricted_cases(
    app: Any, client: Any, runner: Any, world: World
) -> None:
    restricted, held, both, due = (world.case(new_token(n)) for n in ("rr", "rh", "rb", "rd"))
    for case_id in (restricted, held, both, due):
        world.close(case_id)
    for case_id in (restricted, both):
        _restrict(client, world, case_id)
    for case_id in (held, both):
        ok(world.hold(case_id, True, reason="court order"))

    listed = runner.invoke(args=["retention", "run"])
    assert f"{restricted} " in listed.output and "(restricted: skipped)" in listed.output
    assert "(legal hold, restricted: skipped)" in listed.output
    # A case both held and restricted is counted once, under its hold.
    assert "1 cases due for erasure, 2 on legal hold, 1 restricted" in listed.output

    report = ok(client.get(f"{API}/dpo/reports/retention-due", headers=world.h["dpo"]))
    flags = {row["case_id"]: (row["legal_hold"], row["restricted"]) for row in report}
    assert {c: flags[c] for c in (restricted, held, both, due)} == {
        restricted: (False, True),
        held: (True, False),
        both: (True, True),
        due: (False, False),
    }

    applied = runner.invoke(args=["retention", "run", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert "1 cases erased, 3 skipped under legal hold or restriction" in applied.output
    assert _tombstoned(app) == {due}
    assert client.get(f"{API}/cases/{restricted}", headers=world.h["sup"]).status_code == 403

    # Lifted, the restriction no longer keeps it: the next run erases it.
    _restrict(client, world, restricted, on=False)
    runner.invoke(args=["retention", "run", "--apply"])
    assert _tombstoned(app) == {due, restricted}


def test_a_case_restricted_after_the_listing_is_left_alone(
    app: Any, client: Any, world: World
) -> None:
    case_id = world.case(new_token("late"))
    world.close(case_id)
    with db.session_factory_for(app)() as s:
        [listed] = [
            r for r in retention_due(s, app.config["RETENTION_POLICY"]) if str(r.case_id) == case_id
        ]
    assert listed.restricted is False
    _restrict(client, world, case_id)  # between the listing and the erasure
    with db.session_factory_for(app)() as s:
        assert erase_if_still_due(s, Actor.system(), listed) is None
        s.commit()
    assert _tombstoned(app) == set()
    assert uuid.UUID(case_id)  # the case is still there, restricted
    assert client.get(f"{API}/cases/{case_id}", headers=world.h["sup"]).status_code == 403
