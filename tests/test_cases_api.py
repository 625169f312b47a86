"""Case endpoints from the outside: create, read, update (If-Match), status machine,
assignment, notes, access log and the list (DESIGN.md §5, §10; issue 3).

Every test asserts what a user would notice (status, body, headers) and what the database
holds afterwards (rows, ciphertext, history), read through short-lived connections: on
SQLite every transaction takes the write lock, so nothing here keeps one open.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import assert_problem
from sqlalchemy import select, text

from referral_api.access.roles import OrgType, Role
from referral_api.cases.models import CaseStatusChange

API = "/api/v1"
# Prefix, then two groups of four from an alphabet without look-alikes (no I, O, 0, 1).
CODE = re.compile(r"^(THB|GBV)-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}$")

FULL_CASE: dict[str, Any] = {
    "case_type": "thb",
    "risk_level": "high",
    "nrm_stage": "identified",
    "identity": {
        "given_name": "Olena",
        "family_name": "Kovalenko",
        "aliases": ["Lena K"],
        "date_of_birth": "1999-04-02",
        "sex": "female",
        "nationality": "UA",
        "languages": ["uk", "ru"],
        "documents": [{"type": "passport", "country": "UA", "number": "FA123456"}],
    },
    "contact": {
        "phone": "+380501234567",
        "email": "olena.k@example.net",
        "safe_contact_notes": "text only after 18h",
    },
    "location": {"address": "Shelter Sonyashnyk, vul. Tykha 7", "is_shelter": True},
    "incident": {
        "gbv_type": None,
        "exploitation_types": ["labour"],
        "means_of_control": ["debt_bondage", "document_confiscation"],
        "recruiter_relation": "acquaintance",
        "incident_date": "2026-09",
        "incident_place": "Farm near Poltava",
        "narrative": "Recruited for seasonal farm work, passport taken on arrival",
    },
    "health": {"notes": "Untreated hand injury"},
    "psychosocial": {"notes": "Sleep problems, weekly counselling"},
    "legal": {
        "status": "Presumed victim",
        "proceedings": "Complaint filed 2026-10",
        "lawyer": "Iryna Shevchuk",
    },
    "immigration": {"residence_status": "Citizen", "reflection_period_until": "2027-01-15"},
    "needs": {"assessment": "Shelter, medical care", "plan": "Refer to legal aid"},
}
CATEGORIES = (
    "identity",
    "contact",
    "location",
    "incident",
    "health",
    "psychosocial",
    "legal",
    "immigration",
    "needs",
)
METADATA = {
    "id",
    "case_code",
    "case_type",
    "status",
    "status_reason",
    "risk_level",
    "org_id",
    "assignee_id",
    "nrm_stage",
    "created_at",
    "updated_at",
    "closed_at",
    "restricted",
}


# ---- helpers ------------------------------------------------------------------------------


def rows(app: Any, sql: Any, **params: Any) -> list[tuple[Any, ...]]:
    """Raw SQL (or a Core select) through a connection closed, with its transaction, at once."""
    from referral_api.extensions import db

    statement = text(sql) if isinstance(sql, str) else sql
    with db.engine_for(app).connect() as connection:
        return [tuple(row) for row in connection.execute(statement, params)]


def count(app: Any, table: str) -> int:
    return rows(app, f"SELECT COUNT(*) FROM {table}")[0][0]


def create(client: Any, headers: dict[str, str], payload: dict[str, Any] | None = None) -> Any:
    response = client.post(f"{API}/cases", json=payload or FULL_CASE, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response


def case_url(case_id: str, suffix: str = "") -> str:
    return f"{API}/cases/{case_id}{suffix}"


def with_etag(headers: dict[str, str], etag: str) -> dict[str, str]:
    return {**headers, "If-Match": etag}


def next_link(response: Any) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    assert link.endswith('rel="next"'), link
    return link[1 : link.index(">")]


def assert_each(items: dict[str, Any], check: Callable[[Any], None]) -> None:
    """Run `check` on every item and report every failing one together (one app per test
    instead of one per variant keeps the suite fast)."""
    failures = []
    for label, item in items.items():
        try:
            check(item)
        except AssertionError as error:
            failures.append(f"{label}: {error}")
    assert not failures, "\n".join(failures)


class Team:
    """One NGO with a caseworker and a supervisor (plus their headers)."""

    def __init__(self, factory: Any, org_type: OrgType = OrgType.NGO) -> None:
        self.org_id = factory.org(org_type)
        self.caseworker = factory.user(Role.CASEWORKER, self.org_id)
        self.supervisor = factory.user(Role.SUPERVISOR, self.org_id)
        self.cw = factory.headers(self.caseworker)
        self.sup = factory.headers(self.supervisor)


@pytest.fixture
def team(factory: Any) -> Team:
    return Team(factory)


# ---- create -------------------------------------------------------------------------------


def test_create_returns_201_with_etag_code_and_the_nested_category_shape(
    app: Any, client: Any, team: Team
) -> None:
    response = create(client, team.cw)
    body = response.get_json()

    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["ETag"])  # strong, opaque
    assert response.headers["Cache-Control"] == "no-store"
    assert CODE.match(body["case_code"]) and body["case_code"].startswith("THB-")
    assert set(body) == METADATA | set(CATEGORIES)
    assert body["org_id"] == str(team.org_id)
    assert body["status"] == "open" and body["status_reason"] is None
    assert body["closed_at"] is None and body["assignee_id"] is None
    assert body["risk_level"] == "high" and body["nrm_stage"] == "identified"
    for category in CATEGORIES:
        assert body[category] == FULL_CASE[category], category
    assert datetime.fromisoformat(body["created_at"]).utcoffset() == timedelta(0)

    stored = rows(app, "SELECT org_id, status, case_code FROM cases")
    assert len(stored) == 1 and stored[0][2] == body["case_code"]
    history = rows(app, "SELECT from_status, to_status FROM case_status_changes")
    assert [tuple(r) for r in history] == [(None, "open")]


def test_defaults_and_gbv_prefix(client: Any, team: Team) -> None:
    body = create(client, team.cw, {"case_type": "gbv"}).get_json()
    assert body["case_code"].startswith("GBV-") and CODE.match(body["case_code"])
    assert body["risk_level"] == "medium" and body["nrm_stage"] == "identified"
    assert body["identity"]["aliases"] == [] and body["identity"]["given_name"] is None
    assert body["incident"]["exploitation_types"] == []


def test_personal_fields_are_ciphertext_in_the_database(app: Any, client: Any, team: Team) -> None:
    create(client, team.cw)
    # One ciphertext per data category; the per-field columns of formats 1-3 stay empty.
    (row,) = rows(app, "SELECT identity, contact, location, incident, health FROM cases")
    for blob, plain in zip(
        row,
        ("Olena", "+380501234567", "Sonyashnyk", "passport taken", "hand injury"),
        strict=True,
    ):
        assert isinstance(blob, bytes | memoryview)
        assert bytes(blob)[0] == 4  # ciphertext format 4
        assert plain.encode() not in bytes(blob)
    (legacy,) = rows(app, "SELECT given_name, phone, address, narrative, health_notes FROM cases")
    assert legacy == (None, None, None, None, None)


def test_case_codes_are_random_not_sequential(client: Any, team: Team) -> None:
    from referral_api.cases.service import new_case_code

    codes = [
        create(client, team.cw, {"case_type": "thb"}).get_json()["case_code"] for _ in range(4)
    ]
    assert len(set(codes)) == 4
    for previous, current in itertools.pairwise(codes):
        # A counter would change the last character or two; random codes differ throughout.
        differing = sum(a != b for a, b in zip(previous[4:], current[4:], strict=True))
        assert differing >= 3, (previous, current)

    drawn = [new_case_code("thb") for _ in range(3000)]
    assert len(set(drawn)) == len(drawn)
    assert drawn != sorted(drawn)
    bodies = [code.replace("-", "")[3:] for code in drawn]
    for position in range(8):
        # Every position ranges over (nearly) the whole 32-character alphabet.
        assert len({b[position] for b in bodies}) >= 30, position


BAD_CREATE = {
    "unknown top-level field": ({"favourite_colour": "red"}, ["favourite_colour"]),
    # `$` matches before a final line break: the patterns are checked on the whole value.
    "nationality with a line break": ({"identity": {"nationality": "UA\n"}}, ["identity"]),
    "language with a line break": ({"identity": {"languages": ["uk\n"]}}, ["identity"]),
    "language tag past 35": ({"identity": {"languages": ["uk" + "-abcdefgh" * 4]}}, ["identity"]),
    "partial date with a line break": ({"incident": {"incident_date": "2024-05\n"}}, ["incident"]),
    "unknown identity field": (
        {"identity": {"given_name": "A", "middle_name": "B"}},
        ["identity", "middle_name"],
    ),
    "unknown document field": (
        {"identity": {"documents": [{"type": "passport", "number": "X1", "colour": "red"}]}},
        ["identity", "documents"],
    ),
    "unknown health field": ({"health": {"diagnosis": "flu"}}, ["health", "diagnosis"]),
    "unknown category": ({"finances": {"debt": 1000}}, ["finances"]),
    "category not an object": ({"identity": "Olena"}, ["identity"]),
    "missing case_type": ({"case_type": None}, ["case_type"]),
    "bad case_type": ({"case_type": "trafficking"}, ["case_type"]),
    "bad risk_level": ({"risk_level": "extreme"}, ["risk_level"]),
    "bad nrm_stage": ({"nrm_stage": "done"}, ["nrm_stage"]),
    "bad sex": ({"identity": {"sex": "f"}}, ["identity", "sex"]),
    "bad gbv_type": ({"incident": {"gbv_type": "harassment"}}, ["incident", "gbv_type"]),
    "bad exploitation type": (
        {"incident": {"exploitation_types": ["slavery"]}},
        ["incident", "exploitation_types"],
    ),
    "bad means of control": (
        {"incident": {"means_of_control": ["magic"]}},
        ["incident", "means_of_control"],
    ),
    "bad recruiter relation": (
        {"incident": {"recruiter_relation": "neighbour"}},
        ["incident", "recruiter_relation"],
    ),
    "bad document type": (
        {"identity": {"documents": [{"type": "library_card", "number": "1"}]}},
        ["identity", "documents"],
    ),
    "lower-case nationality": ({"identity": {"nationality": "ua"}}, ["identity", "nationality"]),
    "alpha-3 nationality": ({"identity": {"nationality": "UKR"}}, ["identity", "nationality"]),
    "document country name": (
        {"identity": {"documents": [{"type": "passport", "country": "Ukraine", "number": "1"}]}},
        ["identity", "documents"],
    ),
    "language name": ({"identity": {"languages": ["Ukrainian"]}}, ["identity", "languages"]),
    "future date of birth": (
        {"identity": {"date_of_birth": (date.today() + timedelta(days=2)).isoformat()}},
        ["identity", "date_of_birth"],
    ),
    "impossible date of birth": (
        {"identity": {"date_of_birth": "1999-02-30"}},
        ["identity", "date_of_birth"],
    ),
    "incident month 13": (
        {"incident": {"incident_date": "2026-13"}},
        ["incident", "incident_date"],
    ),
    "incident day 32": (
        {"incident": {"incident_date": "2026-01-32"}},
        ["incident", "incident_date"],
    ),
    "incident two-digit year": (
        {"incident": {"incident_date": "26-01"}},
        ["incident", "incident_date"],
    ),
    "bad email": ({"contact": {"email": "not-an-address"}}, ["contact", "email"]),
    "aliases not a list": ({"identity": {"aliases": "Lena"}}, ["identity", "aliases"]),
    "is_shelter not boolean": ({"location": {"is_shelter": "maybe"}}, ["location", "is_shelter"]),
    "bad assignee id": ({"assignee_id": "someone"}, ["assignee_id"]),
    # Read-only fields cannot be set (no mass assignment).
    "id": ({"id": str(uuid.uuid4())}, ["id"]),
    "case_code": ({"case_code": "THB-AAAA-AAAA"}, ["case_code"]),
    "org_id": ({"org_id": str(uuid.uuid4())}, ["org_id"]),
    "status": ({"status": "closed"}, ["status"]),
    "status_reason": ({"status_reason": "duplicate"}, ["status_reason"]),
    "version": ({"version": 7}, ["version"]),
    "created_at": ({"created_at": "2020-01-01T00:00:00+00:00"}, ["created_at"]),
    "closed_at": ({"closed_at": "2020-01-01T00:00:00+00:00"}, ["closed_at"]),
    "restricted": ({"restricted": True}, ["restricted"]),
    "erased": ({"erased": True}, ["erased"]),
    "key_version": ({"key_version": 2}, ["key_version"]),
    "created_by": ({"created_by": str(uuid.uuid4())}, ["created_by"]),
}


def test_invalid_create_is_422_naming_the_field_and_stores_nothing(
    app: Any, client: Any, team: Team
) -> None:
    def check(change: tuple[dict[str, Any], list[str]]) -> None:
        patch, path = change
        payload = copy.deepcopy(FULL_CASE)
        for key, value in patch.items():
            if value is None:
                payload.pop(key)
            elif isinstance(value, dict) and isinstance(payload.get(key), dict):
                payload[key] = {**payload[key], **value}
            else:
                payload[key] = value

        body = assert_problem(client.post(f"{API}/cases", json=payload, headers=team.cw), 422)

        node = body["errors"]["json"]
        for key in path:
            assert key in node, (path, body["errors"])
            node = node[key]
        assert stored_counts(app) == (0, 0, 0, 0)
        # Values sent are never echoed back in the problem (they may be personal data).
        echoed = json.dumps(body, ensure_ascii=False)
        for value in ("Olena", "Kovalenko", *_strings(patch)):
            assert value not in echoed, value

    assert_each(BAD_CREATE, check)


def stored_counts(app: Any) -> tuple[int, ...]:
    return rows(
        app,
        "SELECT (SELECT COUNT(*) FROM cases), (SELECT COUNT(*) FROM case_status_changes), "
        "(SELECT COUNT(*) FROM case_search_index), (SELECT COUNT(*) FROM case_notes)",
    )[0]


def _strings(node: Any) -> list[str]:
    """String values (not keys) of at least five characters inside a request fragment."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) and len(node) >= 5 else []


