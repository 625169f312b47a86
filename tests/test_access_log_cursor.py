"""The case access log pages by the id of the last row shown (sealed in the cursor): a row
whose transaction began before others on the case and committed after them has a smaller
id, and still shows on a later page (a position cursor, counting rows, skipped one)."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import pytest
from conftest import follow_pages
from referral_support import API, World

from referral_api.access.actor import Actor
from referral_api.audit import service as audit
from referral_api.extensions import db

needs_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="a transaction left open while another commits needs PostgreSQL",
)


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["occurred_at"], entry["action"], entry["actor_id"])


@needs_postgres
def test_access_log_pages_show_a_row_that_committed_late(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(factory, client)
    headers = world.h["sender"]
    late = db.session_factory_for(app)()
    try:
        audit.record(
            late,
            Actor.system(),
            "test:late",
            resource_type="case",
            resource_id=world.case_id,
            case_id=uuid.UUID(world.case_id),
        )  # id allocated now, committed later
        for _ in range(4):
            assert client.get(f"{API}/cases/{world.case_id}", headers=headers).status_code == 200
        first = client.get(f"{API}/cases/{world.case_id}/access-log?limit=2", headers=headers)
        assert first.status_code == 200
        link = first.headers["Link"]
        late.commit()
    finally:
        late.close()
    rest = follow_pages(client, re.match(r"<([^>]*)>", link).group(1), headers)
    everything = follow_pages(client, f"{API}/cases/{world.case_id}/access-log?limit=100", headers)[
        0
    ]
    page_one = [_key(e) for e in first.get_json()]
    # Everything older than the first page, as the log holds it now.
    oldest_shown = [_key(e) for e in everything].index(page_one[-1])
    older = [_key(e) for e in everything[oldest_shown + 1 :]]
    followed = [_key(e) for page in rest for e in page]
    missing = [k for k in older if k not in followed]
    assert missing == [] and len(followed) == len(set(followed)), (missing, followed, older)
