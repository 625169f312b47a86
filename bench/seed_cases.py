"""Seed the bench database with encrypted cases through the real model path.

Every case is built as `referral_api.cases.demo` builds its demo cases: a `Case` model whose
personal attributes are `EncryptedField`s, inserted by `cases.models.insert_cases` (as
`POST /cases` inserts one), which creates a per-case data key (wrapped by the organisation
key), encrypts each field under its HKDF subkey with AES-256-GCM (ciphertext format 2) and
writes the blind-index entries and the first status-history row. Batches are
committed one transaction each, by several processes at once (one per core by default).

    .venv/bin/python bench/seed_cases.py --count 100000            # seed (migrates first)
    .venv/bin/python bench/seed_cases.py --profile 2000            # cProfile one process

Prints the seeding rate (cases/s) and writes bench/results/seed.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

_APP: Any = None
_ORG_ID: Any = None


def build_case(index: int, org_id: Any) -> Any:
    """One synthetic case as a model instance; plaintext set through EncryptedField."""
    from referral_api.cases.layout import CATEGORY_FIELDS
    from referral_api.cases.models import Case, CaseStatus, CaseType, NrmStage, RiskLevel
    from referral_api.cases.service import new_case_code

    p = common.person(index)
    case = Case(
        id=p["id"],
        case_code=new_case_code(p["case_type"]),
        org_id=org_id,
        case_type=CaseType(p["case_type"]),
        status=CaseStatus(p["status"]),
        risk_level=RiskLevel(p["risk_level"]),
        nrm_stage=NrmStage(p["nrm_stage"]),
    )
    for category, fields in CATEGORY_FIELDS.items():
        values = p.get(category.value) or {}
        for key, attribute in fields.items():
            if key in values:
                setattr(case, attribute, values[key])
    return case


FLUSH_EVERY = int(os.environ.get("BENCH_SEED_FLUSH_EVERY", "25"))


def seed_range(app: Any, org_id: Any, start: int, stop: int) -> int:
    """Insert cases [start, stop) in one committed transaction, FLUSH_EVERY cases per
    `insert_cases` call (the application's own path for new cases: one INSERT per table
    for each batch, the blind-index entries in one statement)."""
    from referral_api.cases.models import insert_cases
    from referral_api.cases.service import committed_under_free_codes
    from referral_api.extensions import db

    def insert_range() -> None:
        for first in range(start, stop, FLUSH_EVERY):
            last = min(first + FLUSH_EVERY, stop)
            insert_cases(
                session, [build_case(i, org_id) for i in range(first, last)], actor_id=None
            )

    # A random case code already taken: the whole range again, under new codes.
    with app.app_context(), db.session_factory_for(app)() as session:
        committed_under_free_codes(session, insert_range)
    return stop - start


def _init_worker(org_id: Any) -> None:
    global _APP, _ORG_ID
    common.quiet_app_logs()
    _APP = common.make_app()
    common.quiet_app_logs()
    _ORG_ID = org_id


def _work(bounds: tuple[int, int]) -> int:
    return seed_range(_APP, _ORG_ID, *bounds)


def _ready(_: int) -> int:
    return os.getpid()


def prepare(*, fresh: bool) -> tuple[Any, Any, Any]:
    """Create (or reuse) and migrate the bench database; the bench org and caseworker."""
    from referral_api.migrate import upgrade

    if fresh and common.database_exists():
        common.drop_database()
    if not common.database_exists():
        common.create_database()
    upgrade(common.db_url())
    app = common.make_app()
    common.quiet_app_logs()
    org_id, user_id = common.ensure_org_and_user(app)
    return app, org_id, user_id


def count_cases(app: Any, org_id: Any) -> int:
    from sqlalchemy import func, select

    from referral_api.cases.models import Case
    from referral_api.extensions import db

    with db.session_factory_for(app)() as session:
        return int(
            session.scalar(select(func.count()).select_from(Case).where(Case.org_id == org_id)) or 0
        )


def seed(count: int, workers: int, batch: int, *, fresh: bool = False) -> dict[str, Any]:
    app, org_id, _ = prepare(fresh=fresh)
    existing = count_cases(app, org_id)
    if existing >= count:
        print(f"seed: {existing} cases already present; reusing them", file=sys.stderr)
        return {"reused": True, "cases": existing}
    if existing:
        raise SystemExit(
            f"seed: the bench database holds {existing} of {count} cases (an interrupted "
            "seed?); rerun with --fresh"
        )
    ranges = [(s, min(s + batch, count)) for s in range(0, count, batch)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(org_id,)) as pool:
        # Start-up (imports, create_app) is not seeding: wait until every worker is ready.
        pool.map(_ready, range(workers * 4), chunksize=1)
        started = time.perf_counter()
        done = 0
        next_report = 10_000
        for n in pool.imap_unordered(_work, ranges, chunksize=1):
            done += n
            if done >= next_report:
                elapsed = time.perf_counter() - started
                print(
                    f"seed: {done:>7} cases, {done / elapsed:,.0f} cases/s",
                    file=sys.stderr,
                    flush=True,
                )
                next_report += 10_000
        elapsed = time.perf_counter() - started
    result = {
        "reused": False,
        "cases": count,
        "workers": workers,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "cases_per_second": round(count / elapsed, 1),
    }
    # Planner statistics for the queries that follow.
    from sqlalchemy import text

    from referral_api.extensions import db

    engine = db.engine_for(app).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("VACUUM ANALYZE"))
    print(
        f"seed: {count} encrypted cases in {elapsed:.1f} s = {count / elapsed:,.0f} cases/s "
        f"({workers} processes, {batch} per transaction)",
        file=sys.stderr,
    )
    common.write_json(common.RESULTS / "seed.json", result)
    return result


def profile(count: int, batch: int) -> None:
    """cProfile `count` cases seeded in this one process (the same code path)."""
    app, org_id, _ = prepare(fresh=False)
    # Indices far from the seeded ones and after every earlier profile's (distinct ids), so
    # the profile can be repeated against the same database.
    base = 50_000_000 + count_cases(app, org_id)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for start in range(base, base + count, batch):
        seed_range(app, org_id, start, min(start + batch, base + count))
    profiler.disable()
    elapsed = time.perf_counter() - started
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(60)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(str(common.RESULTS / "seed.prof"))
    (common.RESULTS / "seed-profile.txt").write_text(out.getvalue(), encoding="utf-8")
    print(out.getvalue())
    print(
        f"profiled {count} cases in {elapsed:.1f} s ({count / elapsed:,.0f} cases/s in one "
        "process, under cProfile); these cases stay in the database",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch", type=int, default=250, help="cases per transaction")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the database")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile N cases instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.batch)
    else:
        seed(args.count, args.workers, args.batch, fresh=args.fresh)


if __name__ == "__main__":
    main()
