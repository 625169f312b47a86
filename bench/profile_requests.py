"""Where a request's CPU goes: encryption vs everything else.

Drives GET /api/v1/cases/{id} (random seeded cases) or POST /api/v1/cases in-process through
`app.test_client()` against the bench database, with the production-mode app.

    # sampling: py-spy, only samples where the thread holds the GIL (on CPU; a thread
    # waiting for PostgreSQL releases it), then classify the stacks:
    py-spy record --gil -r 500 -f raw -o get.txt -- python bench/profile_requests.py get 3000
    python bench/profile_requests.py classify get.txt
    # deterministic: cProfile with a CPU-time clock, top functions and crypto entry points:
    python bench/profile_requests.py get 3000 --cprofile get.prof

A stack sample is charged to the first frame, walking from the leaf towards the root, that
belongs to a known component: `cryptography` (AES-GCM, HKDF, HMAC — called only from
referral_api.crypto), `hmac`/`hashlib` called from referral_api.crypto, or referral_api.crypto
itself (fields, key service, key cache, blind-index normalisation) → "crypto"; sqlalchemy or
psycopg → SQL; and so on. SQL issued *by* the key service (loading a wrapped case key) is
therefore counted as SQL, not as encryption. Samples outside `app.wsgi_app` (the test
client building requests) are the harness, not request CPU, and are left out.

`scratch` needs no bench database: it builds its own throw-away database (SQLite file in a
temporary folder, or a new database in the PostgreSQL server with `--pg`), a production-mode
app, one organisation with a caseworker and `--cases` encrypted cases, then measures CPU per
request and SQL statements per request for GET /cases/{id} and POST /cases (and, with
`--searches N`, exact-name searches for the seeded names with the most namesakes), unprofiled,
then under cProfile with `--prof-dir`, and drops everything:

    python bench/profile_requests.py scratch --gets 2000 --posts 500 [--searches 400] [--pg]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

MEASURED = "_measured_requests"


def _client_and_headers(app: Any) -> tuple[Any, dict[str, str]]:
    client = app.test_client()
    response = client.post(
        "/api/v1/auth/login", json={"email": common.USER_EMAIL, "password": common.USER_PASSWORD}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return client, {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def _measured_requests(client: Any, headers: dict[str, str], requests: list[Any]) -> int:
    ok = 0
    for method, path, body in requests:
        if method == "GET":
            response = client.get(path, headers=headers)
        else:
            response = client.post(path, headers=headers, json=body)
        ok += response.status_code in (200, 201)
        response.close()
    return ok


def _requests(phase: str, n: int, count: int, base: int) -> list[tuple[str, str, Any]]:
    rng = random.Random(phase)
    if phase == "get":
        return [
            ("GET", f"/api/v1/cases/{common.person(rng.randrange(count))['id']}", None)
            for _ in range(n)
        ]
    return [("POST", "/api/v1/cases", common.request_body(base + i)) for i in range(n)]


def drive(phase: str, n: int, count: int, cprofile_out: str | None) -> dict[str, Any]:
    common.quiet_app_logs()
    app = common.make_app()
    common.quiet_app_logs()
    client, headers = _client_and_headers(app)
    base = 30_000_000 if cprofile_out else 40_000_000
    # Warm-up: imports, connection pool, compiled-statement caches (not measured).
    warm = _requests(phase, 100, count, base + 5_000_000)
    _warm(client, headers, warm)
    work = _requests(phase, n, count, base)
    profiler = cProfile.Profile(time.process_time) if cprofile_out else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    ok = _measured_requests(client, headers, work)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    result = {
        "phase": phase,
        "requests": n,
        "ok": ok,
        "process_cpu_ms_per_request": round(1000 * cpu / n, 3),
        "wall_ms_per_request": round(1000 * wall / n, 3),
    }
    if profiler and cprofile_out:
        profiler.dump_stats(cprofile_out)
        result["cprofile"] = summarise_cprofile(cprofile_out)
    return result


def _warm(client: Any, headers: dict[str, str], requests: list[Any]) -> None:
    for method, path, body in requests:
        if method == "GET":
            client.get(path, headers=headers).close()
        else:
            client.post(path, headers=headers, json=body).close()


# ---- cProfile summary --------------------------------------------------------------------

_CRYPTO_ENTRY_POINTS = (
    ("referral_api/crypto/envelope.py", "encrypt"),
    ("referral_api/crypto/envelope.py", "decrypt"),
    ("referral_api/crypto/envelope.py", "field_subkey"),
    ("referral_api/crypto/envelope.py", "_schedule"),
    ("referral_api/crypto/keys.py", "wrap_data_key"),
    ("referral_api/crypto/keys.py", "unwrap_data_key"),
    ("referral_api/crypto/keys.py", "get"),
    ("referral_api/crypto/keys.py", "put"),
    ("referral_api/crypto/keyring.py", "unwrap"),
    ("referral_api/crypto/keyring.py", "wrap"),
    ("referral_api/crypto/blind_index.py", "blind_index"),
    ("referral_api/crypto/blind_index.py", "normalise_name"),
    ("referral_api/crypto/blind_index.py", "normalise_phone"),
    ("referral_api/crypto/blind_index.py", "normalise_document"),
    ("referral_api/crypto/fields.py", "decrypt_value"),
    ("referral_api/crypto/fields.py", "decrypt_fields"),
    ("referral_api/crypto/fields.py", "_seal_fields"),
    ("referral_api/crypto/fields.py", "__get__"),
    ("referral_api/crypto/fields.py", "_encrypt_pending"),
    ("referral_api/cases/search.py", "refresh_blind_index"),
)


def summarise_cprofile(path: str, top: int = 25) -> dict[str, Any]:
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = max(ct for (_cc, _nc, _tt, ct, _callers) in raw.values())
    by_tottime = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    entry_points = []
    for (file, line, name), (_cc, nc, _tt, ct, _callers) in raw.items():
        for suffix, function in _CRYPTO_ENTRY_POINTS:
            if file.endswith(suffix) and name == function:
                entry_points.append(
                    {
                        "function": f"{suffix}:{line}({name})",
                        "calls": nc,
                        "cumtime_s": round(ct, 3),
                        "share_of_total": round(ct / total, 4),
                    }
                )
    return {
        "total_s": round(total, 3),
        "top_tottime": [
            {
                "function": f"{_short(file)}:{line}({name})",
                "calls": nc,
                "tottime_s": round(tt, 3),
                "share": round(tt / total, 4),
            }
            for (file, line, name), (cc, nc, tt, ct, _callers) in by_tottime
        ],
        "crypto_entry_points": sorted(entry_points, key=lambda e: -e["cumtime_s"]),
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# ---- py-spy stack classification ---------------------------------------------------------

# (bucket, path fragments); the first frame from the leaf that matches decides.
_COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("crypto", ("referral_api/crypto/", "cryptography/")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("psycopg (driver, wire)", ("psycopg/", "psycopg_binary/")),
    ("JWT (flask-jwt-extended, PyJWT)", ("flask_jwt_extended/", "jwt/")),
    ("flask-smorest / marshmallow / webargs", ("flask_smorest/", "marshmallow/", "webargs/")),
    ("audit (record + sealing, Python side)", ("referral_api/audit/",)),
    ("logging", ("referral_api/observability.py", "logging/")),
    ("access policy + auth (Python side)", ("referral_api/access/", "referral_api/auth/")),
    ("cases: service, projection, schemas", ("referral_api/cases/",)),
    ("Flask / Werkzeug", ("flask/", "werkzeug/")),
    ("other referral_api", ("referral_api/",)),
)


def _in(file: str, marker: str) -> bool:
    """py-spy shortens paths to the package (`flask/app.py`); full paths also match."""
    return file.startswith(marker) or "/" + marker in file


def _frame_file(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    start = frame.rfind("(")
    return frame[start + 1 :] if start >= 0 else frame


def classify(path: str) -> dict[str, Any]:
    buckets: Counter[str] = Counter()
    crypto_detail: Counter[str] = Counter()
    harness = 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any(MEASURED in f for f in frames):
            continue  # start-up, login, warm-up
        if not any("wsgi_app" in f and _in(_frame_file(f), "flask/app.py") for f in frames):
            harness += count  # the test client itself
            continue
        bucket = "other (stdlib, interpreter)"
        for frame in reversed(frames):
            file = _frame_file(frame)
            match = next((b for b, marks in _COMPONENTS if any(_in(file, m) for m in marks)), None)
            if match:
                bucket = match
                if match == "crypto":
                    crypto_detail[_crypto_item(frames)] += count
                break
        buckets[bucket] += count
    total = sum(buckets.values())
    return {
        "samples": total,
        "harness_samples_excluded": harness,
        "buckets": {
            b: {"samples": n, "share": round(n / total, 4)} for b, n in buckets.most_common()
        },
        "crypto_share": round(buckets["crypto"] / total, 4) if total else None,
        "crypto_items": {
            item: {"samples": n, "share_of_request_cpu": round(n / total, 4)}
            for item, n in crypto_detail.most_common(12)
        },
    }


def _crypto_item(frames: list[str]) -> str:
    """Name a crypto sample by its innermost referral_api.crypto function (and primitive)."""
    inner = next(
        (f for f in reversed(frames) if _in(_frame_file(f), "referral_api/crypto/")), frames[-1]
    )
    name = inner.split(" (", 1)[0]
    module = _frame_file(inner).rsplit("/", 1)[-1].split(":")[0]
    leaf = frames[-1].split(" (", 1)[0]
    primitive = "" if _in(_frame_file(frames[-1]), "referral_api/crypto/") else f" → {leaf}"
    return f"{module}:{name}{primitive}"


# ---- scratch: a throw-away database, no bench seeding needed ------------------------------


class _StatementCounter:
    """Counts the statements the app's engine executes (the sealer thread's included)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def _scratch_database(pg: bool, folder: Path) -> tuple[str, Any]:
    """URL of a new empty database and a function that drops it."""
    if not pg:
        return f"sqlite:///{folder / 'scratch.db'}", lambda: None
    name = f"referral_profile_{random.SystemRandom().randrange(16**8):08x}"
    common.create_database(name)
    return common.db_url(name), lambda: _drop(name)


