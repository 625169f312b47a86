"""A page of referrals costs a fixed number of SQL statements, whatever its size: the
receiver's inbox decided consent for each row with the case, its consents, their provisions
and events read again per row (~6 statements a referral), and both boxes loaded each case's
data key for its message on its own (a reviewer's probes; each failed before)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conftest import follow_pages
from referral_support import API, consent_body, ok, provision, refer
from sqlalchemy import event

from referral_api.access.roles import OrgType, Role

SHARES = ["identity", "legal"]


@contextmanager
def _counting(app: Any) -> Iterator[list[str]]:
    from referral_api.extensions import db

    engine = db.engine_for(app)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _referred(
    client: Any, factory: Any, n: int, **case: Any
) -> tuple[dict[str, str], dict[str, str]]:
    """`n` cases of an NGO, each with a consent and a sent referral to a legal-aid
    organisation: (the NGO caseworker's headers, the legal-aid caseworker's)."""
    ngo_org = factory.org(OrgType.NGO)
    legal_org = factory.org(OrgType.LEGAL_AID)
    ngo = factory.headers(factory.user(Role.CASEWORKER, ngo_org))
    legal = factory.headers(factory.user(Role.CASEWORKER, legal_org))
    consent = consent_body(provision("legal_assistance", SHARES, org_id=legal_org))
    for _ in range(n):
        created = client.post(f"{API}/cases", json={"case_type": "thb", **case}, headers=ngo)
        case_id = ok(created, 201)["id"]
        ok(client.post(f"{API}/cases/{case_id}/consents", json=consent, headers=ngo), 201)
        ok(refer(client, ngo, case_id, legal_org, SHARES, message="please call"), 201)
    return ngo, legal


def _incoming_statements(app: Any, client: Any, headers: dict[str, str], limit: int) -> int:
    with _counting(app) as statements:
        body = ok(
            client.get(
                f"{API}/referrals",
                query_string={"box": "incoming", "limit": limit},
                headers=headers,
            )
        )
    assert len(body) == limit, len(body)
    assert all("message" in r for r in body)  # live packets: the receiver sees the message
    return len(statements)


def test_the_inbox_reads_a_fixed_number_of_statements_per_page(
    app: Any, client: Any, factory: Any
) -> None:
    """The consent decision (`packet_live`) of each row, from the page's consents read once."""
    n = 12
    _, legal = _referred(client, factory, n, identity={"given_name": "Olena"})
    small = _incoming_statements(app, client, legal, 3)
    large = _incoming_statements(app, client, legal, n)
    # A page's statements should not depend on its size (a constant number of queries).
    assert large <= small + 2, f"limit=3: {small} statements, limit={n}: {large}"


def test_the_outbox_reads_a_fixed_number_of_statements_per_page(
    app: Any, client: Any, factory: Any
) -> None:
    """Each row's message under its case's data key, the keys read with the cases."""
    n = 12
    ngo, _ = _referred(client, factory, n)
    counts = {}
    for limit in (3, n):
        with _counting(app) as statements:
            body = ok(
                client.get(
                    f"{API}/referrals",
                    query_string={"box": "outgoing", "limit": limit},
                    headers=ngo,
                )
            )
        assert len(body) == limit and all("message" in r for r in body)
        counts[limit] = len(statements)
    assert counts[n] <= counts[3] + 2, counts


def test_the_default_list_pages_through_sent_and_received_once_each_newest_first(
    client: Any, factory: Any
) -> None:
    """Both boxes at once are read as the two parties' pages merged (each from its own
    index): paged two at a time, every referral the organisation sent (drafts too) or
    received (once sent) comes once, newest first, as the one-page list shows them; a
    draft to it does not; filters apply to both halves."""
    ngo = factory.org(OrgType.NGO)
    other = factory.org(OrgType.NGO)
    legal = factory.org(OrgType.LEGAL_AID)
    mine = factory.headers(factory.user(Role.CASEWORKER, ngo))
    theirs = factory.headers(factory.user(Role.CASEWORKER, other))

    def referral(by: dict[str, str], to: Any, purpose: str, send: bool = True) -> str:
        case_id = ok(client.post(f"{API}/cases", json={"case_type": "thb"}, headers=by), 201)["id"]
        consent = consent_body(provision(purpose, SHARES, org_id=to))
        ok(client.post(f"{API}/cases/{case_id}/consents", json=consent, headers=by), 201)
        made = refer(client, by, case_id, to, SHARES, purpose=purpose, send=send)
        return str(ok(made, 201)["id"])

    sent, received = [], []
    for _ in range(3):
        sent.append(referral(mine, legal, "legal_assistance"))
        received.append(referral(theirs, ngo, "psychosocial_support"))
    draft_of_mine = referral(mine, legal, "legal_assistance", send=False)
    referral(theirs, ngo, "psychosocial_support", send=False)  # not the receiver's yet

    whole = ok(client.get(f"{API}/referrals", query_string={"limit": 100}, headers=mine))
    assert sorted(r["id"] for r in whole) == sorted([*sent, *received, draft_of_mine])
    assert [r["created_at"] for r in whole] == sorted(
        (r["created_at"] for r in whole), reverse=True
    )
    paged = [
        r["id"] for page in follow_pages(client, f"{API}/referrals?limit=2", mine) for r in page
    ]
    assert paged == [r["id"] for r in whole]
    drafts = ok(client.get(f"{API}/referrals", query_string={"status": "draft"}, headers=mine))
    assert [r["id"] for r in drafts] == [draft_of_mine]
