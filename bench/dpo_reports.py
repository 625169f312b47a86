"""DPO reports over a million cases on PostgreSQL (issue 6; target < 2 s per report).

Creates its own database (BENCH_DPO_DB, default referral_bench_dpo) in the bench PostgreSQL
server, migrates it, and seeds metadata by bulk INSERT … SELECT over generate_series: the
reports never decrypt, so the encrypted columns of cases hold random bytes and the rest stay
null. Then it runs every report in process through the real app (production settings), as
the DPO of one controlling organisation and as the platform's DPO: the first JSON page
(median of --repeat runs) and, where a report lists rows, the whole CSV export (once).
Figures go to bench/results/dpo_reports.json and are printed as a Markdown table; the
database is dropped at the end unless --keep.

    .venv/bin/python bench/dpo_reports.py                    # 1,000,000 cases
    .venv/bin/python bench/dpo_reports.py --cases 100000 --keep
    .venv/bin/python bench/dpo_reports.py --reuse            # skip seeding (after --keep)

The seeded world, per case i (all deterministic):
- 60 controlling organisations (NGOs, social services); 40 recipients (legal aid, shelters,
  health, police, prosecution) and the platform;
- 90 % of cases have a consent whose first provision names the recipient of the case's
  referral (by organisation or by type), a third of them bounded in time; every other
  consent has a second, statistics provision; 20 % have a second consent; 5 % are
  withdrawn, 0.5 % revoked, 0.5 % entered in error, 5 % renewed, a few expired by event;
- every consented case has one sent referral (disclosure included): live while its consent
  covers it, else completed or cancelled; 1 % on an approved override (half reviewed);
  one in 10,000 is live although its consent was withdrawn (processing without a basis);
- two audit rows per case (sealed), and 5,000 erasure tombstones;
- the consent event summaries (migrations 0010, 0011) filled by the latest migration's backfill
  after the provisions and events are inserted with triggers off (the triggers keep them from
  then on).

--reuse migrates a kept database to head first (and, when that changed anything, runs VACUUM
ANALYZE, as a fresh seed does).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

DB_NAME = os.environ.get("BENCH_DPO_DB", "referral_bench_dpo")
PASSWORD = "bench-dpo-password-not-secret"
CONTROLLERS = 60

# ---- seeding ------------------------------------------------------------------------------

# Organisation n has id md5('org-' || n); 0-59 control cases, 60-99 receive, 100 platform.
_ORG_TYPE = """CASE
    WHEN n < 40 THEN 'ngo' WHEN n < 60 THEN 'social_services'
    WHEN n < 70 THEN 'legal_aid' WHEN n < 80 THEN 'police' WHEN n < 90 THEN 'shelter'
    WHEN n < 95 THEN 'health' WHEN n < 100 THEN 'prosecution' ELSE 'platform' END"""

ORGS = f"""
INSERT INTO organisations (id, name, org_type, active, created_at, updated_at, version)
SELECT md5('org-' || n)::uuid, 'Bench org ' || n, {_ORG_TYPE}, true, :now, :now, 1
FROM generate_series(0, 100) AS n
"""

# Shared expressions over the case number i.
_CREATED = "(:now - (i % 730) * interval '1 day' - (i % 86400) * interval '1 second')"
# Blocks of 13 consecutive cases per organisation, so that each one gets every pattern below.
_CTRL = f"md5('org-' || ((i / 13) % {CONTROLLERS}))::uuid"
_K = "(i % 5)"
_RECEIVER_N = f"""(CASE {_K} WHEN 0 THEN 60 + i % 10 WHEN 1 THEN 80 + i % 10
    WHEN 2 THEN 90 + i % 5 WHEN 3 THEN 70 + i % 10 ELSE 80 + (i / 5) % 10 END)"""
_RECEIVER = f"md5('org-' || {_RECEIVER_N})::uuid"
_RECEIVER_TYPE = f"""(CASE {_K} WHEN 0 THEN 'legal_aid' WHEN 1 THEN 'shelter'
    WHEN 2 THEN 'health' WHEN 3 THEN 'police' ELSE 'shelter' END)"""
_PURPOSE = f"""(CASE {_K} WHEN 0 THEN 'legal_assistance' WHEN 1 THEN 'shelter'
    WHEN 2 THEN 'health' WHEN 3 THEN 'law_enforcement_report'
    ELSE 'psychosocial_support' END)"""
_CATEGORIES = f"""(CASE {_K} WHEN 0 THEN 'identity,legal' WHEN 1 THEN 'identity,location,needs'
    WHEN 2 THEN 'health,identity' WHEN 3 THEN 'contact,identity'
    ELSE 'identity,psychosocial' END)"""
_P1_UNTIL = f"(CASE WHEN i % 3 = 0 THEN {_CREATED} + ((i % 400) + 1) * interval '1 day' END)"
_CONSENTED = "(i % 10 <> 0)"
_WITHDRAWN = "(i % 20 = 1)"
_REVOKED = "(i % 200 = 3)"
_EIE = "(i % 200 = 4)"
_RENEWED = "(i % 20 = 2)"
_RENEWED_UNTIL = "(:now + (((i / 20) % 60) - 10) * interval '1 day')"
_EXPIRED_EVENT = f"(i % 50 = 5 AND i % 2 = 1 AND i % 3 = 0 AND {_P1_UNTIL} < :now)"
_CLOSED = f"({_WITHDRAWN} OR {_REVOKED} OR {_EIE})"
_MIDPOINT = f"({_CREATED} + (:now - {_CREATED}) / 2)"
# The second consent, a day after the case (never after the seed's now: the server's clock
# stamps events, so none is in the future).
_SECOND = f"LEAST({_CREATED} + interval '1 day', :now)"
# The first provision covers the referral now (the consent is otherwise active).
_COVERED = f"""(NOT {_CLOSED} AND NOT {_EXPIRED_EVENT} AND CASE WHEN {_RENEWED}
    THEN {_RENEWED_UNTIL} > :now ELSE ({_P1_UNTIL} IS NULL OR {_P1_UNTIL} > :now) END)"""
_TAMPERED = "(i % 10000 = 21)"  # withdrawn, yet the referral is still in progress
_LIVE = """(CASE (i / 7) % 5 WHEN 0 THEN 'requested' WHEN 1 THEN 'received'
    WHEN 2 THEN 'accepted' WHEN 3 THEN 'in_progress' ELSE 'on_hold' END)"""
_STATUS = f"""(CASE WHEN {_TAMPERED} THEN 'in_progress'
    WHEN {_COVERED} AND i % 4 <> 0 THEN {_LIVE}
    WHEN {_CLOSED} THEN 'cancelled' ELSE 'completed' END)"""
_OVERRIDE = "(i % 100 = 17)"
_BYTES = "decode(md5('{tag}' || i) || md5('{tag}x' || i), 'hex')"

CASES = f"""
INSERT INTO cases (id, case_code, org_id, case_type, status, risk_level, nrm_stage,
    created_at, updated_at, version, key_version, restricted, erased,
    given_name, family_name, phone, narrative)
