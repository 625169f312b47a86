"""`keys rotate-index` over a seeded bench database: how long the backfill takes and how long
its transactions hold their locks.

Runs `rotation.start_index_rotation` and `rotation.backfill_index` in process (what
`referral-api keys rotate-index` runs) with the real app against BENCH_DB (default
referral_bench; seed it first), timing every transaction over 0.5 s and every statement over
0.3 s. Resumes an unfinished rotation instead of starting one.

    BENCH_DB=referral_bench_idx .venv/bin/python bench/seed_cases.py --count 100000 --fresh
    BENCH_DB=referral_bench_idx .venv/bin/python bench/rotate_index.py
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
    parser.add_argument("--batch-size", type=int, default=500)
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

    with app.app_context():
        factory = db.session_factory_for(app)
        with factory() as session:
            entries = session.scalar(select(func.count()).select_from(CaseSearchIndex))
            created = rotation.start_index_rotation(session)
            session.commit()
        print(f"{entries:,} index entries; {created} organisations on a new index key", flush=True)
        transactions.clear()
        started = time.perf_counter()
        filled = rotation.backfill_index(factory, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
    figures = {
        "cases_indexed": filled,
        "seconds": round(seconds, 1),
        "cases_per_s": round(filled / seconds) if seconds else None,
        "transactions": len(transactions),
        "median_transaction_s": round(statistics.median(transactions), 2) if transactions else None,
        "longest_transaction_s": round(max(transactions), 2) if transactions else None,
    }
    common.write_json(common.RESULTS / "rotate_index.json", figures)
    print(figures)


if __name__ == "__main__":
    main()
