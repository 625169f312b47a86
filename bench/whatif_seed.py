"""What the suggested key-service changes would buy the encrypted write path (evidence only).

Seeds cases in one process through the real model path, alternating between the code as it
is and the code with three changes *monkeypatched in this process only* (the application
code is not modified):

A. `KeyService.current_org_key_version`: remember the org's current key version for the
   session (today: a `SELECT max(version)` plus a scan of `session.new`, per case);
B. `KeyService.index_versions`: the same for the writable blind-index key versions
   (today: a `SELECT` plus a scan of `session.new`, per case);
C. `search.refresh_blind_index`: no `DELETE FROM case_search_index` for a case that is
   being inserted (it cannot have entries yet).

    .venv/bin/python bench/whatif_seed.py --cases 1500 --rounds 3

Prints CPU ms and wall ms per case for both variants (the cases stay in the database).

A, B and C have since been applied to the application (KeyService memoises both versions per
transaction; refresh_blind_index skips the DELETE for a pending case), so both variants now
run the same code: the difference between them is the measurement's noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import seed_cases


@contextmanager
def patched() -> Any:
    from sqlalchemy import inspect

    from referral_api.cases import models, search
    from referral_api.crypto.keys import KeyService

    original_org = KeyService.current_org_key_version
    original_index = KeyService.index_versions
    original_refresh = search.refresh_blind_index
    original_delete = models.delete_index_entries

    def current_org_key_version(self: Any, org_id: Any) -> int:
        cache = self.session.info.setdefault("bench_org_key_version", {})
        if org_id not in cache:
            cache[org_id] = original_org(self, org_id)
        return cache[org_id]  # type: ignore[no-any-return]

    def index_versions(self: Any, org_id: Any, *, for_query: bool) -> list[int]:
        cache = self.session.info.setdefault("bench_index_versions", {})
        key = (org_id, for_query)
        if key not in cache:
            cache[key] = original_index(self, org_id, for_query=for_query)
        return list(cache[key])

    def refresh_blind_index(session: Any, crypto: Any, case: Any) -> None:
        if inspect(case).pending:
            models.delete_index_entries = lambda *a, **k: None
            try:
                original_refresh(session, crypto, case)
            finally:
                models.delete_index_entries = original_delete
        else:
            original_refresh(session, crypto, case)

    KeyService.current_org_key_version = current_org_key_version  # type: ignore[method-assign]
    KeyService.index_versions = index_versions  # type: ignore[method-assign]
    search.refresh_blind_index = refresh_blind_index
    try:
        yield
    finally:
        KeyService.current_org_key_version = original_org  # type: ignore[method-assign]
        KeyService.index_versions = original_index  # type: ignore[method-assign]
        search.refresh_blind_index = original_refresh


def measure(app: Any, org_id: Any, start: int, cases: int) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for first in range(start, start + cases, 250):
        seed_cases.seed_range(app, org_id, first, min(first + 250, start + cases))
    return (
        1000 * (time.process_time() - cpu0) / cases,
        1000 * (time.perf_counter() - wall0) / cases,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="what-if for the encrypted write path")
    parser.add_argument("--cases", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args()
    app, org_id, _ = seed_cases.prepare(fresh=False)
    base = 70_000_000
    rows: dict[str, list[tuple[float, float]]] = {"as is": [], "with A+B+C": []}
    for _ in range(args.rounds):
        rows["as is"].append(measure(app, org_id, base, args.cases))
        base += args.cases
        with patched():
            rows["with A+B+C"].append(measure(app, org_id, base, args.cases))
        base += args.cases
    result = {
        name: {
            "cpu_ms_per_case": round(min(c for c, _ in values), 3),
            "wall_ms_per_case": round(min(w for _, w in values), 3),
        }
        for name, values in rows.items()
    }
    result["cases_per_round"] = args.cases  # type: ignore[assignment]
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
