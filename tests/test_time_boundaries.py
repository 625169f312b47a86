"""Time handling at its boundaries (a reviewer's probes; each failed before): partial
dates that do not exist, a birth today east of UTC, retention periods too long for date
arithmetic, and an expiry and a renewal stamped at one instant."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import consent_if_match
from referral_support import API, World, canary_case, ok

from referral_api.access.roles import OrgType, Role
from referral_api.consent import service as consent_service


def test_an_incident_date_that_does_not_exist_is_refused(client: Any, factory: Any) -> None:
    """`incident_date` (YYYY, YYYY-MM or YYYY-MM-DD) was checked by a regex alone: any day
    01-31 of any month, and year 0000, were stored (date_of_birth refuses them)."""
    org = factory.org(OrgType.NGO)
    h = factory.headers(factory.user(Role.CASEWORKER, org))
    accepted = []
    for bad in ("1990-02-30", "2026-02-29", "2026-04-31", "0000", "0000-01"):
        body = canary_case()
        body["incident"]["incident_date"] = bad
        if client.post(f"{API}/cases", json=body, headers=h).status_code != 422:
            accepted.append(bad)
    assert accepted == []
    for good in ("2024-02-29", "1990-02", "1990", "0001-01-01"):
        body = canary_case()
        body["incident"]["incident_date"] = good
        ok(client.post(f"{API}/cases", json=body, headers=h), 201)


def test_a_birth_today_east_of_utc_is_not_in_the_future(client: Any, factory: Any) -> None:
    """`_not_future` compared with the host's local `date.today()`: a child born today in
    UTC+12..+14 (NZ, Samoa, Kiribati) was refused as 'in the future' from 10:00-12:00 UTC
    on (this fails on that code only while the UTC+14 date is ahead of the host's). The day
    after is in the future everywhere."""
    org = factory.org(OrgType.NGO)
    h = factory.headers(factory.user(Role.CASEWORKER, org))
    latest = datetime.now(timezone(timedelta(hours=14))).date().isoformat()
    body = {"case_type": "thb", "identity": {"date_of_birth": latest}}
    response = client.post(f"{API}/cases", json=body, headers=h)
    assert response.status_code == 201, response.get_data(as_text=True)
    after = (date.fromisoformat(latest) + timedelta(days=1)).isoformat()
    body = {"case_type": "thb", "identity": {"date_of_birth": after}}
    assert client.post(f"{API}/cases", json=body, headers=h).status_code == 422


def test_a_retention_period_longer_than_a_century_is_refused_at_start(
    app: Any, client: Any, factory: Any, runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Keep for ever" typed as 999999 days overflowed `at - timedelta(days=N)`: the
    retention-due report answered 500 and `retention run --apply` died before its purges.
    A century is the most a period may be; at a century both work."""
    from referral_api.exceptions import ConfigurationError
    from referral_api.settings import load_settings

    overrides = {"ENV_NAME": "testing", "JWT_SECRET_KEY": "x" * 64}
    monkeypatch.setenv("REFERRAL_API_RETENTION_DAYS_THB", "999999")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(app.instance_path, overrides)
    assert refused.value.detail == "REFERRAL_API_RETENTION_DAYS_THB must be at most 36600"
    monkeypatch.setenv("REFERRAL_API_RETENTION_DAYS_THB", "36600")
    app.config["RETENTION_POLICY"] = load_settings(app.instance_path, overrides)["RETENTION_POLICY"]
    org = factory.org(OrgType.NGO)
    dpo = factory.headers(factory.user(Role.DPO, org))
    ok(client.get(f"{API}/dpo/reports/retention-due", headers=dpo))
    result = runner.invoke(args=["retention", "run", "--apply"])
    assert result.exit_code == 0, repr(result.exception)


def test_a_renewal_stamped_at_the_instant_of_an_expiry_revives_the_consent(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`consent expire` records `expired` at T; a renewal committed right after is stamped
    T too (same microsecond: another host, or a coarse clock). The replay (decision.
    derive_state) broke the tie by the events' random UUIDs, so half of such renewals were
    undone: the live decision and the consent's state said expired, while the DPO reports
    (migration 0010: 'a renewal beats an expiry') said active, in force. A renewal can only
    follow an expiry at one instant (it needs valid_until > now), so active is right."""
    from referral_api.access.actor import Actor
    from referral_api.extensions import db

    world = World(factory, client, consent=False)
    until = datetime.now(UTC) + timedelta(minutes=5)
    consent = world.consent_to_receiver(valid_until=until.isoformat())
    tie = until + timedelta(minutes=1)
    # `consent expire` at `tie` (its event given the largest id, as uuid4 does half the time)
    with db.session_factory_for(app)() as s:
        record = s.get(consent_service.ConsentRecord, uuid.UUID(consent["id"]))
        assert record is not None
        event = consent_service._add_event(
            s, Actor.system(), record, consent_service.EventType.EXPIRED, tie
        )
        event.id = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
        s.commit()
    # then the renewal, stamped at the same instant
    monkeypatch.setattr(consent_service, "now", lambda: tie)
    renewed_to = tie + timedelta(days=30)
    ok(
        client.post(
            f"{API}/consents/{consent['id']}/renew",
            json={"valid_until": renewed_to.isoformat()},
            headers=consent_if_match(client, consent["id"], world.h["sender"]),
        )
    )
    later = tie + timedelta(hours=1)
    monkeypatch.setattr(consent_service, "now", lambda: later)
    from referral_api.dpo import service as dpo_service

    monkeypatch.setattr(dpo_service, "now", lambda: later)
    state = ok(client.get(f"{API}/consents/{consent['id']}", headers=world.h["sender"]))["state"]
    check = ok(
        client.post(
            f"{API}/cases/{world.case_id}/consent-check",
            json={
                "recipient_org_id": str(world.receiver_org),
                "purpose": world.purpose,
                "categories": world.shared,
            },
            headers=world.h["sender"],
        )
    )
    summary = ok(client.get(f"{API}/dpo/reports/consent-summary", headers=world.h["sender_dpo"]))
    got = (state, check["permit"], [(r["state"], r["provisions_in_force"]) for r in summary])
    assert got == ("active", True, [("active", 1)])