SELECT md5('case-' || i)::uuid, 'B' || lpad(i::text, 10, '0'), {_CTRL},
    CASE WHEN i % 3 = 0 THEN 'gbv' ELSE 'thb' END,
    CASE WHEN i % 7 = 0 THEN 'closed' ELSE 'active' END, 'medium', 'assistance',
    {_CREATED}, {_CREATED}, 1, 1, false, false,
    {_BYTES.format(tag="g")}, {_BYTES.format(tag="f")}, {_BYTES.format(tag="p")},
    {_BYTES.format(tag="n")} || {_BYTES.format(tag="m")}
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i
"""

_CONSENT_COLUMNS = """(id, case_id, org_id, grantor, is_minor, captured_by_org_id,
    collection_method, language, notice_version, jurisdiction, article6, article9,
    evidence_sha256, evidence_media_type, created_at)"""

CONSENTS = f"""
INSERT INTO consent_records {_CONSENT_COLUMNS}
SELECT md5('k1-' || i)::uuid, md5('case-' || i)::uuid, {_CTRL}, 'person', false, {_CTRL},
    'written', 'uk', CASE WHEN i % 97 = 0 THEN '2019-01' ELSE '2026-01' END, 'UA', 'a', 'a',
    CASE WHEN i % 4 <> 0 THEN md5('evidence-' || i) || md5('e2-' || i) END,
    CASE WHEN i % 4 <> 0 THEN 'application/pdf' END, {_CREATED}
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE {_CONSENTED}
UNION ALL
SELECT md5('k2-' || i)::uuid, md5('case-' || i)::uuid, {_CTRL}, 'person', false, {_CTRL},
    'verbal_witnessed', 'uk', '2026-01', 'UA', 'a', NULL, NULL, NULL, {_SECOND}
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE i % 5 = 0
"""

PROVISIONS = f"""
INSERT INTO consent_provisions (id, consent_id, case_id, position, purpose, recipient_org_id,
    recipient_org_type, categories, valid_from, valid_until)
