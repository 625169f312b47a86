"""A subject export (`POST /cases/{id}/export`) of a case with a long access log.

Every list page that shows a case writes an audit row on it, so a case's access log grows
with its age and its organisation's traffic, and the export copies all of it. This builds a
throw-away PostgreSQL database (as `profile_requests.py scratch --pg` does), seeds one
encrypted case, inserts --rows audit rows on it (INSERT … SELECT, shaped like the rows
requests write), and times `rights.service.build_export` plus the JSON the export stores,
with the Python heap's peak during it (tracemalloc). Figures are printed as JSON.

    .venv/bin/python bench/subject_export.py --rows 200000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import profile_requests

ROWS = """
INSERT INTO audit_events (occurred_at, actor_type, actor_id, actor_org_id, actor_role,
    action, resource_type, resource_id, case_id, categories, decision, request_id, details)
SELECT :now - (:hi - i) * interval '1 second', 'user', md5('user-' || (i % 50))::uuid,
    CAST(:org AS uuid), 'caseworker',
    CASE i % 4 WHEN 0 THEN 'case:read' ELSE 'case:list' END, 'case', CAST(:case AS text),
    CAST(:case AS uuid), 'identity', 'allow', md5('request-' || i),
    CASE i % 4 WHEN 0 THEN '{"changed":["risk_level"],"version":' || (i % 7) || '}' END
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS i
"""


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from seed_cases import seed_range

    from referral_api.cases.models import Case
    from referral_api.extensions import db
    from referral_api.rights.service import build_export

    folder = Path(tempfile.mkdtemp(prefix="referral-export-"))
    url, drop = profile_requests._scratch_database(True, folder)
    try:
        app = profile_requests._scratch_app(url, folder)
        org_id, _ = common.ensure_org_and_user(app)
        seed_range(app, org_id, 0, 1)
        case_id = common.person(0)["id"]
        params = {"now": datetime.now(UTC), "org": str(org_id), "case": str(case_id)}
        started = time.perf_counter()
        common.run_split(url, ROWS, params, args.rows, 2)
        inserted = time.perf_counter() - started

        def export(traced: bool) -> dict[str, Any]:
            with app.app_context(), db.session_factory_for(app)() as session:
                case = session.get(Case, case_id)
                if traced:
                    tracemalloc.start()
                t0 = time.perf_counter()
                document = json.dumps(build_export(session, case), ensure_ascii=False)
                seconds = time.perf_counter() - t0
                figures = {"seconds": round(seconds, 2), "document_mib": _mib(len(document))}
                if traced:
                    figures["peak_heap_mib"] = _mib(tracemalloc.get_traced_memory()[1])
                    tracemalloc.stop()
                session.rollback()
            return figures

        # Timed without tracemalloc (it slows allocation several times), then once traced.
        rounds = [export(traced=False) for _ in range(args.rounds)] + [export(traced=True)]
        print(
            json.dumps(
                {
                    "access_log_rows": args.rows,
                    "insert_seconds": round(inserted, 1),
                    "rounds": rounds,
                },
                indent=1,
            )
        )
    finally:
        drop()


if __name__ == "__main__":
    main()
