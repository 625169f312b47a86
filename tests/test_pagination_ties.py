"""Newest-first pages with rows stamped at one instant: the cursor is a row comparison,
(created_at, id) < the last row's (an index bound, where an OR of "earlier, or as early with
a smaller id" filtered every row before it), and must give every row once, in
(created_at, id) descending order, however many share an instant."""

from __future__ import annotations

from typing import Any

from conftest import follow_pages
from sqlalchemy import text

from referral_api.access.roles import Role
from referral_api.extensions import db

API = "/api/v1"


def test_cases_stamped_at_one_instant_page_once_each_in_id_order(
    app: Any, client: Any, factory: Any
) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    made = []
    for _ in range(7):
        created = client.post(f"{API}/cases", json={"case_type": "thb"}, headers=headers)
        assert created.status_code == 201, created.get_json()
        made.append(created.get_json()["id"])
    # Five of them at one instant (two before, at other instants).
    with db.engine_for(app).begin() as connection:
        for case_id in made[2:]:
            connection.execute(
                text(
                    "UPDATE cases SET created_at = (SELECT max(created_at) FROM cases) "
                    "WHERE id = :id"
                ),
                {
                    "id": case_id
                    if connection.dialect.name == "postgresql"
                    else case_id.replace("-", "")
                },
            )
    whole = client.get(f"{API}/cases", query_string={"limit": 100}, headers=headers).get_json()
    assert sorted(c["id"] for c in whole) == sorted(made)
    stamped = [(c["created_at"], c["id"]) for c in whole]
    assert len({at for at, _ in stamped}) == 3
    paged = [
        c["id"] for page in follow_pages(client, f"{API}/cases?limit=2", headers) for c in page
    ]
    assert paged == [c["id"] for c in whole]
    tied = [case_id for at, case_id in stamped if at == stamped[0][0]]
    assert tied == sorted(tied, reverse=True) and len(tied) == 5