SELECT md5('p1-' || i)::uuid, md5('k1-' || i)::uuid, md5('case-' || i)::uuid, 0, {_PURPOSE},
    CASE WHEN i % 3 <> 1 THEN {_RECEIVER} END,
    CASE WHEN i % 3 = 1 THEN {_RECEIVER_TYPE} END,
    {_CATEGORIES}, {_CREATED}, {_P1_UNTIL}
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE {_CONSENTED}
UNION ALL
SELECT md5('p2-' || i)::uuid, md5('k1-' || i)::uuid, md5('case-' || i)::uuid, 1, 'statistics',
    NULL, 'ngo', 'needs', {_CREATED}, NULL
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i
WHERE {_CONSENTED} AND i % 2 = 0
UNION ALL
SELECT md5('p3-' || i)::uuid, md5('k2-' || i)::uuid, md5('case-' || i)::uuid, 0,
    'case_management', NULL, 'social_services', 'needs', {_SECOND}, NULL
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE i % 5 = 0
"""


def _event(tag: str, consent: str, kind: str, at: str, until: str, where: str) -> str:
    return f"""
SELECT md5('{tag}-' || i)::uuid, md5('{consent}-' || i)::uuid, md5('case-' || i)::uuid,
    '{kind}', {at}, CAST({until} AS timestamptz)
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE {where}"""


EVENTS = (
    "INSERT INTO consent_events (id, consent_id, case_id, event_type, occurred_at, valid_until)"
    + " UNION ALL ".join(
        [
            _event("eg1", "k1", "given", _CREATED, "NULL", _CONSENTED),
            _event("eg2", "k2", "given", _SECOND, "NULL", "i % 5 = 0"),
            _event(
                "er", "k1", "renewed", _MIDPOINT, _RENEWED_UNTIL, f"{_CONSENTED} AND {_RENEWED}"
            ),
            _event("ew", "k1", "withdrawn", _MIDPOINT, "NULL", f"{_CONSENTED} AND {_WITHDRAWN}"),
            _event("ev", "k1", "revoked", _MIDPOINT, "NULL", f"{_CONSENTED} AND {_REVOKED}"),
            _event("ee", "k1", "entered_in_error", _MIDPOINT, "NULL", f"{_CONSENTED} AND {_EIE}"),
            _event("ex", "k1", "expired", _P1_UNTIL, "NULL", f"{_CONSENTED} AND {_EXPIRED_EVENT}"),
        ]
    )
)

REFERRALS = f"""
INSERT INTO referrals (id, case_id, from_org_id, to_org_id, purpose, categories, urgency,
    status, status_reason, created_by, created_at, updated_at, sent_at, version,
    override_reason, override_requested_by, override_approved_by, override_approved_at,
    override_reviewed_by, override_reviewed_at, message)
SELECT md5('r-' || i)::uuid, md5('case-' || i)::uuid, {_CTRL}, {_RECEIVER}, {_PURPOSE},
    {_CATEGORIES}, 'normal', {_STATUS},
    CASE WHEN {_STATUS} = 'cancelled' THEN 'consent_withdrawn' END,
    md5('user-' || (i % 500))::uuid, {_CREATED} + interval '30 minutes',
    {_CREATED} + interval '2 days', {_CREATED} + interval '1 hour', 2,
    CASE WHEN {_OVERRIDE} THEN 'vital_interests' END,
    CASE WHEN {_OVERRIDE} THEN md5('user-' || (i % 500))::uuid END,
    CASE WHEN {_OVERRIDE} THEN md5('sup-' || (i % 60))::uuid END,
    CASE WHEN {_OVERRIDE} THEN {_CREATED} + interval '40 minutes' END,
    CASE WHEN {_OVERRIDE} AND i % 200 = 17 THEN md5('dpo-' || (i % 60))::uuid END,
    CASE WHEN {_OVERRIDE} AND i % 200 = 17 THEN {_CREATED} + interval '3 days' END,
    {_BYTES.format(tag="msg")}
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE {_CONSENTED}
"""

DISCLOSURES = f"""
INSERT INTO disclosures (id, referral_id, case_id, from_org_id, to_org_id, purpose,
    categories, basis_type, basis, disclosed_by, disclosed_at, acknowledged_at)
