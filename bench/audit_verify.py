"""Sealing and verifying a large audit chain on PostgreSQL.

Creates its own database (BENCH_AUDIT_DB, default referral_bench_audit), migrates it and
inserts --rows unsealed audit rows by INSERT … SELECT over generate_series (shaped like the
rows requests write: ids, codes, categories, a small JSON details on every third). Then, in
process with the real app (production settings):

1. seals them all (`audit.service.seal_all`, as `referral-api audit seal` does): rows/s;
2. verifies the whole chain (`verify_chain`, as `referral-api audit verify` does): rows/s;
3. verifies it through `GET /api/v1/audit/verify` as the platform's DPO, page by page (each
   answer's `last_seq`/`last_hash` passed back as `after_seq`/`after_hash`): seconds per
   page, which must stay well inside the workers' 30-s timeout, and in all.

Figures go to bench/results/audit_verify.json and are printed; the database is dropped at
the end unless --keep.

    .venv/bin/python bench/audit_verify.py                  # 1,000,000 rows
    .venv/bin/python bench/audit_verify.py --rows 200000 --skip-http
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

DB_NAME = os.environ.get("BENCH_AUDIT_DB", "referral_bench_audit")
PASSWORD = "bench-audit-password-not-secret"

ROWS = """
INSERT INTO audit_events (occurred_at, actor_type, actor_id, actor_org_id, actor_role,
    action, resource_type, resource_id, case_id, categories, purpose, decision, request_id,
    details)
SELECT :now - (:hi - i) * interval '1 second', 'user', md5('user-' || (i % 500))::uuid,
    md5('org-' || (i % 60))::uuid, 'caseworker',
    CASE i % 3 WHEN 0 THEN 'case:read' WHEN 1 THEN 'case:list' ELSE 'case:update' END,
    'case', md5('case-' || (i / 3))::uuid::text, md5('case-' || (i / 3))::uuid,
    CASE i % 3 WHEN 1 THEN NULL ELSE 'identity,contact,situation' END,
    CASE i % 3 WHEN 0 THEN 'case_management' END, 'allow', md5('request-' || i),
    CASE i % 3 WHEN 2 THEN '{"changed":["risk_level","status"],"version":' || (i % 7) || '}' END
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i
"""


def insert_rows(url: str, n: int, workers: int = 2) -> float:
    """The rows, unsealed, inserted by `workers` connections in parallel; seconds."""
    from sqlalchemy import create_engine

    started = time.perf_counter()
    common.run_split(url, ROWS, {"now": datetime.now(UTC)}, n, workers)
    engine = create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE) audit_events")
    engine.dispose()
    return time.perf_counter() - started


def platform_dpo(app: Any) -> None:
    from referral_api.access.actor import Actor
    from referral_api.access.roles import Role
    from referral_api.admin import service
    from referral_api.auth.models import Organisation, OrgType
    from referral_api.extensions import db, hasher

    with app.app_context(), db.session_factory_for(app)() as session:
        org = Organisation(name="Bench platform", org_type=OrgType.PLATFORM, active=True)
        session.add(org)
        session.flush()
        service.create_user(
            session,
            Actor.system(),
            hasher,
            org,
            email="bench-audit-dpo@bench.example",
            display_name="Bench audit DPO",
            role=Role.DPO,
            password=PASSWORD,
        )
        session.commit()


def verify_over_http(app: Any) -> dict[str, Any]:
    client = app.test_client()
    login = client.post(
        "/api/v1/auth/login",
        json={"email": "bench-audit-dpo@bench.example", "password": PASSWORD},
    )
    assert login.status_code == 200, login.get_data(as_text=True)
    headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    pages: list[float] = []
    params: dict[str, Any] = {}
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        response = client.get("/api/v1/audit/verify", query_string=params, headers=headers)
        pages.append(time.perf_counter() - t0)
        body = response.get_json()
        assert response.status_code == 200 and body["ok"], (response.status_code, body)
        print(
            f"  page {len(pages):3}: {pages[-1]:6.2f} s, verified to seq {body['last_seq']:,}",
            flush=True,
        )
        if body["complete"]:
            break
        params = {"after_seq": body["last_seq"], "after_hash": body["last_hash"]}
    return {
        "pages": len(pages),
        "slowest_page_s": round(max(pages), 2),
        "total_s": round(time.perf_counter() - started, 1),
        "rows_verified_to": body["last_seq"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()

    from referral_api.migrate import upgrade

    common.drop_database(DB_NAME)
    common.create_database(DB_NAME)
    url = common.db_url(DB_NAME)
    try:
        upgrade(url)
        app = common.make_app(database=DB_NAME)
        common.quiet_app_logs()
        from referral_api.audit import service
        from referral_api.extensions import db

        figures: dict[str, Any] = {"rows": args.rows}
        print(f"inserting {args.rows:,} unsealed audit rows", flush=True)
        figures["insert_s"] = round(insert_rows(url, args.rows), 1)
        factory = db.session_factory_for(app)
        with app.app_context():
            t0 = time.perf_counter()
            sealed = service.seal_all(factory, batch_size=5000)
            seconds = time.perf_counter() - t0
            figures["seal"] = {
                "rows": sealed,
                "s": round(seconds, 1),
                "rows_per_s": round(sealed / seconds),
            }
            print(f"sealed {sealed:,} rows in {seconds:.1f} s", flush=True)
            with factory() as session:
                t0 = time.perf_counter()
                result = service.verify_chain(session)
                seconds = time.perf_counter() - t0
            assert result.ok, result
            figures["verify"] = {
                "rows": result.checked,
                "s": round(seconds, 1),
                "rows_per_s": round(result.checked / seconds),
            }
            print(f"verified {result.checked:,} rows in {seconds:.1f} s (in process)", flush=True)
        if not args.skip_http:
            platform_dpo(app)
            figures["http"] = verify_over_http(app)
            print(f"GET /audit/verify: {figures['http']}", flush=True)
        common.write_json(common.RESULTS / "audit_verify.json", figures)
        print(figures)
    finally:
        if not args.keep:
            common.drop_database(DB_NAME)


if __name__ == "__main__":
    main()
