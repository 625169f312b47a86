"""The key-rotation sweeps over a seeded bench database: how long they take, whether each
batch costs the same at the end as at the start, and how long their transactions hold locks.

`--sweep index` runs what `referral-api keys rotate-index` runs (`start_index_rotation`, or
resuming an unfinished rotation, then `backfill_index`); `--sweep case-keys` what
`keys rotate-case-keys` runs (`rotate_case_keys` under a rotation job); `--sweep org-keys`
what `keys rotate-org-keys` runs (`rotate_org_keys`: new organisation keys, every data key
re-wrapped; its progress counts data keys). In process, with the
real app against BENCH_DB (default referral_bench; seed it first); every transaction and
every statement over 0.3 s is timed, and the time per 10,000 cases printed.

    BENCH_DB=referral_bench_idx .venv/bin/python bench/seed_cases.py --count 100000 --fresh
    BENCH_DB=referral_bench_idx .venv/bin/python bench/rotate_sweeps.py --sweep index
    BENCH_DB=referral_bench_idx .venv/bin/python bench/rotate_sweeps.py --sweep case-keys
    BENCH_DB=referral_bench_idx .venv/bin/python bench/rotate_sweeps.py --sweep org-keys
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", choices=["index", "case-keys", "org-keys"], default="index")
    parser.add_argument("--batch-size", type=int, help="default: the CLI's (500; 200; 1000)")
    args = parser.parse_args()

    from sqlalchemy import event, func, select

    app = common.make_app(database=common.DB_NAME)
    common.quiet_app_logs()
    from referral_api.cases.models import CaseSearchIndex
    from referral_api.crypto import rotation
    from referral_api.extensions import db

    engine = db.engine_for(app)
    begun: dict[int, float] = {}
    transactions: list[float] = []

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        begun[id(connection)] = time.perf_counter()

    @event.listens_for(engine, "commit")
    def _commit(connection: Any) -> None:
        transactions.append(time.perf_counter() - begun.pop(id(connection), time.perf_counter()))

    @event.listens_for(engine, "before_cursor_execute")
    def _before(connection: Any, *_: Any) -> None:
        connection.info["statement_started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        took = time.perf_counter() - connection.info.pop("statement_started", time.perf_counter())
        if took > 0.3:
            print(f"  statement of {took:.2f} s: {' '.join(statement.split())[:100]}", flush=True)

    counted = {"cases": 0, "at": time.perf_counter()}
    per_10k: list[float] = []

    def progress(cases: int) -> None:
        before = counted["cases"]
        counted["cases"] += cases
        if counted["cases"] // 10_000 > before // 10_000:
            now = time.perf_counter()
            per_10k.append(round(now - counted["at"], 1))
            counted["at"] = now
            print(
                f"  {counted['cases']:>9,} cases, {per_10k[-1]} s for the last 10,000", flush=True
            )

    with app.app_context():
        factory = db.session_factory_for(app)
        with factory() as session:
            entries = session.scalar(select(func.count()).select_from(CaseSearchIndex))
            if args.sweep == "index":
                created = rotation.start_index_rotation(session)
                print(f"{entries:,} index entries; {created} organisations on a new key")
            elif args.sweep == "case-keys":
                job = rotation.open_rotation_job(session, "case-keys")
                started_at, job_id = job.started_at, job.id
            session.commit()
        transactions.clear()
        started = time.perf_counter()
        if args.sweep == "index":
            filled = rotation.backfill_index(
                factory, batch_size=args.batch_size or 500, progress=progress
            )
        elif args.sweep == "case-keys":
            filled = rotation.rotate_case_keys(
                factory, started_at=started_at, batch_size=args.batch_size or 200, progress=progress
            )
            rotation.finish_rotation_job(factory, job_id)
        else:
            _, filled = rotation.rotate_org_keys(
                factory, batch_size=args.batch_size or 1000, progress=progress
            )
        seconds = time.perf_counter() - started
    figures = {
        "sweep": args.sweep,
        "cases": filled,
        "seconds_per_10000_cases": per_10k,
        "seconds": round(seconds, 1),
        "cases_per_s": round(filled / seconds) if seconds else None,
        "transactions": len(transactions),
        "median_transaction_s": round(statistics.median(transactions), 2) if transactions else None,
        "longest_transaction_s": round(max(transactions), 2) if transactions else None,
    }
    common.write_json(common.RESULTS / f"rotate_{args.sweep}.json", figures)
    print(figures)


if __name__ == "__main__":
    main()