def _drop(name: str) -> None:
    from sqlalchemy import text

    engine = common.admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _scratch_app(url: str, folder: Path) -> Any:
    import secrets

    from referral_api import create_app
    from referral_api.crypto.keyring import LocalKeyring
    from referral_api.migrate import upgrade

    upgrade(url)
    keyring = folder / "keyring.json"
    common.quiet_app_logs()
    LocalKeyring.load(keyring, create_if_missing=True)
    app = create_app(
        {
            # Production runs on PostgreSQL only; the SQLite scratch database is served in
            # development mode (the same request path: the modes differ in start-up checks).
            "ENV_NAME": "production" if url.startswith("postgresql") else "development",
            "DATABASE_URL": url,
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "KEYRING_PATH": str(keyring),
            "ARGON2_TIME_COST": 2,
            "ARGON2_MEMORY_COST": 19 * 1024,
            "ARGON2_PARALLELISM": 1,
        }
    )
    common.quiet_app_logs()
    return app


def _seed_scratch(app: Any, count: int) -> None:
    from seed_cases import seed_range

    org_id, _ = common.ensure_org_and_user(app)
    for start in range(0, count, 250):
        seed_range(app, org_id, start, min(start + 250, count))


def _settle(app: Any) -> None:
    """Seal whatever the measured requests left pending (its CPU belongs to them)."""
    from referral_api.audit.hooks import seal_now

    seal_now(app, max_rounds=1000)