def test_assignee_at_creation_must_be_a_case_handler_of_the_org(
    app: Any, client: Any, factory: Any, team: Team
) -> None:
    stranger = factory.user(Role.CASEWORKER)  # another organisation
    body = assert_problem(
        client.post(
            f"{API}/cases",
            json={"case_type": "gbv", "assignee_id": str(stranger.id)},
            headers=team.cw,
        ),
        422,
    )
    assert "assignee_id" in body["errors"]["json"]
    assert count(app, "cases") == 0

    created = create(
        client, team.cw, {"case_type": "gbv", "assignee_id": str(team.caseworker.id)}
    ).get_json()
    assert created["assignee_id"] == str(team.caseworker.id)


# ---- read ---------------------------------------------------------------------------------


def test_get_returns_the_case_with_the_same_etag_and_no_store(client: Any, team: Team) -> None:
    created = create(client, team.cw)
    response = client.get(case_url(created.get_json()["id"]), headers=team.sup)

    assert response.status_code == 200
    assert response.headers["ETag"] == created.headers["ETag"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == created.get_json()


def test_get_unknown_case_is_404_problem(client: Any, team: Team) -> None:
    assert_problem(client.get(case_url(str(uuid.uuid4())), headers=team.cw), 404)


# ---- update -------------------------------------------------------------------------------


def test_patch_requires_if_match(app: Any, client: Any, team: Team) -> None:
    created = create(client, team.cw).get_json()
    url = case_url(created["id"])
    change = {"risk_level": "critical"}

    assert_problem(client.patch(url, json=change, headers=team.cw), 428)
    # "*" would skip the lost-update check the header exists for.
    assert_problem(client.patch(url, json=change, headers=with_etag(team.cw, "*")), 412)
    assert_problem(client.patch(url, json=change, headers=with_etag(team.cw, '"nope"')), 412)
    assert rows(app, "SELECT risk_level, version FROM cases")[0] == ("high", 1)


def test_patch_with_current_etag_succeeds_and_a_stale_one_is_412(
    app: Any, client: Any, team: Team
) -> None:
    created = create(client, team.cw)
    url, first_etag = case_url(created.get_json()["id"]), created.headers["ETag"]

    updated = client.patch(
        url, json={"risk_level": "critical"}, headers=with_etag(team.cw, first_etag)
    )
    assert updated.status_code == 200, updated.get_json()
    assert updated.get_json()["risk_level"] == "critical"
    second_etag = updated.headers["ETag"]
    assert second_etag != first_etag
    assert client.get(url, headers=team.cw).headers["ETag"] == second_etag

    stale = client.patch(url, json={"risk_level": "low"}, headers=with_etag(team.cw, first_etag))
    assert_problem(stale, 412)
    assert rows(app, "SELECT risk_level, version FROM cases")[0] == ("critical", 2)


def test_a_patch_that_changes_nothing_keeps_the_version(app: Any, client: Any, team: Team) -> None:
    """Setting what is already there (a retry, `{}`, the same name) writes nothing: the
    version and ETag stay, so no other client's If-Match goes stale; the answer still shows
    the case, so it is still audited, as a change of nothing. A real change moves it."""
    created = create(client, team.cw)
    case_id, etag = created.get_json()["id"], created.headers["ETag"]
    body = created.get_json()
    for same in (
        {},
        {"risk_level": body["risk_level"]},
        {"identity": {"given_name": body["identity"]["given_name"]}},
        {"contact": body["contact"], "risk_level": body["risk_level"]},
    ):
        response = client.patch(case_url(case_id), json=same, headers=with_etag(team.cw, etag))
        assert response.status_code == 200, response.get_json()
        assert response.headers["ETag"] == etag, same
        assert response.get_json() == body
    assert rows(app, "SELECT version FROM cases")[0][0] == 1
    audited = rows(app, "SELECT details FROM audit_events WHERE action = 'case:update' ORDER BY id")
    assert [json.loads(d) for (d,) in audited] == [{"changed": []}] * 4

    changed = client.patch(
        case_url(case_id),
        json={"identity": {"given_name": "Olha"}, "contact": body["contact"]},
        headers=with_etag(team.cw, etag),
    )
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert rows(app, "SELECT version FROM cases")[0][0] == 2
    last = rows(app, "SELECT details FROM audit_events WHERE action = 'case:update' ORDER BY id")
    assert json.loads(last[-1][0]) == {"changed": ["identity"]}


@pytest.mark.parametrize(
    ("category", "payload"),
    [
        ("identity", {"case_type": "thb", "identity": {"given_name": "Olena"}}),
        ("incident", {"case_type": "thb"}),
    ],
)
def test_sending_back_the_empty_lists_a_read_shows_changes_nothing(
    app: Any, client: Any, team: Team, category: str, payload: dict[str, Any]
) -> None:
    """Found by review: a list never written (aliases, languages, documents, …) is stored
    null and shown as [], and a PATCH sending back the category as read compared null with
    [] and wrote it: a new version (every other client's If-Match stale) and an audit row
    naming a category written, for a change of nothing."""
    created = create(client, team.cw, payload)
    case_id, etag = created.get_json()["id"], created.headers["ETag"]
    shown = client.get(case_url(case_id), headers=team.cw).get_json()
    assert any(v == [] for v in shown[category].values())
    response = client.patch(
        case_url(case_id), json={category: shown[category]}, headers=with_etag(team.cw, etag)
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == shown
    assert response.headers["ETag"] == etag
    assert rows(app, "SELECT version FROM cases")[0][0] == 1
    audited = rows(app, "SELECT details FROM audit_events WHERE action = 'case:update'")
    assert [json.loads(d) for (d,) in audited] == [{"changed": []}]


def test_partial_category_update_keeps_the_other_fields(client: Any, team: Team) -> None:
    created = create(client, team.cw)
    url = case_url(created.get_json()["id"])

    response = client.patch(
        url,
        json={"identity": {"family_name": "Kovalenko-Bondar"}, "health": {"notes": None}},
        headers=with_etag(team.cw, created.headers["ETag"]),
    )
    assert response.status_code == 200, response.get_json()

    body = client.get(url, headers=team.cw).get_json()
    assert body["identity"] == {**FULL_CASE["identity"], "family_name": "Kovalenko-Bondar"}
    assert body["health"] == {"notes": None}
    for category in set(CATEGORIES) - {"identity", "health"}:
        assert body[category] == FULL_CASE[category], category
    assert body["risk_level"] == "high"


BAD_PATCHES: dict[str, dict[str, Any]] = {
    "status": {"status": "closed"},  # its own endpoint
    "assignee_id": {"assignee_id": None},  # its own endpoint
    "case_type": {"case_type": "gbv"},
    "case_code": {"case_code": "THB-AAAA-AAAA"},
    "org_id": {"org_id": str(uuid.uuid4())},
    "version": {"version": 9},
    "unknown identity field": {"identity": {"nickname": "L"}},
    "bad incident date": {"incident": {"incident_date": "yesterday"}},
    "bad risk level": {"risk_level": "extreme"},
    "null category": {"identity": None},
}


def test_patch_rejects_unknown_and_read_only_fields(app: Any, client: Any, team: Team) -> None:
    created = create(client, team.cw)

    def check(change: dict[str, Any]) -> None:
        response = client.patch(
            case_url(created.get_json()["id"]),
            json=change,
            headers=with_etag(team.cw, created.headers["ETag"]),
        )
        assert_problem(response, 422)
        assert rows(app, "SELECT case_type, status, version, assignee_id FROM cases") == [
            ("thb", "open", 1, None)
        ]

    assert_each(BAD_PATCHES, check)
    body = client.get(case_url(created.get_json()["id"]), headers=team.cw).get_json()
    assert body["identity"] == FULL_CASE["identity"]


def test_concurrent_patches_with_the_same_etag_exactly_one_wins(
    app: Any, client: Any, team: Team
) -> None:
    created = create(client, team.cw)
    url, etag = case_url(created.get_json()["id"]), created.headers["ETag"]
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def patch(name: str) -> None:
        own_client = app.test_client()
        barrier.wait()
        response = own_client.patch(
            url, json={"identity": {"given_name": name}}, headers=with_etag(team.cw, etag)
        )
        results[name] = (response.status_code, response.headers.get("ETag"))

    threads = [threading.Thread(target=patch, args=(name,)) for name in ("Alina", "Bohdana")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = sorted(status for status, _ in results.values())
    assert statuses == [200, 412], results
    winner = next(name for name, (status, _) in results.items() if status == 200)
    current = client.get(url, headers=team.cw)
    assert current.get_json()["identity"]["given_name"] == winner
    assert current.headers["ETag"] == results[winner][1]
    assert rows(app, "SELECT version FROM cases")[0][0] == 2
    updates = rows(app, "SELECT COUNT(*) FROM audit_events WHERE action = 'case:update'")
    assert updates[0][0] == 1


def test_notes_added_at_the_same_time_are_all_kept(app: Any, client: Any, team: Team) -> None:
    """A note is not a conditional request: four at once all get 201 and are stored (each
    used to bump the case's version with a check of the version read: 412 and a lost note
    for the losers on PostgreSQL). The case's ETag still moves on, once per note."""
    created = create(client, team.cw)
    case_id, etag = created.get_json()["id"], created.headers["ETag"]
    barrier = threading.Barrier(4)
    results: dict[int, int] = {}

    def add(number: int) -> None:
        own_client = app.test_client()
        barrier.wait()
        response = own_client.post(
            case_url(case_id, "/notes"),
            json={"category": "needs", "text": f"note {number}"},
            headers=team.cw,
        )
        results[number] = response.status_code

    threads = [threading.Thread(target=add, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == dict.fromkeys(range(4), 201)
    assert rows(app, "SELECT COUNT(*) FROM case_notes")[0][0] == 4
    assert rows(app, "SELECT version FROM cases")[0][0] == 5
    stale = client.patch(
        case_url(case_id), json={"risk_level": "low"}, headers=with_etag(team.cw, etag)
    )
    assert_problem(stale, 412)


def test_cursors_the_server_could_not_have_issued_are_refused(client: Any, team: Team) -> None:
    """A page cursor is read back from the client: an id past the column's range or an
    instant whose UTC time falls outside years 1-9999 is a 422, not a 500 when bound."""
    import base64

    case_id = create(client, team.cw).get_json()["id"]
    for cursor in ("9" * 30, "9" * 5000, "0", "-1", "١٢"):
        response = client.get(
            case_url(case_id, "/access-log"), query_string={"cursor": cursor}, headers=team.cw
        )
        assert assert_problem(response, 422)["errors"] == {
            "query": {"cursor": ["Not a valid cursor."]}
        }
    for instant in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        raw = json.dumps([instant, str(uuid.uuid4())]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        for path in ("/cases", "/referrals", "/notifications"):
            response = client.get(f"{API}{path}", query_string={"cursor": cursor}, headers=team.cw)
            assert_problem(response, 422)


def _forged(value: Any) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_forged_cursors_of_any_shape_are_422_on_every_list(client: Any, factory: Any) -> None:
    """A cursor is base64 of JSON the client can forge: JSON nested past the parser's
    recursion limit, or parts of other types than the server writes, are the same 422 as
    any other cursor it did not issue (they were 500s: RecursionError, AttributeError)."""
    import base64

    team = Team(factory)
    admin = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    dpo = factory.headers(factory.user(Role.DPO, team.org_id))
    deep = base64.urlsafe_b64encode(("[" * 5000 + "]" * 5000).encode()).decode()
    forged = [deep, _forged({"a": 1}), _forged("text"), _forged(["only one"])]
    forged += [_forged(["2020-01-01T00:00:00+00:00", bad]) for bad in (5, ["a"], {"a": 1}, True)]
    forged += [_forged([bad, str(uuid.uuid4())]) for bad in (5, None, ["2020-01-01"])]
    lists = [
        ("/cases", team.cw),
        ("/referrals", team.cw),
        ("/notifications", team.cw),
        ("/services", team.cw),
        ("/orgs", admin),
        ("/dpo/reports/disclosures", dpo),
        ("/dpo/reports/overrides", dpo),
        ("/dpo/reports/consents-expiring", dpo),
    ]
    for cursor in forged:
        for path, headers in lists:
            response = client.get(f"{API}{path}", query_string={"cursor": cursor}, headers=headers)
            assert response.status_code == 422, (path, cursor[:40], response.get_json())
            assert assert_problem(response, 422)["errors"] == {
                "query": {"cursor": ["Not a valid cursor."]}
            }


# ---- status machine -----------------------------------------------------------------------


def move(
    client: Any, url: str, headers: dict[str, str], etag: str, to: str, reason: str | None = None
) -> Any:
    body: dict[str, Any] = {"to": to}
    if reason is not None:
        body["reason"] = reason
    return client.post(f"{url}/status", json=body, headers=with_etag(headers, etag))


def test_status_machine_open_active_closed_reopened_with_history(
    app: Any, client: Any, team: Team
) -> None:
    created = create(client, team.cw)
    case_id = created.get_json()["id"]
    url, etag = case_url(case_id), created.headers["ETag"]

    activated = move(client, url, team.cw, etag, "active")
    assert activated.status_code == 200, activated.get_json()
    assert activated.get_json()["status"] == "active"
    assert activated.headers["ETag"] != etag
    etag = activated.headers["ETag"]

    assert_problem(move(client, url, team.cw, etag, "closed", "services_completed"), 403)
    missing = assert_problem(move(client, url, team.sup, etag, "closed"), 422)
    assert "reason" in missing["errors"]["json"]
    # A reopen reason does not close a case.
    assert_problem(move(client, url, team.sup, etag, "closed", "new_need"), 422)
    assert_problem(move(client, url, team.sup, etag, "closed", "because"), 422)

    closed = move(client, url, team.sup, etag, "closed", "services_completed")
    assert closed.status_code == 200, closed.get_json()
    body = closed.get_json()
    assert body["status"] == "closed" and body["status_reason"] == "services_completed"
    assert body["closed_at"] is not None
    etag = closed.headers["ETag"]

    assert_problem(move(client, url, team.cw, etag, "open", "new_need"), 403)
    assert_problem(move(client, url, team.sup, etag, "open"), 422)
    assert_problem(move(client, url, team.sup, etag, "open", "duplicate"), 422)
    reopened = move(client, url, team.sup, etag, "open", "new_need")
    assert reopened.status_code == 200, reopened.get_json()
    body = reopened.get_json()
    assert body["status"] == "open" and body["status_reason"] == "new_need"
    assert body["closed_at"] is None

    change = CaseStatusChange
    history = rows(
        app,
        select(change.from_status, change.to_status, change.reason, change.actor_id)
        .where(change.case_id == uuid.UUID(case_id))
        .order_by(change.created_at),
    )
    assert [(r[0], r[1], r[2]) for r in history] == [
        (None, "open", None),
        ("open", "active", None),
        ("active", "closed", "services_completed"),
        ("closed", "open", "new_need"),
    ]
    actors = [r[3] for r in history]
    assert actors == [
        team.caseworker.id,
        team.caseworker.id,
        team.supervisor.id,
        team.supervisor.id,
    ]


def test_illegal_status_move_is_409_listing_allowed_transitions(client: Any, team: Team) -> None:
    created = create(client, team.cw)
    url, etag = case_url(created.get_json()["id"]), created.headers["ETag"]

    body = assert_problem(move(client, url, team.sup, etag, "open"), 409)
    assert body["allowed_transitions"] == ["active", "closed"]

    closed = move(client, url, team.sup, etag, "closed", "duplicate")
    assert closed.status_code == 200
    body = assert_problem(move(client, url, team.sup, closed.headers["ETag"], "active"), 409)
    assert body["allowed_transitions"] == ["open"]
    assert client.get(url, headers=team.cw).get_json()["status"] == "closed"


def test_status_change_requires_if_match(app: Any, client: Any, team: Team) -> None:
    created = create(client, team.cw)
    url = case_url(created.get_json()["id"])

    assert_problem(client.post(f"{url}/status", json={"to": "active"}, headers=team.cw), 428)
    assert_problem(move(client, url, team.cw, '"stale"', "active"), 412)
    assert rows(app, "SELECT status FROM cases")[0][0] == "open"
    assert count(app, "case_status_changes") == 1


# ---- assignment ---------------------------------------------------------------------------


def test_assign_by_supervisor_only_to_an_active_handler_of_the_same_org(
    app: Any, client: Any, factory: Any, team: Team
) -> None:
    created = create(client, team.cw)
    url, etag = case_url(created.get_json()["id"]), created.headers["ETag"]
    target = {"assignee_id": str(team.caseworker.id)}

    assert_problem(client.post(f"{url}/assign", json=target, headers=with_etag(team.cw, etag)), 403)
    assert_problem(client.post(f"{url}/assign", json=target, headers=team.sup), 428)
    assert_problem(
        client.post(f"{url}/assign", json=target, headers=with_etag(team.sup, '"old"')), 412
    )

    not_assignable = {
        "dpo": factory.user(Role.DPO, team.org_id).id,
        "org_admin": factory.user(Role.ORG_ADMIN, team.org_id).id,
        "inactive": factory.user(Role.CASEWORKER, team.org_id, active=False).id,
        "other org": factory.user(Role.CASEWORKER).id,
        "nobody": uuid.uuid4(),
    }
    for label, user_id in not_assignable.items():
        body = assert_problem(
            client.post(
                f"{url}/assign",
                json={"assignee_id": str(user_id)},
                headers=with_etag(team.sup, etag),
            ),
            422,
        )
        assert "assignee_id" in body["errors"]["json"], label
    assert rows(app, "SELECT assignee_id, version FROM cases")[0] == (None, 1)

    assigned = client.post(f"{url}/assign", json=target, headers=with_etag(team.sup, etag))
    assert assigned.status_code == 200, assigned.get_json()
    assert assigned.get_json()["assignee_id"] == str(team.caseworker.id)
    assert assigned.headers["ETag"] != etag
    stored = rows(app, "SELECT assignee_id FROM cases")[0][0]
    assert uuid.UUID(str(stored)) == team.caseworker.id

    cleared = client.post(
        f"{url}/assign",
        json={"assignee_id": None},
        headers=with_etag(team.sup, assigned.headers["ETag"]),
    )
    assert cleared.status_code == 200
    assert cleared.get_json()["assignee_id"] is None


def test_police_supervisor_may_assign_a_police_officer(client: Any, factory: Any) -> None:
    police = Team(factory, OrgType.POLICE)
    officer = factory.user(Role.POLICE_OFFICER, police.org_id)
    created = create(client, factory.headers(officer))
    response = client.post(
        case_url(created.get_json()["id"], "/assign"),
        json={"assignee_id": str(officer.id)},
        headers=with_etag(police.sup, created.headers["ETag"]),
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["assignee_id"] == str(officer.id)


# ---- notes --------------------------------------------------------------------------------


def test_notes_are_listed_newest_first_and_encrypted_at_rest(
    app: Any, client: Any, team: Team
) -> None:
    case_id = create(client, team.cw).get_json()["id"]
    other_case = create(client, team.cw).get_json()["id"]
    texts = [
        ("needs", "Needs winter clothes"),
        ("psychosocial", "First counselling session went well"),
        ("legal", "Lawyer meeting booked"),
    ]
    posted = []
    for category, note_text in texts:
        response = client.post(
            case_url(case_id, "/notes"),
            json={"category": category, "text": note_text},
            headers=team.cw,
        )
        assert response.status_code == 201, response.get_json()
        posted.append(response.get_json())
    client.post(
        case_url(other_case, "/notes"),
        json={"category": "needs", "text": "Another person's note"},
        headers=team.cw,
    )

    first = posted[0]
    assert first["case_id"] == case_id and first["org_id"] == str(team.org_id)
    assert first["author_id"] == str(team.caseworker.id)
    assert first["category"] == "needs" and first["text"] == "Needs winter clothes"

    listed = client.get(case_url(case_id, "/notes"), headers=team.sup)
    assert listed.status_code == 200
    assert listed.headers["Cache-Control"] == "no-store"
    assert [(n["category"], n["text"]) for n in listed.get_json()] == texts[::-1]
    assert [n["id"] for n in listed.get_json()] == [n["id"] for n in posted][::-1]
    assert "Link" not in listed.headers

    stored = rows(app, "SELECT text FROM case_notes")
    assert len(stored) == 4
    for (blob,) in stored:
        raw = bytes(blob)
        assert all(t.encode() not in raw for _, t in texts)
        assert b"Another person" not in raw


def test_a_long_timeline_comes_in_capped_pages_each_audited(
    app: Any, client: Any, team: Team
) -> None:
    """The timeline grows with the case: it is paged like every list (newest first, at most
    100 per page, `Link: rel="next"`), and each page's audit row counts what it showed."""
    case_id = create(client, team.cw).get_json()["id"]
    posted = []
    for number in range(45):
        category = "health" if number % 3 == 0 else "needs"
        response = client.post(
            case_url(case_id, "/notes"),
            json={"category": category, "text": f"Note {number}"},
            headers=team.cw,
        )
        assert response.status_code == 201
        posted.append(response.get_json()["id"])
    assert_problem(
        client.get(case_url(case_id, "/notes"), query_string={"limit": 101}, headers=team.cw), 422
    )

    pages, url = [], case_url(case_id, "/notes") + "?limit=20"
    while url is not None:
        response = client.get(url, headers=team.cw)
        assert response.status_code == 200, response.get_json()
        pages.append(response)
        url = next_link(response)
    assert [len(page.get_json()) for page in pages] == [20, 20, 5]
    assert [n["id"] for page in pages for n in page.get_json()] == posted[::-1]

    audited = [
        rows(
            app,
            "SELECT action, details, categories FROM audit_events WHERE request_id = :request",
            request=page.headers["X-Request-ID"],
        )
        for page in pages
    ]
    assert [[(a, json.loads(d)["notes"]) for a, d, _ in r] for r in audited] == [
        [("case:read", 20)],
        [("case:read", 20)],
        [("case:read", 5)],
    ]
    assert all(set(r[0][2].split(",")) == {"health", "needs"} for r in audited)


def test_invalid_note_is_422(app: Any, client: Any, team: Team) -> None:
    case_id = create(client, team.cw).get_json()["id"]
    bad_notes = {
        "no text": {"category": "needs"},
        "no category": {"text": "no category"},
        "unknown category": {"category": "finances", "text": "x"},
        "empty text": {"category": "needs", "text": ""},
        "author_id": {"category": "needs", "text": "x", "author_id": str(uuid.uuid4())},
        "created_at": {"category": "needs", "text": "x", "created_at": "2020-01-01T00:00:00Z"},
        "case_id": {"category": "needs", "text": "x", "case_id": str(uuid.uuid4())},
    }

    def check(body: dict[str, Any]) -> None:
        assert_problem(client.post(case_url(case_id, "/notes"), json=body, headers=team.cw), 422)
        assert count(app, "case_notes") == 0

    assert_each(bad_notes, check)


# ---- access log ---------------------------------------------------------------------------


def test_access_log_lists_who_did_what_on_this_case_only(
    client: Any, factory: Any, team: Team
) -> None:
    created = create(client, team.cw)
    case_id = created.get_json()["id"]
    client.get(case_url(case_id), headers=team.sup)
    client.patch(
        case_url(case_id),
        json={"risk_level": "low"},
        headers=with_etag(team.cw, created.headers["ETag"]),
    )
    # A refused attempt is on the record too.
    denied = client.post(case_url(case_id, "/assign"), json={"assignee_id": None}, headers=team.cw)
    assert denied.status_code == 403
    # Another case of the same organisation, read by someone else.
    other_reader = factory.user(Role.CASEWORKER, team.org_id)
    other_case = create(client, team.sup).get_json()["id"]
    client.get(case_url(other_case), headers=factory.headers(other_reader))

    response = client.get(case_url(case_id, "/access-log"), headers=team.cw)
    assert response.status_code == 200
    entries = response.get_json()

    seen = [(e["actor_id"], e["action"], e["decision"]) for e in entries]
    cw, sup = str(team.caseworker.id), str(team.supervisor.id)
    assert (cw, "case:create", "allow") in seen
    assert (sup, "case:read", "allow") in seen
    assert (cw, "case:update", "allow") in seen
    assert (cw, "case:assign", "deny") in seen
    assert all(e["actor_id"] != str(other_reader.id) for e in entries)
    assert all(e["actor_org_id"] == str(team.org_id) for e in entries)
    create_entry = next(e for e in entries if e["action"] == "case:create")
    assert create_entry["actor_role"] == "caseworker" and create_entry["actor_type"] == "user"
    assert set(create_entry["categories"]) == set(CATEGORIES)
    read_entry = next(e for e in entries if e["action"] == "case:read")
    assert set(read_entry["categories"]) == set(CATEGORIES)
    times = [datetime.fromisoformat(e["occurred_at"]) for e in entries]
    assert times == sorted(times, reverse=True)  # newest first
    assert set(entries[0]) == {
        "occurred_at",
        "actor_type",
        "actor_id",
        "actor_role",
        "actor_org_id",
        "acting_officer",
        "action",
        "categories",
        "decision",
    }


def test_access_log_pages_with_link(client: Any, team: Team) -> None:
    case_id = create(client, team.cw).get_json()["id"]
    for _ in range(4):
        client.get(case_url(case_id), headers=team.cw)
    everything = client.get(case_url(case_id, "/access-log"), headers=team.cw).get_json()
    assert len(everything) >= 5

    paged: list[dict[str, Any]] = []
    url: str | None = case_url(case_id, "/access-log?limit=2")
    while url is not None:
        response = client.get(url, headers=team.cw)
        assert response.status_code == 200
        assert len(response.get_json()) <= 2
        paged += response.get_json()
        url = next_link(response)
    # Reading the log is itself logged (newest first), so compare the older entries only.
    assert paged[-len(everything) :] == everything


# ---- list ---------------------------------------------------------------------------------


def test_list_pages_through_every_case_newest_first(client: Any, team: Team) -> None:
    ids = [create(client, team.cw, {"case_type": "thb"}).get_json()["id"] for _ in range(5)]

    seen: list[str] = []
    url: str | None = f"{API}/cases?limit=2&status=open"
    pages = 0
    while url is not None:
        response = client.get(url, headers=team.cw)
        assert response.status_code == 200, response.get_json()
        assert response.headers["Cache-Control"] == "no-store"
        items = response.get_json()
        assert len(items) <= 2
        seen += [item["id"] for item in items]
        url = next_link(response)
        if url is not None:
            assert parse_qs(urlsplit(url).query)["status"] == ["open"]  # filters kept
        pages += 1
    assert pages == 3
    assert seen == list(reversed(ids))


def test_list_items_carry_metadata_and_identity_only(client: Any, team: Team) -> None:
    create(client, team.cw)
    (item,) = client.get(f"{API}/cases", headers=team.cw).get_json()
    assert set(item) == METADATA | {"identity"}
    assert item["identity"]["given_name"] == "Olena"


def test_list_rejects_bad_arguments(client: Any, team: Team) -> None:
    bad = {
        "limit 0": {"limit": 0},
        "limit 101": {"limit": 101},
        "cursor": {"cursor": "garbage"},
        "status": {"status": "pending"},
        "case_type": {"case_type": "trafficking"},
        "assignee_id": {"assignee_id": "me"},
        "naive updated_since": {"updated_since": "2026-01-01T00:00:00"},
    }

    def refused_in_the_query(query: dict[str, Any]) -> None:
        # Each named under the query string, where it was sent (the cursor too).
        problem = assert_problem(
            client.get(f"{API}/cases", query_string=query, headers=team.cw), 422
        )
        assert list(problem["errors"]) == ["query"], problem
        assert list(problem["errors"]["query"]) == list(query), problem

    assert_each(bad, refused_in_the_query)


def test_every_cursor_is_refused_as_a_query_parameter(
    client: Any, factory: Any, team: Team
) -> None:
    case_id = create(client, team.cw).get_json()["id"]
    dpo = factory.headers(factory.user(Role.DPO, team.org_id))
    admin = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    listings = {
        "/cases": team.cw,
        f"/cases/{case_id}/access-log": team.cw,
        "/referrals": team.cw,
        "/notifications": team.cw,
        "/services": team.cw,
        "/dpo/reports/disclosures": dpo,
        "/orgs": admin,
    }
    for path, headers in listings.items():
        response = client.get(f"{API}{path}", query_string={"cursor": "garbage"}, headers=headers)
        assert response.status_code == 422, path
        problem = assert_problem(response, 422)
        assert problem["errors"] == {"query": {"cursor": ["Not a valid cursor."]}}, path


def test_list_filters(client: Any, factory: Any, team: Team) -> None:
    def new(payload: dict[str, Any]) -> Any:
        return create(client, team.cw, payload)

    thb_high = new({"case_type": "thb", "risk_level": "high"})
    gbv_low = new({"case_type": "gbv", "risk_level": "low"})
    gbv_high = new({"case_type": "gbv", "risk_level": "high"})
    assigned = new({"case_type": "thb", "risk_level": "medium"})
    ids = {
        name: r.get_json()["id"]
        for name, r in {
            "thb_high": thb_high,
            "gbv_low": gbv_low,
            "gbv_high": gbv_high,
            "assigned": assigned,
        }.items()
    }
    activated = move(client, case_url(ids["gbv_low"]), team.cw, gbv_low.headers["ETag"], "active")
    assert activated.status_code == 200
    assign = client.post(
        case_url(ids["assigned"], "/assign"),
        json={"assignee_id": str(team.supervisor.id)},
        headers=with_etag(team.sup, assigned.headers["ETag"]),
    )
    assert assign.status_code == 200
    time.sleep(0.01)
    since = datetime.now(UTC)
    time.sleep(0.01)
    touched = client.patch(
        case_url(ids["thb_high"]),
        json={"nrm_stage": "assistance"},
        headers=with_etag(team.cw, thb_high.headers["ETag"]),
    )
    assert touched.status_code == 200

    def listed(**query: Any) -> set[str]:
        response = client.get(f"{API}/cases", query_string=query, headers=team.cw)
        assert response.status_code == 200, response.get_json()
        return {item["id"] for item in response.get_json()}

    assert listed() == set(ids.values())
    assert listed(status="active") == {ids["gbv_low"]}
    assert listed(status="open") == set(ids.values()) - {ids["gbv_low"]}
    assert listed(status="closed") == set()
    assert listed(case_type="gbv") == {ids["gbv_low"], ids["gbv_high"]}
    assert listed(risk_level="high") == {ids["thb_high"], ids["gbv_high"]}
    assert listed(case_type="gbv", risk_level="high") == {ids["gbv_high"]}
    assert listed(assignee_id=str(team.supervisor.id)) == {ids["assigned"]}
    assert listed(assignee_id=str(uuid.uuid4())) == set()
    assert listed(updated_since=since.isoformat()) == {ids["thb_high"]}


def test_list_never_shows_another_organisations_cases(
    client: Any, factory: Any, team: Team
) -> None:
    mine = create(client, team.cw).get_json()["id"]
    other = Team(factory)
    create(client, other.cw)
    listed = client.get(f"{API}/cases", headers=team.cw).get_json()
    assert [item["id"] for item in listed] == [mine]


def test_refused_status_change_and_search_are_audited_as_denials(
    app: Any, client: Any, factory: Any, team: Team
) -> None:
    created = create(client, team.cw)
    case_id = created.get_json()["id"]
    refused = move(client, case_url(case_id), team.cw, created.headers["ETag"], "closed", "other")
    assert_problem(refused, 403)
    dpo = factory.user(Role.DPO, team.org_id)
    assert_problem(
        client.get(f"{API}/cases", query_string={"name": "Olena"}, headers=factory.headers(dpo)),
        403,
    )

    denials = rows(
        app, "SELECT action, actor_id, case_id, details FROM audit_events WHERE decision = 'deny'"
    )
    by_actor = {
        uuid.UUID(str(actor)): (action, case, details) for action, actor, case, details in denials
    }
    assert len(denials) == 2, denials
    action, case, _ = by_actor[team.caseworker.id]
    assert action == "case:close" and uuid.UUID(str(case)) == uuid.UUID(case_id)
    action, case, details = by_actor[dpo.id]
    assert case is None and "Olena" not in (details or "")
    log = client.get(case_url(case_id, "/access-log"), headers=team.sup).get_json()
    assert ("case:close", "deny") in {(e["action"], e["decision"]) for e in log}