SELECT md5('d-' || i)::uuid, md5('r-' || i)::uuid, md5('case-' || i)::uuid, {_CTRL},
    {_RECEIVER}, {_PURPOSE}, {_CATEGORIES},
    CASE WHEN {_OVERRIDE} THEN 'override' ELSE 'consent' END,
    CASE WHEN {_OVERRIDE} THEN 'vital_interests' ELSE md5('p1-' || i)::uuid::text END,
    md5('user-' || (i % 500))::uuid, {_CREATED} + interval '1 hour',
    CASE WHEN (i / 7) % 5 <> 0 THEN {_CREATED} + interval '5 hours' END
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE {_CONSENTED}
"""

# Two sealed rows per case (seq = 2i-1, 2i; ids after the few rows the app wrote before the
# seed), inserted with triggers off (migration 0019 refuses a sealed INSERT); the chain head
# is set after.
AUDIT = f"""
INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, actor_org_id, actor_role,
    action, resource_type, resource_id, case_id, categories, decision, seq, prev_hash, hash,
    sealed_at)
SELECT 1000 + 2 * i - 1 + j, {_CREATED} + j * interval '1 minute', 'user',
    md5('user-' || (i % 500))::uuid, {_CTRL}, 'caseworker',
    CASE j WHEN 0 THEN 'case:create' ELSE 'consent:record' END,
    CASE j WHEN 0 THEN 'case' ELSE 'consent' END, md5('case-' || i)::uuid::text,
    md5('case-' || i)::uuid, CASE j WHEN 0 THEN 'identity,contact' END, 'allow',
    2 * i - 1 + j, repeat('0', 64), repeat('0', 64), {_CREATED}
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i, generate_series(0, 1) AS j
"""

TOMBSTONES = f"""
INSERT INTO erasure_tombstones (id, case_id, org_id, basis, requested_by, approved_by,
    erased_at, data_keys_destroyed, ciphertexts_cleared, index_entries_deleted,
    referrals_cancelled, key_digest)
