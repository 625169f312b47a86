"""The referral's message thread is a list like any other (DESIGN.md §10): cursor pages,
oldest first by (created_at, id), a capped page size, `Link: <…>; rel="next"` while more
remain; every page is read through the thread's access rules as they are now and audited
as one read."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import assert_problem
from referral_support import API, World, move, ok, rows

from referral_api.audit.models import AuditEvent
from referral_api.referrals.models import ReferralMessage

MESSAGE_KEYS = {"id", "referral_id", "author_id", "author_org_id", "body", "created_at"}


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    return World(factory, client)


def _thread(client: Any, world: World, count: int) -> tuple[str, str]:
    """A sent referral with `count` messages from the sender ("note 0", "note 1", …)."""
    rid = world.refer()["id"]
    url = f"{API}/referrals/{rid}/messages"
    for n in range(count):
        ok(client.post(url, json={"body": f"note {n}"}, headers=world.h["sender"]), 201)
    return rid, url


def _next_url(response: Any) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    target, rel = link.split(";")
    assert rel.strip() == 'rel="next"' and target.startswith("<") and target.endswith(">")
    return target[1:-1]


def _all_pages(client: Any, url: str, headers: dict[str, str], **query: Any) -> list[Any]:
    """Every page, following `Link: rel="next"` from the first request."""
    pages = []
    response = client.get(url, query_string=query, headers=headers)
    while True:
        pages.append(ok(response))
        following = _next_url(response)
        if following is None:
            return pages
        response = client.get(following, headers=headers)


def _reads(app: Any, rid: str) -> list[AuditEvent]:
    found = rows(
        app,
        AuditEvent,
        AuditEvent.resource_id == rid,
        AuditEvent.action == "referral:messages-read",
    )
    return sorted(found, key=lambda row: row.id)


def _same_instant(app: Any, rid: str) -> None:
    """Arrange: every message of the thread written at one instant (a burst of writes within
    the clock's resolution), so that only the id orders them."""
    from referral_api.extensions import db

    instant = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
    with db.session_factory_for(app)() as s:
        s.execute(
            ReferralMessage.__table__.update()
            .where(ReferralMessage.referral_id == uuid.UUID(rid))
            .values(created_at=instant)
        )
        s.commit()


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


def test_the_thread_pages_oldest_first_with_a_next_link_and_one_audit_row_a_page(
    app: Any, client: Any, world: World
) -> None:
    rid, url = _thread(client, world, 5)

    first = client.get(url, query_string={"limit": 2}, headers=world.h["receiver"])
    assert [m["body"] for m in ok(first)] == ["note 0", "note 1"]
    following = _next_url(first)
    assert following is not None and urlsplit(following).path == url
    query = parse_qs(urlsplit(following).query)
    assert query["limit"] == ["2"] and len(query["cursor"]) == 1
    assert first.headers["Cache-Control"] == "no-store"

    pages = _all_pages(client, url, world.h["receiver"], limit=2)
    assert [[m["body"] for m in page] for page in pages] == [
        ["note 0", "note 1"],
        ["note 2", "note 3"],
        ["note 4"],
    ]
    # Each message as before: decrypted, the same fields, nothing more.
    for message in (m for page in pages for m in page):
        assert set(message) == MESSAGE_KEYS
        assert message["referral_id"] == rid
        assert message["author_org_id"] == str(world.sender_org)

    # One read on the record per page (the first page twice), naming how many it showed.
    reads = _reads(app, rid)
    assert [json.loads(r.details or "{}")["messages"] for r in reads] == [2, 2, 2, 1]
    assert {(r.decision, str(r.actor_org_id), str(r.case_id)) for r in reads} == {
        ("allow", str(world.receiver_org), world.case_id)
    }


def test_paging_is_exact_when_messages_share_a_timestamp(
    app: Any, client: Any, world: World
) -> None:
    rid, url = _thread(client, world, 7)
    _same_instant(app, rid)
    expected = sorted(
        (m.created_at, m.id)
        for m in rows(app, ReferralMessage, ReferralMessage.referral_id == uuid.UUID(rid))
    )

    for limit in (1, 2, 3, 6, 7, 8):
        pages = _all_pages(client, url, world.h["sender"], limit=limit)
        seen = [uuid.UUID(m["id"]) for page in pages for m in page]
        assert seen == [message_id for _, message_id in expected], limit
        assert [len(page) for page in pages[:-1]] == [limit] * (len(pages) - 1), limit
        assert 0 < len(pages[-1]) <= limit


def test_the_page_size_defaults_to_50_and_is_capped_at_100(client: Any, world: World) -> None:
    _rid, url = _thread(client, world, 51)
    first = client.get(url, headers=world.h["sender"])
    assert len(ok(first)) == 50
    following = _next_url(first)
    assert following is not None and parse_qs(urlsplit(following).query)["limit"] == ["50"]
    assert [m["body"] for m in ok(client.get(following, headers=world.h["sender"]))] == ["note 50"]

    assert len(ok(client.get(url, query_string={"limit": 100}, headers=world.h["sender"]))) == 51
    for limit in ("0", "101", "1000", "x"):
        response = client.get(url, query_string={"limit": limit}, headers=world.h["sender"])
        assert "limit" in assert_problem(response, 422)["errors"]["query"], limit


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        "e30",  # {}
        _cursor("2026-05-04T03:02:01+00:00"),
        _cursor("2026-05-04T03:02:01", str(uuid.uuid4())),  # naive
        _cursor("0001-01-01T00:00:00+14:00", str(uuid.uuid4())),
        _cursor("2026-05-04T03:02:01+00:00", "not-a-uuid"),
        _cursor(1, 2),
    ],
)
def test_a_forged_or_malformed_cursor_is_a_422_problem(
    app: Any, client: Any, world: World, cursor: str
) -> None:
    rid, url = _thread(client, world, 2)
    reads_before = len(_reads(app, rid))
    response = client.get(url, query_string={"cursor": cursor}, headers=world.h["sender"])
    problem = assert_problem(response, 422)
    assert problem["errors"]["query"]["cursor"] == ["Not a valid cursor."]
    assert "note" not in response.get_data(as_text=True)
    assert len(_reads(app, rid)) == reads_before


