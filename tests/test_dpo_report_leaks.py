"""DPO reports — existence oracles through filters, audit rows a foreign officer can put
on another organisation's case, CSV formula cells, and the case access log's content."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from oracle_support import audit_rows, diff, fresh, last_audit_id, observed
from referral_support import API, World, consent_body, move, ok, provision
from test_audit import ACCESS_LOG_KEYS

from referral_api.access.roles import Role


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    w = World(factory, client)
    for name, role, org in (
        ("outsider_dpo", Role.DPO, w.outsider_org),
        ("receiver_dpo", Role.DPO, w.receiver_org),
    ):
        w.h[name] = factory.headers(factory.user(role, org))
    return w


REPORTS = (
    "consent-summary",
    "consents-expiring",
    "processing-without-basis",
    "overrides",
    "disclosures",
    "erasures",
    "sign-in-failures",
    "quality",
)


def test_case_id_filters_answer_a_foreign_case_like_a_made_up_one(
    client: Any, world: World
) -> None:
    world.refer()
    failures = []
    for who in ("outsider_dpo", "receiver_dpo"):
        for fmt in ({}, {"format": "csv"}):
            for report in ("disclosures", "access-log"):
                real = client.get(
                    f"{API}/dpo/reports/{report}",
                    query_string={"case_id": world.case_id, **fmt},
                    headers=world.h[who],
                )
                fake = client.get(
                    f"{API}/dpo/reports/{report}",
                    query_string={"case_id": fresh(), **fmt},
                    headers=world.h[who],
                )
                if observed(real) != observed(fake):
                    failures.append(f"{who} {report} {fmt}{diff(real, fake)}")
    assert not failures, "\n".join(failures)


def test_a_foreign_dpo_cannot_put_an_allowed_access_on_another_orgs_case_log(
    app: Any, client: Any, world: World
) -> None:
    """The outsider's DPO asks its own disclosures report narrowed to the sender's case id:
    nothing of that case is read (the rows are scoped to the outsider), yet the report's
    audit row is written with that case id — an *allowed* access by a foreign organisation
    on the sender's case, shown to the sender in the case's access log."""
    start = last_audit_id(app)
    ok(
        client.get(
            f"{API}/dpo/reports/disclosures",
            query_string={"case_id": world.case_id},
            headers=world.h["outsider_dpo"],
        )
    )
    new = audit_rows(app, start)
    on_case = [
        r
        for r in new
        if r["case_id"] is not None
        and str(r["case_id"]).replace("-", "") == world.case_id.replace("-", "")
    ]
    log = ok(client.get(f"{API}/cases/{world.case_id}/access-log", headers=world.h["sender"]))
    foreign_allowed = [
        e for e in log if e["actor_org_id"] == str(world.outsider_org) and e["decision"] == "allow"
    ]
    assert not foreign_allowed, f"sender's access log shows: {foreign_allowed}"
    assert not on_case, f"audit rows on the sender's case from a foreign DPO: {on_case}"


FORMULA = re.compile(r"^[=+\-@\t\r]")


def _csv_cells(response: Any) -> list[str]:
    reader = csv.reader(io.StringIO(response.get_data(as_text=True)))
    return [cell for row in reader for cell in row]


@pytest.mark.parametrize(
    "value",
    ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "-inf", "+nan", "-1_0", "\t=1", "-Infinity"],
)
def test_no_csv_cell_starts_like_a_formula(client: Any, world: World, value: str) -> None:
    """notice_version is free text (1-32 characters) and reaches the quality report."""
    body = consent_body(provision("legal_assistance", ["identity"], org_id=world.receiver_org))
    body["notice_version"] = value
    ok(
        client.post(f"{API}/cases/{world.case_id}/consents", json=body, headers=world.h["sender"]),
        201,
    )
    response = client.get(
        f"{API}/dpo/reports/quality", query_string={"format": "csv"}, headers=world.h["sender_dpo"]
    )
    assert response.status_code == 200
    cells = _csv_cells(response)
    assert any(value.lstrip("\t") in cell for cell in cells), cells
    bad = [c for c in cells if FORMULA.match(c) and not re.fullmatch(r"-?\d+(\.\d+)?", c)]
    assert not bad, bad


def test_acting_officer_cells_in_the_access_log_csv(
    app: Any, client: Any, factory: Any, world: World
) -> None:
    client_id, secret = factory.client_credentials(Role.CASEWORKER, world.sender_org)
    token = ok(
        client.post(
            f"{API}/auth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    )["access_token"]
    bad_values = ["-nan", "@a", "-1-1", "-inf"]
    for officer in bad_values:
        client.get(
            f"{API}/cases/{world.case_id}",
            headers={"Authorization": f"Bearer {token}", "X-Acting-Officer": officer},
        )
    response = client.get(
        f"{API}/dpo/reports/access-log",
        query_string={"case_id": world.case_id, "format": "csv"},
        headers=world.h["sender_dpo"],
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    cells = _csv_cells(response)
    bad = [c for c in cells if FORMULA.match(c) and not re.fullmatch(r"-?\d+(\.\d+)?", c)]
    assert not bad, bad


def test_case_access_log_shows_only_who_org_when_action_of_others(
    client: Any, world: World
) -> None:
    rid = world.refer()["id"]
    ok(move(client, world.h["receiver"], rid, "accepted"))
    ok(client.get(f"{API}/referrals/{rid}/packet", headers=world.h["receiver"]))
    ok(client.post(f"{API}/referrals/{rid}/case", headers=world.h["receiver"]), 201)
    client.get(f"{API}/cases/{world.case_id}", headers=world.h["outsider"])
    log = ok(client.get(f"{API}/cases/{world.case_id}/access-log", headers=world.h["sender"]))
    assert set().union(*(e.keys() for e in log)) == ACCESS_LOG_KEYS
    foreign = [e for e in log if e["actor_org_id"] != str(world.sender_org)]
    assert foreign
    receiver_case = ok(client.get(f"{API}/referrals/{rid}", headers=world.h["receiver"]))[
        "receiver_case_id"
    ]
    assert receiver_case
    raw = str(log)
    assert receiver_case not in raw and receiver_case.replace("-", "") not in raw


def test_case_access_log_cursor_does_not_count_other_orgs_activity(
    client: Any, world: World
) -> None:
    """The access log's cursor seals the platform-wide audit row id it stands for: two
    plain ids a caller got a while apart would tell it how many audited actions every other
    organisation performed in between. A cursor is not a number, differs every time it is
    issued, and one altered or made up is a 422."""
    own = world.case_id
    for _ in range(3):
        ok(client.get(f"{API}/cases/{own}", headers=world.h["sender"]))

    def cursor() -> str:
        response = client.get(
            f"{API}/cases/{own}/access-log", query_string={"limit": 1}, headers=world.h["sender"]
        )
        return str(response.headers["Link"].split("cursor=")[1].split("&")[0].split(">")[0])

    first, second = cursor(), cursor()
    assert not first.isdigit() and first != second
    page = client.get(
        f"{API}/cases/{own}/access-log",
        query_string={"limit": 1, "cursor": first},
        headers=world.h["sender"],
    )
    assert len(ok(page)) == 1
    altered = first[:-2] + ("AA" if first[-2:] != "AA" else "BB")
    for bad in (altered, "12", "x" * 40):
        refused = client.get(
            f"{API}/cases/{own}/access-log",
            query_string={"cursor": bad},
            headers=world.h["sender"],
        )
        assert refused.status_code == 422, bad
