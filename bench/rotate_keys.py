"""Root-key rotation rate: how fast `keys rotate-root` re-wraps keys (keys/s).

Root rotation re-wraps organisation keys and blind-index keys (each org has one of each per
version); case data keys are wrapped by the org key and are not touched. A real deployment
has a few dozen organisations, which finish in milliseconds, so to measure a rate this adds
N/2 synthetic organisations, each with a properly wrapped org key and index key (N wrapped
keys in all), then times:

1. `referral_api.crypto.rotation.rotate_root` in process (new root version + re-wrap every
   key in committed batches of 5,000: Core select by keyset, one UPDATE per batch) → keys/s;
2. the `referral-api keys rotate-root` command end to end (process start, app start, the
   same work, the audit row) → wall seconds and keys/s, and the rate the command itself
   reports for the re-wrapping (without its start-up).

It runs in a database and keyring of its own (`referral_bench_rotation`, dropped at the end):
rotation touches only `org_keys` and `index_keys`, so the 100,000 cases are irrelevant to it,
and deleting 25,000 organisations next to them would be slow (`cases.org_id` has no index).
Afterwards every key must unwrap under the new root version.

    .venv/bin/python bench/rotate_keys.py --keys 50000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

PREFIX = "rotation-bench-"


def add_synthetic_orgs(app: Any, orgs: int) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from sqlalchemy import insert

    from referral_api.auth.models import Organisation
    from referral_api.cases.search import default_plan
    from referral_api.crypto.keys import _index_key_aad, _org_key_aad
    from referral_api.crypto.models import IndexKey, OrgKey
    from referral_api.db import utcnow
    from referral_api.extensions import db

    provider = app.extensions["referral_api.crypto"].provider
    root = provider.current_version()
    plan = json.dumps(default_plan(1_000_000), sort_keys=True)
    now = utcnow()
    with db.session_factory_for(app)() as session:
        for start in range(0, orgs, 5000):
            ids = [uuid.uuid4() for _ in range(min(5000, orgs - start))]
            session.execute(
                insert(Organisation),
                [
                    {
                        "id": i,
                        "name": f"{PREFIX}{i.hex}",
                        "org_type": "ngo",
                        "active": True,
                        "created_at": now,
                        "updated_at": now,
                        "version": 1,
                    }
                    for i in ids
                ],
            )
            session.execute(
                insert(OrgKey),
                [
                    {
                        "org_id": i,
                        "version": 1,
                        "root_version": root,
                        "wrapped_key": provider.wrap(AESGCM.generate_key(256), _org_key_aad(i, 1)),
                        "created_at": now,
                    }
                    for i in ids
                ],
            )
            session.execute(
                insert(IndexKey),
                [
                    {
                        "org_id": i,
                        "version": 1,
                        "root_version": root,
                        "state": "active",
                        "plan": plan,
                        "wrapped_key": provider.wrap(
                            AESGCM.generate_key(256), _index_key_aad(i, 1)
                        ),
                        "created_at": now,
                    }
                    for i in ids
                ],
            )
        session.commit()


def key_counts(app: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from referral_api.crypto.models import IndexKey, OrgKey
    from referral_api.extensions import db

    with db.session_factory_for(app)() as session:
        return {
            "org_keys": int(session.scalar(select(func.count()).select_from(OrgKey)) or 0),
            "index_keys": int(session.scalar(select(func.count()).select_from(IndexKey)) or 0),
        }


def verify(app: Any) -> dict[str, Any]:
    """Every key is wrapped under the current root and a sample unwraps."""
    from sqlalchemy import func, select

    from referral_api.crypto.keys import KeyCache, KeyService
    from referral_api.crypto.models import IndexKey, OrgKey
    from referral_api.extensions import db

    crypto = app.extensions["referral_api.crypto"]
    current = crypto.provider.current_version()
    with db.session_factory_for(app)() as session:
        stale = sum(
            int(
                session.scalar(select(func.count()).select_from(m).where(m.root_version != current))
                or 0
            )
            for m in (OrgKey, IndexKey)
        )
        keys = KeyService(session, crypto.provider, KeyCache())
        sample = session.scalars(select(OrgKey).order_by(func.random()).limit(200)).all()
        for row in sample:
            keys.org_key(row.org_id, row.version)
        isample = session.scalars(select(IndexKey).order_by(func.random()).limit(200)).all()
        for irow in isample:
            keys.index_key(irow.org_id, irow.version)
    return {"root_version": current, "stale_keys": stale, "sample_unwrapped": 400}


PROFILE = False
DATABASE = f"{common.DB_NAME}_rotation"
KEYRING = "rotation-keyring.json"


def run(keys: int) -> dict[str, Any]:
    from referral_api.migrate import upgrade

    common.drop_database(DATABASE)
    (common.WORKDIR / KEYRING).unlink(missing_ok=True)
    common.create_database(DATABASE)
    try:
        upgrade(common.db_url(DATABASE))
        return _measure(keys)
    finally:
        common.drop_database(DATABASE)
        (common.WORKDIR / KEYRING).unlink(missing_ok=True)
        (common.WORKDIR / (KEYRING + ".lock")).unlink(missing_ok=True)


def _measure(keys: int) -> dict[str, Any]:
    from referral_api.crypto import rotation
    from referral_api.extensions import db

    env = {"database": DATABASE, "keyring": KEYRING}
    common.quiet_app_logs()
    app = common.make_app(**env)
    common.quiet_app_logs()
    common.ensure_org_and_user(app)
    with app.app_context():
        added = time.perf_counter()
        add_synthetic_orgs(app, keys // 2)
        setup_seconds = time.perf_counter() - added
        counts = key_counts(app)
        total_keys = counts["org_keys"] + counts["index_keys"]

        profiler = cProfile.Profile() if PROFILE else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        version, rewrapped = rotation.rotate_root(db.session_factory_for(app), resume=False)
        seconds = time.perf_counter() - started
        if profiler:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            (common.RESULTS / "rotation-profile.txt").write_text(out.getvalue())
        in_process = {
            "root_version": version,
            "keys_rewrapped": rewrapped,
            "seconds": round(seconds, 3),
            "keys_per_second": round(rewrapped / seconds, 1),
        }
        check1 = verify(app)

    started = time.perf_counter()
    completed = subprocess.run(
        [str(common.VENV_BIN / "referral-api"), "keys", "rotate-root"],
        env={**os.environ, **common.app_env(**env)},
        capture_output=True,
        text=True,
        check=False,
    )
    cli_seconds = time.perf_counter() - started
    reported = re.search(r"\(([\d,]+) keys/s\)", completed.stdout)
    cli = {
        "exit_code": completed.returncode,
        "stdout": completed.stdout.strip(),
        "stderr_tail": completed.stderr.strip()[-2000:] if completed.returncode else "",
        "wall_seconds_including_start_up": round(cli_seconds, 3),
        "keys_per_second_including_start_up": round(total_keys / cli_seconds, 1),
        "keys_per_second_reported": int(reported[1].replace(",", "")) if reported else None,
    }
    app2 = common.make_app(**env)
    common.quiet_app_logs()
    with app2.app_context():
        check2 = verify(app2)
    return {
        "synthetic_orgs": keys // 2,
        "wrapped_keys": total_keys,
        "key_counts": counts,
        "setup_seconds": round(setup_seconds, 1),
        "rotate_root_in_process": in_process,
        "verify_after_in_process": check1,
        "cli": cli,
        "verify_after_cli": check2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="root-key rotation rate")
    parser.add_argument("--keys", type=int, default=50_000, help="synthetic wrapped keys to add")
    parser.add_argument("--json", metavar="OUT.json")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process rotation")
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    result = run(args.keys)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
