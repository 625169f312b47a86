"""`GET /audit/verify` page by page: a long chain is verified in answers of `limit` rows
(re-hashing a million rows in one request took longer than a worker's 30-s timeout), each
going on after the previous one's last row, with the end-of-chain checks on the last."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import assert_problem, write_audit_rows
from sqlalchemy import func, select, text

from referral_api.access.roles import OrgType, Role
from referral_api.audit import service
from referral_api.audit.models import AuditEvent
from referral_api.extensions import db

URL = "/api/v1/audit/verify"
CHAIN = 22


def _raw_sql(app: Any, sql: str, **params: Any) -> None:
    """Tamper as a database superuser would (the append-only trigger off on PostgreSQL)."""
    with db.engine_for(app).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        connection.execute(text(sql), params)


def _row_at(app: Any, seq: int) -> AuditEvent:
    with db.session_factory_for(app)() as s:
        return s.scalars(select(AuditEvent).where(AuditEvent.seq == seq)).one()


def _verify_rows(app: Any) -> int:
    with db.session_factory_for(app)() as s:
        return s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "audit:verify")
        )


@pytest.fixture
def officer(app: Any, factory: Any) -> dict[str, str]:
    """A platform DPO's headers, over a sealed chain of `CHAIN` rows."""
    headers = factory.headers(factory.user(Role.DPO, factory.org(OrgType.PLATFORM)))
    sessions = db.session_factory_for(app)
    with sessions() as s:
        written = s.scalar(select(func.count()).select_from(AuditEvent))
    write_audit_rows(sessions, CHAIN - written)
    assert service.seal_all(sessions) == CHAIN
    return headers