SELECT md5('t-' || i)::uuid, md5('case-' || i)::uuid, {_CTRL}, 'consent_withdrawn',
    md5('sup-' || (i % 60))::uuid, md5('dpo-' || (i % 60))::uuid, {_MIDPOINT}, 1, 31, 6, 0,
    md5('digest-' || i) || md5('digest2-' || i)
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i WHERE i % 200 = 3
"""

# The consent event summaries (migrations 0010, 0011) are kept by triggers on consent_events
# and consent_provisions, one recompute per row: the seed inserts both with triggers off (the
# bench connects as a superuser) and then fills every summary with the latest migration's own
# backfill (0011's: with the consent's organisation and whether it has repeated provisions).
_UNTRIGGERED = {"consent_provisions", "consent_events", "audit_events"}


def _summary_backfill() -> str:
    path = common.REPO / "referral_api/migrations/versions/0011_consent_summary_org_and_repeats.py"
    spec = importlib.util.spec_from_file_location("consent_state_summary_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.BACKFILL)


TABLES = [
    ("cases", CASES),
    ("consent_records", CONSENTS),
    ("consent_provisions", PROVISIONS),
    ("consent_events", EVENTS),
    ("referrals", REFERRALS),
    ("disclosures", DISCLOSURES),
    ("audit_events", AUDIT),
    ("erasure_tombstones", TOMBSTONES),
]


def seed(app: Any, url: str, n: int, workers: int) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    from referral_api.audit.models import AuditChainHead

    now = datetime.now(UTC)
    figures: dict[str, Any] = {"cases": n, "tables": {}}
    engine = create_engine(url)
    started = time.perf_counter()
    for table, sql in TABLES:
        t0 = time.perf_counter()
        common.run_split(url, sql, {"now": now}, n, workers, triggers=table not in _UNTRIGGERED)
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        figures["tables"][table] = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {table:22} {rows:>10,} rows  {time.perf_counter() - t0:6.1f} s", flush=True)
        if table == "consent_events":
            t0 = time.perf_counter()
            with engine.begin() as connection:
                connection.execute(text("DELETE FROM consent_event_summaries"))
                rows = connection.execute(text(_summary_backfill())).rowcount
            seconds = round(time.perf_counter() - t0, 1)
            figures["tables"]["consent_event_summaries"] = {"rows": rows, "seconds": seconds}
            print(
                f"  {'consent_event_summaries':22} {rows:>10,} rows  {seconds:6.1f} s", flush=True
            )
    with engine.begin() as connection:
        last = connection.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
        head = AuditChainHead.__table__
        connection.execute(head.delete())
        connection.execute(head.insert().values(id=1, last_seq=last or 0, last_hash="0" * 64))
        # Rows the app wrote before the seed (creating the bench users) get sequence numbers
        # after the seeded ones when the next request seals them.
        connection.execute(
            text(
                "SELECT setval(pg_get_serial_sequence('audit_events', 'id'), "
                "(SELECT max(id) FROM audit_events))"
            )
        )
    figures["insert_seconds"] = round(time.perf_counter() - started, 1)
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE)")
    figures["vacuum_analyze_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  VACUUM ANALYZE {figures['vacuum_analyze_seconds']} s", flush=True)
    with engine.connect() as connection:
        figures["database_bytes"] = connection.execute(
            text("SELECT pg_database_size(current_database())")
        ).scalar_one()
    engine.dispose()
    return figures


def migrate_kept(url: str) -> dict[str, Any]:
    """A kept database to head; VACUUM ANALYZE when a migration ran (a backfill's UPDATE
    leaves a dead version of every row it filled)."""
    from sqlalchemy import create_engine

    from referral_api.migrate import current_revision, head_revision, upgrade

    engine = create_engine(url)
    try:
        before = current_revision(engine)
        if before == head_revision():
            return {"from": before, "seconds": 0}
        t0 = time.perf_counter()
        upgrade(url)
        seconds = round(time.perf_counter() - t0, 1)
        print(f"migrated {before} -> {head_revision()} in {seconds} s", flush=True)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM (ANALYZE)")
        return {"from": before, "to": head_revision(), "seconds": seconds}
    finally:
        engine.dispose()


def seed_organisations(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(ORGS), {"now": datetime.now(UTC)})
    engine.dispose()


def ensure_dpos(app: Any) -> dict[str, str]:
    """A DPO of controlling organisation 1 (cases 13-25, 793-805, …) and one of the
    platform organisation."""
    import hashlib
    import uuid

    from sqlalchemy import select

    from referral_api.access.actor import Actor
    from referral_api.access.roles import Role
    from referral_api.admin import service
    from referral_api.auth.models import Organisation, User
    from referral_api.extensions import db, hasher

    emails = {}
    with app.app_context(), db.session_factory_for(app)() as session:
        for key, number in (("org", 1), ("platform", 100)):
            org_id = uuid.UUID(hashlib.md5(f"org-{number}".encode()).hexdigest())  # noqa: S324
            email = f"bench-dpo-{key}@bench.example"
            if session.scalars(select(User).where(User.email == email)).first() is None:
                org = session.get(Organisation, org_id)
                service.create_user(
                    session,
                    Actor.system(),
                    hasher,
                    org,
                    email=email,
                    display_name=f"Bench DPO {key}",
                    role=Role.DPO,
                    password=PASSWORD,
                )
            emails[key] = email
        session.commit()
    return emails


# ---- running the reports ------------------------------------------------------------------


def _token(client: Any, email: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def _timed(client: Any, url: str, headers: dict[str, str], params: dict[str, Any]) -> Any:
    t0 = time.perf_counter()
    response = client.get(url, query_string=params, headers=headers)
    body = response.get_data()  # a CSV export streams: time it to the last byte
    elapsed = time.perf_counter() - t0
    assert response.status_code == 200, (url, response.status_code, body[:300])
    response.close()
    return elapsed, body, response


def run_reports(app: Any, emails: dict[str, str], repeat: int) -> list[dict[str, Any]]:
    import hashlib
    import uuid

    client = app.test_client()
    headers = {key: _token(client, email) for key, email in emails.items()}
    case_13 = str(uuid.UUID(hashlib.md5(b"case-13").hexdigest()))  # noqa: S324
    reports: list[tuple[str, dict[str, Any], bool]] = [
        ("consent-summary", {}, False),
        ("consents-expiring", {"within_days": 30}, True),
        ("processing-without-basis", {}, True),
        ("overrides", {}, True),
        ("disclosures", {}, True),
        ("disclosures", {"recipient_org_type": "police"}, True),
        ("access-log", {"case_id": case_13}, True),
        ("erasures", {}, True),
        ("quality", {}, True),
    ]
    results = []
    for who in ("org", "platform"):
        for name, params, lists in reports:
            url = f"/api/v1/dpo/reports/{name}"
            row: dict[str, Any] = {"report": name, "params": params, "dpo": who}
            timings = []
            for _ in range(repeat):
                elapsed, body, response = _timed(client, url, headers[who], params)
                timings.append(elapsed)
            row["json_first_page_s"] = round(statistics.median(timings), 3)
            row["json_rows"] = len(json.loads(body))
            row["json_has_next"] = "Link" in response.headers
            elapsed, body, _ = _timed(client, url, headers[who], {**params, "format": "csv"})
            row["csv_all_s"] = round(elapsed, 3)
            row["csv_rows"] = body.count(b"\r\n") - 1
            row["csv_bytes"] = len(body)
            row["lists"] = lists
            results.append(row)
            print(
                f"  {who:8} {name:25} {json.dumps(params):35} JSON {row['json_first_page_s']:6.3f}"
                f" s ({row['json_rows']} rows)  CSV {row['csv_all_s']:7.3f} s"
                f" ({row['csv_rows']:,} rows)",
                flush=True,
            )
        elapsed, _, _ = _timed(client, "/api/v1/dpo/ropa", headers[who], {})
        results.append({"report": "ropa", "params": {}, "dpo": who, "json_first_page_s": elapsed})
    return results


def server_settings() -> dict[str, str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(common.db_url("postgres"))
    names = ("server_version", "shared_buffers", "max_parallel_workers_per_gather", "jit")
    try:
        with engine.connect() as connection:
            return {name: connection.execute(text(f"SHOW {name}")).scalar_one() for name in names}
    finally:
        engine.dispose()


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| DPO | report | filters | JSON first page | rows | CSV, every row | CSV rows |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in results:
        filters = ", ".join(f"{k}={v}" for k, v in row["params"].items() if k != "case_id")
        if "case_id" in row["params"]:
            filters = "one case"
        csv = f"{row['csv_all_s']:.2f} s" if "csv_all_s" in row else "—"
        csv_rows = f"{row['csv_rows']:,}" if "csv_rows" in row else "—"
        rows = row.get("json_rows", "—")
        lines.append(
            f"| {row['dpo']} | {row['report']} | {filters} | {row['json_first_page_s']:.3f} s"
            f" | {rows} | {csv} | {csv_rows} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="JSON runs per report (median)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="use a database kept before")
    args = parser.parse_args()

    from referral_api.migrate import upgrade

    url = common.db_url(DB_NAME)
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    if not args.reuse:
        common.drop_database(DB_NAME)
        common.create_database(DB_NAME)
        upgrade(url)
    else:
        figures["migrated"] = migrate_kept(url)
    os.environ["REFERRAL_API_AUDIT_SEAL_SECONDS"] = "0"
    # The seed's notice versions (one consent in 97 carries an unknown one).
    os.environ["REFERRAL_API_NOTICE_VERSIONS"] = "2026-01"
    app = common.make_app(database=DB_NAME, keyring="keyring-dpo.json")
    common.quiet_app_logs()
    try:
        emails = ensure_dpos(app) if args.reuse else None
        if not args.reuse:
            print(f"seeding {args.cases:,} cases into {DB_NAME}", flush=True)
            seed_organisations(url)
            emails = ensure_dpos(app)
            figures["seed"] = seed(app, url, args.cases, args.workers)
        print("reports", flush=True)
        assert emails is not None
        figures["reports"] = run_reports(app, emails, args.repeat)
    finally:
        if not args.keep:
            from referral_api.extensions import db

            db.engine_for(app).dispose()
            common.drop_database(DB_NAME)
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    figures["postgresql"] = server_settings()
    figures["cpu_count"] = os.cpu_count()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / "dpo_reports.json").write_text(json.dumps(figures, indent=2, default=str))
    print()
    print(markdown(figures["reports"]))
    print(f"\ntotal {figures['total_seconds']} s")


if __name__ == "__main__":
    main()