def _measure(app: Any, phase: str, work: list[Any], out: Path | None) -> dict[str, Any]:
    from referral_api.extensions import db

    client, headers = _client_and_headers(app)
    _warm(client, headers, work[:100])
    _settle(app)
    counter = _StatementCounter(db.engine_for(app))
    result: dict[str, Any] = {"phase": phase, "requests": len(work)}
    # First unprofiled (CPU and statements per request), then under cProfile (ranking).
    counter.count = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = _measured_requests(client, headers, work)
    _settle(app)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    result.update(
        ok=ok,
        process_cpu_ms_per_request=round(1000 * cpu / len(work), 3),
        wall_ms_per_request=round(1000 * wall / len(work), 3),
        statements_per_request=round(counter.count / len(work), 2),
    )
    if out is not None:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        _measured_requests(client, headers, work)
        _settle(app)
        profiler.disable()
        profiler.dump_stats(str(out))
        result["cprofile"] = summarise_cprofile(str(out))
    return result


def _namesake_searches(cases: int, n: int) -> tuple[list[Any], int]:
    """Exact-name searches for the seeded names with the most namesakes (the slow tail of
    the load benchmark's search), and how many results they return in all."""
    from urllib.parse import quote

    names = Counter(common.full_name(common.person(i)) for i in range(cases))
    top = names.most_common(max(1, n // 20))
    searches = [top[i % len(top)] for i in range(n)]
    return (
        [("GET", f"/api/v1/cases?limit=50&name={quote(name)}", None) for name, _ in searches],
        sum(count for _, count in searches),
    )


def scratch(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="referral-profile-"))
    url, drop = _scratch_database(args.pg, folder)
    try:
        app = _scratch_app(url, folder)
        _seed_scratch(app, args.cases)
        rng = random.Random("scratch")
        gets = [
            ("GET", f"/api/v1/cases/{common.person(rng.randrange(args.cases))['id']}", None)
            for _ in range(args.gets)
        ]
        posts = [
            ("POST", "/api/v1/cases", common.request_body(60_000_000 + i))
            for i in range(2 * args.posts)
        ]
        prof = Path(args.prof_dir) if args.prof_dir else None
        if prof:
            prof.mkdir(parents=True, exist_ok=True)
        results = {
            "database": "postgresql" if args.pg else "sqlite",
            "cases": args.cases,
            "get": _measure(app, "get", gets, prof / "scratch-get.prof" if prof else None),
            # The profiled pass posts other people than the timed one (unique case codes).
            "post": _measure(app, "post", posts[: args.posts], None),
        }
        if args.lists:
            pages = [("GET", "/api/v1/cases?limit=50", None)] * args.lists
            results["list_50"] = _measure(app, "list", pages, None)
        if args.searches:
            searches, found = _namesake_searches(args.cases, args.searches)
            results["search_namesakes"] = {
                **_measure(app, "search", searches, prof / "scratch-search.prof" if prof else None),
                "results_per_search": round(found / len(searches), 2),
            }
        if prof:
            results["post_profiled"] = _measure(
                app, "post", posts[args.posts :], prof / "scratch-post.prof"
            )
        sealer = app.extensions.get("referral_api.audit_sealer")
        if sealer is not None:
            sealer.stop()
        from referral_api.extensions import db

        db.engine_for(app).dispose()
        return results
    finally:
        drop()
        shutil.rmtree(folder, ignore_errors=True)  # the keyring and the SQLite file


def main() -> None:
    parser = argparse.ArgumentParser(description="profile GET/POST /api/v1/cases in-process")
    parser.add_argument("phase", choices=["get", "post", "classify", "scratch"])
    parser.add_argument(
        "arg", nargs="?", help="number of requests, or the raw stack file to classify"
    )
    parser.add_argument("--count", type=int, default=100_000, help="seeded cases")
    parser.add_argument("--cprofile", metavar="OUT.prof")
    parser.add_argument("--json", metavar="OUT.json")
    scratch_options = parser.add_argument_group("scratch")
    scratch_options.add_argument("--pg", action="store_true", help="PostgreSQL, not SQLite")
    scratch_options.add_argument("--cases", type=int, default=2000)
    scratch_options.add_argument("--gets", type=int, default=2000)
    scratch_options.add_argument("--posts", type=int, default=500)
    scratch_options.add_argument(
        "--searches", type=int, default=0, help="name searches with the most namesakes"
    )
    scratch_options.add_argument("--lists", type=int, default=0, help="first pages of 50")
    scratch_options.add_argument("--prof-dir", metavar="DIR", help="write cProfile dumps here")
    args = parser.parse_args()
    if args.phase == "scratch":
        result = scratch(args)
    elif args.arg is None:
        parser.error("the number of requests (or the stack file) is required")
    elif args.phase == "classify":
        result = classify(args.arg)
    else:
        result = drive(args.phase, int(args.arg), args.count, args.cprofile)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
