"""A page of referrals costs a fixed number of SQL statements, whatever its size: the
receiver's inbox decided consent for each row with the case, its consents, their provisions
and events read again per row (~6 statements a referral), and both boxes loaded each case's
data key for its message on its own (a reviewer's probes; each failed before)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