def _page(client: Any, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get(URL, query_string=params, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def test_pages_verify_the_whole_chain_each_row_once(
    app: Any, client: Any, officer: dict[str, str]
) -> None:
    pages = [_page(client, officer, limit=7)]
    while not pages[-1]["complete"]:
        last = pages[-1]
        assert last["ok"] is True and last["checked"] == 7
        pages.append(
            _page(
                client, officer, limit=7, after_seq=last["last_seq"], after_hash=last["last_hash"]
            )
        )
    assert all(page["ok"] for page in pages)
    # Every page goes on right after the previous one: together they re-hash each row once,
    # the chain's rows and the rows each page added (its own verification, sealed by the next).
    assert sum(page["checked"] for page in pages) == pages[-1]["last_seq"]
    assert pages[-1]["last_seq"] == CHAIN + len(pages) - 1
    assert pages[-1]["last_hash"] == _row_at(app, pages[-1]["last_seq"]).hash
    assert len(pages) == 4


def test_a_page_full_to_the_end_of_the_chain_is_complete(
    client: Any, officer: dict[str, str]
) -> None:
    whole = _page(client, officer)  # its own row makes the chain one longer
    assert whole["complete"] is True and whole["checked"] == CHAIN
    exact = _page(client, officer, limit=CHAIN + 1)
    assert (exact["ok"], exact["complete"], exact["checked"]) == (True, True, CHAIN + 1)
    assert _page(client, officer, limit=CHAIN + 1)["complete"] is False


def test_a_row_altered_on_a_later_page_is_named_by_that_page(
    app: Any, client: Any, officer: dict[str, str]
) -> None:
    altered = _row_at(app, 12)
    _raw_sql(app, "UPDATE audit_events SET reason = 'x' WHERE id = :id", id=altered.id)
    first = _page(client, officer, limit=10)
    assert (first["ok"], first["complete"], first["last_seq"]) == (True, False, 10)
    second = _page(client, officer, limit=10, after_seq=10, after_hash=first["last_hash"])
    assert second["ok"] is False
    assert (second["first_bad_id"], second["first_bad_seq"]) == (altered.id, 12)
    assert "hash mismatch" in second["problem"]
    assert (second["checked"], second["last_seq"], second["last_hash"]) == (1, None, None)


def test_a_page_does_not_go_on_from_a_row_that_changed_or_went(
    app: Any, client: Any, officer: dict[str, str]
) -> None:
    first = _page(client, officer, limit=10)
    row = _row_at(app, 10)
    changed = _page(client, officer, after_seq=10, after_hash="f" * 64)
    assert changed["ok"] is False and changed["checked"] == 0
    assert (changed["first_bad_id"], changed["first_bad_seq"]) == (row.id, 10)
    assert "no longer has the hash" in changed["problem"]
    assert "previous page" in changed["problem"]

    missing = _page(client, officer, after_seq=10_000, after_hash=first["last_hash"])
    assert missing["ok"] is False and missing["first_bad_seq"] == 10_000
    assert "is missing" in missing["problem"]


def test_rows_cut_from_the_end_are_found_by_the_last_page_only(
    app: Any, client: Any, officer: dict[str, str]
) -> None:
    _raw_sql(app, "DELETE FROM audit_events WHERE seq > 20")
    with db.session_factory_for(app)() as s:
        first = service.verify_chain(s, limit=10)
        assert (first.ok, first.complete, first.last_seq) == (True, False, 10)
        assert first.last_hash is not None
        last = service.verify_chain(s, after=(10, first.last_hash))
    assert (last.ok, last.complete, last.checked) == (False, True, 10)
    assert last.problem == "chain head does not match (rows removed at the end)"
    # Over HTTP the first page's own row is sealed after the gap: the last page names it.
    page = _page(client, officer, limit=10)
    assert (page["ok"], page["complete"]) == (True, False)
    end = _page(client, officer, after_seq=10, after_hash=page["last_hash"])
    assert (end["ok"], end["first_bad_seq"]) == (False, CHAIN + 1)
    assert "sequence gap" in end["problem"]


def test_the_head_at_a_row_before_the_page_is_checked_too(
    app: Any, client: Any, officer: dict[str, str]
) -> None:
    """A page going on after the chain's last row re-hashes nothing, but the head must
    still point at that row with its hash."""
    whole = _page(client, officer)
    last_seq = whole["last_seq"]
    service.seal_all(db.session_factory_for(app))  # the verification's own row, then nothing
    head = _row_at(app, last_seq + 1)
    # In process: a request would add (and seal) a row of its own first.
    with db.session_factory_for(app)() as s:
        fine = service.verify_chain(s, after=(head.seq, head.hash))
    assert (fine.ok, fine.complete, fine.checked, fine.last_seq) == (True, True, 0, head.seq)
    _raw_sql(app, "UPDATE audit_chain_head SET last_hash = :h", h="e" * 64)
    with db.session_factory_for(app)() as s:
        moved = service.verify_chain(s, after=(head.seq, head.hash))
    assert moved.ok is False and "chain head does not match" in (moved.problem or "")
    answer = _page(client, officer, after_seq=head.seq, after_hash=head.hash)
    assert answer["ok"] is False and "chain head does not match" in answer["problem"]


def test_an_anchor_before_the_page_is_looked_up(
    app: Any, client: Any, officer: dict[str, str]
) -> None:
    first = _page(client, officer, limit=10)
    go_on = {"after_seq": 10, "after_hash": first["last_hash"]}
    held = _page(client, officer, anchor_seq=3, anchor_hash=_row_at(app, 3).hash, **go_on)
    assert held["ok"] is True
    moved = _page(client, officer, anchor_seq=3, anchor_hash="a" * 64, **go_on)
    assert moved["ok"] is False and moved["first_bad_seq"] == 3
    assert "anchor" in moved["problem"]
    # An anchor past the page's end is the last page's to check: this one stops short.
    ahead = _page(client, officer, limit=5, anchor_seq=1_000, anchor_hash="a" * 64)
    assert (ahead["ok"], ahead["complete"]) == (True, False)
    assert _page(client, officer, anchor_seq=1_000, anchor_hash="a" * 64)["ok"] is False


def test_paged_verification_in_small_batches_matches_the_whole(app: Any, officer: Any) -> None:
    service.seal_all(db.session_factory_for(app))
    with db.session_factory_for(app)() as s:
        whole = service.verify_chain(s)
        after: tuple[int, str] | None = None
        seen = 0
        while True:
            page = service.verify_chain(s, batch_size=3, after=after, limit=5)
            assert page.ok, page
            seen += page.checked
            assert page.last_seq is not None and page.last_hash is not None
            after = (page.last_seq, page.last_hash)
            if page.complete:
                break
    assert (seen, after) == (whole.checked, (whole.last_seq, whole.last_hash))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after_seq": 3}, "after_hash"),
        ({"after_hash": "a" * 64}, "after_seq"),
        ({"after_seq": 0, "after_hash": "a" * 64}, "after_seq"),
        ({"after_seq": 3, "after_hash": "A" * 64}, "after_hash"),
        ({"limit": 0}, "limit"),
        ({"limit": 500_001}, "limit"),
        ({"after_seq": 2**63 - 1, "after_hash": "a" * 64}, "after_seq"),
    ],
)
def test_bad_page_parameters_are_refused(
    app: Any, client: Any, officer: dict[str, str], params: dict[str, Any], field: str
) -> None:
    body = assert_problem(client.get(URL, query_string=params, headers=officer), 422)
    assert field in str(body)
    assert _verify_rows(app) == 0