def test_a_cursor_grants_nothing_the_caller_may_not_read_now(
    app: Any, client: Any, world: World
) -> None:
    rid, url = _thread(client, world, 3)
    first = client.get(url, query_string={"limit": 1}, headers=world.h["receiver"])
    following = _next_url(first)
    assert following is not None

    # Another organisation holding the link learns nothing: 404, on the record.
    assert_problem(client.get(following, headers=world.h["outsider"]), 404)
    # A role that reads no case content is refused on every page, as on the first.
    assert_problem(client.get(following, headers=world.h["sender_dpo"]), 403)
    # Still readable by the receiver while the referral is live…
    assert [m["body"] for m in ok(client.get(following, headers=world.h["receiver"]))] == ["note 1"]
    # …and no more once it is closed: the next page is refused like the first.
    ok(move(client, world.h["receiver"], rid, "rejected", reason="no_capacity"))
    assert_problem(client.get(following, headers=world.h["receiver"]), 404)

    # Recorded as the reads they were (they were recorded as message posts: a DPO filtering
    # the access log on `referral:messages-read` missed them).
    refusals = rows(app, AuditEvent, AuditEvent.resource_id == rid, AuditEvent.decision == "deny")
    assert sorted((r.action, r.reason, str(r.actor_org_id)) for r in refusals) == [
        ("referral:messages-read", "referral no longer live", str(world.receiver_org)),
        ("referral:messages-read", "role reads no case content", str(world.sender_org)),
        ("referral:read", "not a party to the referral", str(world.outsider_org)),
    ]


def test_a_cursor_of_one_thread_is_refused_on_another(client: Any, world: World) -> None:
    """A cursor names the thread that issued it: on another thread it is a 422 (it was
    followed there, from a moment of the first thread), and it shows nothing of either."""
    rid, url = _thread(client, world, 2)
    other_rid = world.refer(categories=["identity"])["id"]
    other_url = f"{API}/referrals/{other_rid}/messages"
    ok(client.post(other_url, json={"body": "other 0"}, headers=world.h["sender"]), 201)
    cursor = parse_qs(
        urlsplit(
            _next_url(client.get(url, query_string={"limit": 1}, headers=world.h["sender"])) or ""
        ).query
    )["cursor"][0]
    refused = client.get(other_url, query_string={"cursor": cursor}, headers=world.h["sender"])
    assert assert_problem(refused, 422)["errors"]["query"] == {"cursor": ["Not a valid cursor."]}
    assert rid not in refused.get_data(as_text=True)
    assert "other 0" not in refused.get_data(as_text=True)
    ok(client.get(url, query_string={"cursor": cursor}, headers=world.h["sender"]))


def test_the_sender_is_refused_every_page_of_a_restricted_cases_thread(
    app: Any, client: Any, world: World
) -> None:
    rid, url = _thread(client, world, 2)
    following = _next_url(client.get(url, query_string={"limit": 1}, headers=world.h["sender"]))
    assert following is not None
    ok(
        client.post(
            f"{API}/cases/{world.case_id}/restriction",
            json={"restricted": True},
            headers=world.h["sender_sup"],
        )
    )
    response = client.get(following, headers=world.h["sender"])
    assert assert_problem(response, 403)["type"].endswith("/problems/processing-restricted")
    assert "note" not in response.get_data(as_text=True)
    assert [r.reason for r in _reads(app, rid) if r.decision == "deny"] == ["processing restricted"]


def test_a_replayed_message_is_read_whatever_page_it_is_on(
    app: Any, client: Any, world: World
) -> None:
    rid, url = _thread(client, world, 3)
    headers = {**world.h["receiver"], "Idempotency-Key": "thread-page-0001"}
    posted = client.post(url, json={"body": "late reply"}, headers=headers)
    ok(posted, 201)
    replayed = client.post(url, json={"body": "late reply"}, headers=headers)
    assert (replayed.status_code, replayed.get_json()) == (201, posted.get_json())
    # Audited as a read of that one message.
    last = _reads(app, rid)[-1]
    assert json.loads(last.details or "{}") == {
        "messages": 1,
        "message_id": posted.get_json()["id"],
    }