# ---- the CLI verifies in pages too, as one result --------------------------------------


def _cli(runner: Any, *args: str) -> tuple[int, str]:
    result = runner.invoke(args=["audit", "verify", "--page-rows", "5", *args])
    return result.exit_code, result.output + (getattr(result, "stderr", "") or "")


def test_the_cli_verifies_page_by_page_with_progress(
    app: Any, runner: Any, officer: dict[str, str]
) -> None:
    code, output = _cli(runner)
    assert code == 0, output
    assert [f"verified to seq {n}" in output for n in (5, 10, 15, 20)] == [True] * 4
    assert f"audit chain ok: {CHAIN} rows verified" in output
    assert f"head: seq {CHAIN} hash {_row_at(app, CHAIN).hash}" in output


def test_the_cli_names_a_bad_row_on_a_later_page(
    app: Any, runner: Any, officer: dict[str, str]
) -> None:
    altered = _row_at(app, 12)
    _raw_sql(app, "UPDATE audit_events SET reason = 'x' WHERE id = :id", id=altered.id)
    code, output = _cli(runner)
    assert code == 1
    assert f"BROKEN at row id {altered.id} (seq 12): hash mismatch" in output
    assert "11 rows verified before it" in output


@pytest.mark.parametrize(
    ("seq", "problem"),
    [
        (3, "hash differs from the anchor"),  # on the first page
        (8, "hash differs from the anchor"),  # on a later one
        (1_000, "the anchored row seq 1000 is missing"),  # past the end: the last page's
    ],
)
def test_the_cli_checks_every_anchor_across_pages(
    app: Any, runner: Any, officer: dict[str, str], tmp_path: Any, seq: int, problem: str
) -> None:
    anchor_file = tmp_path / "anchors"
    held = _row_at(app, 2)
    anchor_file.write_text(f"{held.seq} {held.hash}\n{seq} {'c' * 64}\n")
    code, output = _cli(runner, "--anchors", str(anchor_file))
    assert code == 1, output
    assert problem in output
    assert f"(seq {seq})" in output if seq < CHAIN else f"(seq {CHAIN})" in output


# ---- a row forged below seq 1 ----------------------------------------------------------


def _forge(app: Any, seq: int) -> int:
    """INSERT a sealed-looking copy of row 1 at `seq`. On PostgreSQL the database refuses
    that (migration 0019) unless its triggers are off, as a superuser may switch them."""
    with db.engine_for(app).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        connection.execute(
            text(
                "INSERT INTO audit_events (occurred_at, actor_type, action, resource_type, "
                "decision, seq, prev_hash, hash) SELECT occurred_at, actor_type, "
                "'case:read', resource_type, 'allow', :seq, prev_hash, hash "
                "FROM audit_events WHERE seq = 1"
            ),
            {"seq": seq},
        )
    with db.session_factory_for(app)() as s:
        return s.scalar(select(AuditEvent.id).where(AuditEvent.seq == seq))


@pytest.mark.parametrize("seq", [0, -1])
def test_a_row_forged_below_seq_one_is_a_gap_everywhere(
    app: Any, client: Any, runner: Any, officer: dict[str, str], seq: int
) -> None:
    forged = _forge(app, seq)
    with db.session_factory_for(app)() as s:
        whole = service.verify_chain(s)
        paged = service.verify_chain(s, limit=5)
    for result in (whole, paged):
        assert (result.ok, result.first_bad_id, result.first_bad_seq) == (False, forged, seq)
        assert result.problem == "sequence gap (a row was removed)"
    body = client.get(URL, query_string={"limit": 5}, headers=officer).get_json()
    assert (body["ok"], body["first_bad_id"]) == (False, forged)
    code, output = _cli(runner)
    assert code == 1 and f"row id {forged} (seq {seq})" in output
