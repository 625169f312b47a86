"""The whole benchmark in one command (`make bench`).

1. Seed the bench database with 100,000 encrypted cases (or reuse them) and the bare
   baseline's plaintext twin tables.
2. Serve the real app (`referral_api:create_app()`, production mode) and the bare baseline
   (bench/bare_app.py) with gunicorn, sync workers, one per core; log in once for a JWT.
3. Drive each endpoint of each app with wrk on loopback, real and bare interleaved, the same
   duration and connections for both: GET /cases/{id}, exact name search, the case list,
   POST /cases (last, so that the other runs see exactly the seeded data).
4. Profile encryption's share of request CPU in-process (py-spy if installed, and cProfile).
5. Time root-key rotation over 50,000 wrapped keys.
6. Write bench/results/results.json and bench/results/summary.md and print the table.

Everything it starts it stops; `--drop` removes the bench database at the end (keep it to
rerun without seeding). Other load on the machine is measured while each figure is taken
(CPU used by processes that are not the benchmark's) and reported next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

REAL_PORT = int(os.environ.get("BENCH_REAL_PORT", "8801"))
BARE_PORT = int(os.environ.get("BENCH_BARE_PORT", "8802"))
LUA = common.BENCH_DIR / "cases.lua"
ENDPOINTS = (
    ("get", "GET /api/v1/cases/{id}"),
    ("search", "GET /api/v1/cases?name= (exact name)"),
    ("list", "GET /api/v1/cases?limit=50"),
    ("post", "POST /api/v1/cases"),
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- other load on the machine -----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def _ours() -> dict[int, int]:
    """CPU ticks of the benchmark's processes: this process's descendants and the
    PostgreSQL backends serving the bench database."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(rest[1])
        ticks[pid] = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    me = os.getpid()
    ours: dict[int, int] = {}
    for pid in ticks:
        cursor, depth = pid, 0
        while cursor not in (0, 1) and depth < 50:
            if cursor == me:
                ours[pid] = ticks[pid]
                break
            cursor, depth = parents.get(cursor, 0), depth + 1
        if f" {common.DB_NAME} " in titles.get(pid, ""):
            ours[pid] = ticks[pid]
    return ours


@contextmanager
def cpu_watch(record: dict[str, Any]) -> Any:
    """Adds `other_cpu_cores`: average CPU used by processes that are not the benchmark's
    during the block (other users' test runs, ...). 0 on a quiet machine."""
    busy0, ours0, t0 = _busy_ticks(), _ours(), time.perf_counter()
    try:
        yield
    finally:
        busy1, ours1, seconds = _busy_ticks(), _ours(), time.perf_counter() - t0
        ours = sum(v - ours0.get(pid, 0) for pid, v in ours1.items())
        other = max(0, (busy1 - busy0) - ours) / _TICK
        record["other_cpu_cores"] = round(other / seconds, 2) if seconds else 0.0
        record["bench_cpu_cores"] = round(ours / _TICK / seconds, 2) if seconds else 0.0


# ---- servers -----------------------------------------------------------------------------


class Server:
    def __init__(
        self,
        name: str,
        port: int,
        target: str,
        env: dict[str, str],
        workers: int,
        cwd: Path = common.REPO,
    ):
        self.name, self.port = name, port
        common.RESULTS.mkdir(parents=True, exist_ok=True)
        self.log_path = common.RESULTS / f"{name}-server.log"
        argv = [
            str(common.VENV_BIN / "gunicorn"),
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ]
        if name == "bare":
            argv += ["--chdir", str(common.BENCH_DIR)]
        elif (cwd / "referral_api" / "gunicorn_config.py").exists():
            # The deployment's settings (docs/operations.md), in builds that ship them.
            argv += ["-c", "python:referral_api.gunicorn_config"]
        argv.append(target)
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
        )
        log(f"{name}: gunicorn pid {self.process.pid} on 127.0.0.1:{port} ({workers} workers)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} server not ready after {timeout} s")

    def stop(self) -> None:
        _terminate(self.process, timeout=30)
        self.log_file.close()
        log(f"{self.name}: stopped")


def _terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http(
    method: str, url: str, token: str | None = None, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), dict(error.headers)


def login(server: Server) -> str:
    status, body, _ = http(
        "POST",
        server.url + "/api/v1/auth/login",
        body={"email": common.USER_EMAIL, "password": common.USER_PASSWORD},
    )
    if status != 200:
        raise RuntimeError(f"login failed: {status} {body}")
    return str(body["access_token"])


# ---- load --------------------------------------------------------------------------------


def data_files(count: int) -> dict[str, Path]:
    """Random seeded case ids, URL-encoded full names of seeded people, POST bodies."""
    rng = random.Random(7)
    common.WORKDIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = {
        "get": common.WORKDIR / "ids.txt",
        "search": common.WORKDIR / "names.txt",
        "post": common.WORKDIR / "bodies.txt",
    }
    people = [common.person(rng.randrange(count)) for _ in range(20_000)]
    files["get"].write_text("\n".join(str(p["id"]) for p in people) + "\n")
    files["search"].write_text(
        "\n".join(urllib.parse.quote(common.full_name(p)) for p in people[:5000]) + "\n"
    )
    files["post"].write_text(
        "\n".join(json.dumps(common.request_body(10_000_000 + i)) for i in range(3000)) + "\n"
    )
    return files


def wrk(
    url: str, mode: str, data: Path | None, token: Path | None, seconds: int, args: Any
) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        mode,
        str(data) if data else "-",
        str(token) if token else "-",
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, check=True)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{completed.stdout}\n{completed.stderr}")
    raw = json.loads(line.split(" ", 1)[1])
    seconds_run = raw["duration_us"] / 1e6
    errors = {k[len("errors_") :]: v for k, v in raw.items() if k.startswith("errors_") and v}
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds_run, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": errors,
    }


def sanity_checks(real: Server, bare: Server, token: str, count: int) -> None:
    """Each endpoint answers correctly before it is loaded (decrypted values match)."""
    p = common.person(random.Random(3).randrange(count))
    status, body, headers = http("GET", f"{real.url}/api/v1/cases/{p['id']}", token)
    assert status == 200, (status, body)
    assert body["identity"]["given_name"] == p["identity"]["given_name"], body
    assert "ETag" in headers or "Etag" in headers
    name = urllib.parse.quote(common.full_name(p))
    status, body, _ = http("GET", f"{real.url}/api/v1/cases?name={name}", token)
    assert status == 200 and str(p["id"]) in {c["id"] for c in body}, (status, body)
    status, body, _ = http("GET", f"{real.url}/api/v1/cases?limit=50", token)
    assert status == 200 and len(body) == 50, status
    status, body, _ = http("GET", f"{bare.url}/api/v1/cases/{p['id']}")
    assert status == 200 and body["given_name"] == p["identity"]["given_name"], body
    status, body, _ = http("GET", f"{bare.url}/api/v1/cases?name={name}")
    assert status == 200 and str(p["id"]) in {c["id"] for c in body}, (status, body)
    status, body, _ = http("GET", f"{bare.url}/api/v1/cases?limit=50")
    assert status == 200 and len(body) == 50, status
    log("sanity checks passed (real decrypts the seeded values; both find the name)")


def remove_posted_cases(bare: bool = True) -> dict[str, int]:
    """Cases created by the POST runs (the seeded ones have no creator); the bare twin's
    too unless `bare` is false (its tables were not seeded)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(common.db_url())
    removed = {}
    with engine.begin() as connection:
        posted = "SELECT id FROM cases WHERE created_by IS NOT NULL"
        for table in ("case_search_index", "case_keys", "case_status_changes", "case_notes"):
            connection.execute(text(f"DELETE FROM {table} WHERE case_id IN ({posted})"))
        removed["real"] = connection.execute(
            text("DELETE FROM cases WHERE created_by IS NOT NULL")
        ).rowcount
        if bare:
            removed["bare"] = connection.execute(
                text("DELETE FROM bare_cases WHERE created_by IS NOT NULL")
            ).rowcount
    engine.dispose()
    return removed


# Suggested schema changes, applied to the bench database only for the `--what-if` pass
# (the application's migrations are not touched; the indexes are dropped afterwards).
WHAT_IF_INDEXES = {
    # The audit sealer's `WHERE seq IS NULL ORDER BY id LIMIT 500` walks every sealed row.
    "bench_whatif_audit_unsealed": "audit_events (id) WHERE seq IS NULL",
    # The case list (and FK checks on cases.org_id) have no index to use.
    "bench_whatif_cases_org_created": "cases (org_id, created_at DESC, id DESC)",
    # ... and the same for the bare twin, so the list stays a like-for-like comparison.
    "bench_whatif_bare_cases_org_created": "bare_cases (org_id, created_at DESC, id DESC)",
}


def what_if_indexes(create: bool) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(common.db_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for name, definition in WHAT_IF_INDEXES.items():
            if create:
                connection.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}"))
            else:
                connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
        if create:
            connection.execute(text("ANALYZE audit_events"))
            connection.execute(text("ANALYZE cases"))
            connection.execute(text("ANALYZE bare_cases"))
    engine.dispose()


def audit_rows() -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(common.db_url())
    with engine.connect() as connection:
        count = int(connection.execute(text("SELECT count(*) FROM audit_events")).scalar() or 0)
    engine.dispose()
    return count


def _log_run(name: str, label: str, record: dict[str, Any]) -> None:
    log(
        f"{name:>4} {label:<40} {record['rps']:>8.1f} req/s  "
        f"p50 {record['p50_ms']:>7.2f} ms  p99 {record['p99_ms']:>7.2f} ms  "
        f"errors {record['errors'] or 'none'}  other load {record['other_cpu_cores']} cores"
    )


class Sealer:
    """`referral-api audit seal --follow`: the audit sealer process the real app's workers
    leave sealing to under REFERRAL_API_AUDIT_SEALER=external (a child of this script, so
    its CPU counts as the benchmark's own)."""

    def __init__(self, env: dict[str, str], cwd: Path = common.REPO) -> None:
        self.log_file = (common.RESULTS / "sealer.log").open("w")
        self.process = subprocess.Popen(
            [str(common.VENV_BIN / "referral-api"), "audit", "seal", "--follow"],
            env={**os.environ, **env},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
        )
        log(f"sealer: pid {self.process.pid} (referral-api audit seal --follow)")

    def stop(self) -> None:
        _terminate(self.process, timeout=60)
        self.log_file.close()
        log("sealer: stopped")


def settle(timeout: float = 20.0, quiet_cores: float = 0.2) -> float:
    """Before each measured run, of either app: a VACUUM and a CHECKPOINT of the bench
    database and a sync, then a wait (at most `timeout` s) until the machine is quiet. A run
    otherwise inherits the previous ones' dead rows (sealing rewrites every audit row, and
    autovacuum, which would clear them in production, is off on these machines: one build's
    POST fell from 455 to 297 req/s over three A/B rounds) and their dirty buffers and
    writeback (POST rounds right after list rounds measured 460-620 req/s for one build as
    that work drained). The seconds it took."""
    from sqlalchemy import create_engine, text

    started = time.perf_counter()
    engine = create_engine(common.db_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("VACUUM"))
            connection.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()
    os.sync()
    while time.perf_counter() - started < timeout:
        busy = _busy_ticks()
        time.sleep(0.5)
        if (_busy_ticks() - busy) / _TICK / 0.5 < quiet_cores:
            break
    return round(time.perf_counter() - started, 1)


def _measured(
    url: str,
    mode: str,
    data: Path | None,
    token: Path | None,
    warmup: int,
    args: Any,
    **fields: Any,
) -> dict[str, Any]:
    """One measured wrk run, after `settle` and `warmup` seconds of warm-up: `fields`, the
    seconds settling took, the audit rows when it started, wrk's figures and the CPU other
    processes used meanwhile."""
    fields = {**fields, "settle_s": settle()}
    if warmup:
        wrk(url, mode, data, token, warmup, args)
    record: dict[str, Any] = {**fields, "audit_rows_before": audit_rows()}
    with cpu_watch(record):
        record.update(wrk(url, mode, data, token, args.duration, args))
    return record


def _sealing_thread_get(args: Any, files: dict[str, Path], token_file: Path) -> dict[str, Any]:
    """GET by id once more with the workers' own sealing threads (the default deployment
    without a sealer process), for comparison with the external sealer."""
    env = {**common.app_env(), "REFERRAL_API_AUDIT_SEALER": "thread"}
    real = Server("real-thread", REAL_PORT, "referral_api:create_app()", env, args.workers)
    try:
        real.wait_ready("/ready")
        token_file.write_text(login(real) + "\n")
        record = _measured(
            real.url,
            "get",
            files["get"],
            token_file,
            args.warmup,
            args,
            endpoint=ENDPOINTS[0][1],
            sealer="thread",
        )
        _log_run("real", f"{ENDPOINTS[0][1]}, sealing thread in each worker", record)
        return record
    finally:
        real.stop()


def load_runs(args: Any, files: dict[str, Path]) -> dict[str, Any]:
    env = {**common.app_env(), "REFERRAL_API_AUDIT_SEALER": args.sealer}
    bare_env = {"BARE_DATABASE_URL": common.db_url()}
    runs: dict[str, Any] = {"sealer": args.sealer}
    real = bare = None
    # The sealer process runs only while the real app is loaded: even idle, it polls the
    # database, which the bare twin's runs must not pay for.
    sealer = None
    try:
        real = Server("real", REAL_PORT, "referral_api:create_app()", env, args.workers)
        bare = Server("bare", BARE_PORT, "bare_app:create_app()", bare_env, args.workers)
        real.wait_ready("/ready")
        bare.wait_ready("/api/v1/cases?limit=1")
        token_file = common.WORKDIR / "token"
        token = login(real)
        token_file.write_text(token + "\n")
        sanity_checks(real, bare, token, args.count)
        for mode, label in ENDPOINTS:
            for server in (real, bare):
                if server is real:
                    token_file.write_text(login(real) + "\n")  # tokens live 15 minutes
                token_arg = token_file if server is real else None
                data = files.get(mode)
                if server is real and args.sealer == "external":
                    sealer = Sealer(env)
                record = _measured(
                    server.url, mode, data, token_arg, args.warmup, args, endpoint=label
                )
                if sealer is not None:
                    sealer.stop()
                    sealer = None
                runs[f"{mode}/{server.name}"] = record
                _log_run(server.name, label, record)
        # Latency without queueing: one connection, real app, search and read.
        single = argparse.Namespace(threads=1, connections=1, duration=args.duration)
        if args.sealer == "external":
            sealer = Sealer(env)
        for mode, label in ENDPOINTS[:2]:
            token_file.write_text(login(real) + "\n")
            record = _measured(
                real.url,
                mode,
                files[mode],
                token_file,
                max(args.warmup, 1),
                single,
                endpoint=label,
                connections=1,
            )
            runs[f"{mode}/real/1-connection"] = record
            _log_run("real", f"{label}, 1 connection", record)
        if sealer is not None:
            sealer.stop()  # the workers' threads alone seal from here
            sealer = None
            real.stop()
            real = None
            runs["get/real/sealing-thread"] = _sealing_thread_get(args, files, token_file)
    finally:
        for server in (real, bare):
            if server is not None:
                server.stop()
        if sealer is not None:
            sealer.stop()
    runs["removed_posted_cases"] = remove_posted_cases()
    return runs


# ---- profile and rotation (separate processes) -------------------------------------------


def profile_crypto(args: Any) -> dict[str, Any]:
    python = str(common.VENV_BIN / "python")
    script = str(common.BENCH_DIR / "profile_requests.py")
    py_spy = shutil.which("py-spy", path=str(common.VENV_BIN)) or shutil.which("py-spy")
    out: dict[str, Any] = {}
    for phase, n in (("get", args.profile_requests), ("post", args.profile_requests // 2)):
        result: dict[str, Any] = {}
        if py_spy:
            stacks = common.RESULTS / f"profile-{phase}.stacks.txt"
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--gil",
                    "--rate",
                    "500",
                    "--format",
                    "raw",
                    "--output",
                    str(stacks),
                    "--",
                    python,
                    script,
                    phase,
                    str(n),
                    "--count",
                    str(args.count),
                    "--json",
                    str(common.RESULTS / f"profile-{phase}-run.json"),
                ],
                check=True,
                capture_output=True,
            )
            result["py_spy"] = json.loads(
                subprocess.run(
                    [python, script, "classify", str(stacks)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            result["run"] = json.loads((common.RESULTS / f"profile-{phase}-run.json").read_text())
        else:
            log("py-spy not installed (pip install py-spy into .venv); cProfile only")
        prof = common.RESULTS / f"profile-{phase}.prof"
        result["cprofile"] = json.loads(
            subprocess.run(
                [
                    python,
                    script,
                    phase,
                    str(n),
                    "--count",
                    str(args.count),
                    "--cprofile",
                    str(prof),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        out[phase] = result
        share = (result.get("py_spy") or {}).get("crypto_share")
        log(f"profile {phase}: crypto share of request CPU {share}")
    remove_posted_cases()
    return out


def rotation(args: Any) -> dict[str, Any]:
    out = common.RESULTS / "rotation.json"
    subprocess.run(
        [
            str(common.VENV_BIN / "python"),
            str(common.BENCH_DIR / "rotate_keys.py"),
            "--keys",
            str(args.rotation_keys),
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    log(
        f"rotate-root: {result['wrapped_keys']} keys, "
        f"{result['rotate_root_in_process']['keys_per_second']:,.0f} keys/s in process"
    )
    return result


def set_synchronous_commit(value: str) -> None:
    """A database-level default: every connection the apps open later inherits it."""
    from sqlalchemy import text

    engine = common.admin_engine()
    with engine.connect() as connection:
        connection.execute(
            text(f'ALTER DATABASE "{common.DB_NAME}" SET synchronous_commit TO {value}')
        )
    engine.dispose()


# ---- report ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        int(line.split()[1]) // 1024 // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    from sqlalchemy import create_engine, text

    engine = create_engine(common.db_url())
    with engine.connect() as connection:
        pg = connection.execute(text("SHOW server_version")).scalar()
        settings = {
            name: connection.execute(text(f"SHOW {name}")).scalar()
            for name in ("shared_buffers", "synchronous_commit", "max_connections")
        }
    engine.dispose()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    git = ["git", "-C", str(common.REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "referral_api"], capture_output=True, text=True
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "postgresql": pg,
        "postgresql_settings": settings,
        "wrk": wrk_version.splitlines()[0] if wrk_version else "?",
        "kernel": platform.release(),
        "git_head": head.stdout.strip(),
        "referral_api_uncommitted_files": len(dirty.stdout.splitlines()),
    }


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "**miss**")


def load_table(runs: dict[str, Any]) -> list[str]:
    lines = [
        "| endpoint | app | req/s | p50 ms | p99 ms | ratio req/s | ratio p99 "
        "| audit rows | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, label in ENDPOINTS:
        real, bare = runs.get(f"{mode}/real"), runs.get(f"{mode}/bare")
        if not (real and bare):
            continue
        for name, run in (("real", real), ("bare", bare)):
            ratio = f"{real['rps'] / bare['rps']:.2f}x" if name == "real" else ""
            p99 = f"{real['p99_ms'] / bare['p99_ms']:.2f}x" if name == "real" else ""
            lines.append(
                f"| {label} | {name} | {run['rps']:.0f} | {run['p50_ms']:.1f} | "
                f"{run['p99_ms']:.1f} | {ratio} | {p99} | {run.get('audit_rows_before', '')} | "
                f"{run['other_cpu_cores']} |"
            )
    return [*lines, ""]


def summary(results: dict[str, Any]) -> str:
    lines = []
    runs = results.get("load", {})
    if runs:
        lines += load_table(runs)
    if results.get("load_what_if"):
        lines += ["What-if (suggested indexes, bench database only):", ""]
        lines += load_table(results["load_what_if"])
    lines += ["| figure | measured | target | result |", "|---|---:|---:|---|"]
    seed = results.get("seed") or {}
    if seed.get("cases_per_second"):
        rate = seed["cases_per_second"]
        lines.append(
            f"| seeding encrypted cases | {rate:,.0f} cases/s | ≥ 2,000 | {_mark(rate >= 2000)} |"
        )
    if runs.get("get/real"):
        g, b = runs["get/real"], runs["get/bare"]
        lines.append(
            f"| GET /cases/{{id}} throughput vs bare | {g['rps'] / b['rps']:.2f}x | ≥ 0.6x | "
            f"{_mark(g['rps'] / b['rps'] >= 0.6)} |"
        )
        lines.append(
            f"| GET /cases/{{id}} p99 vs bare ({runs.get('sealer', 'thread')} sealer) | "
            f"{g['p99_ms'] / b['p99_ms']:.2f}x "
            f"({g['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms) | ≤ 2x | "
            f"{_mark(g['p99_ms'] / b['p99_ms'] <= 2)} |"
        )
        t = runs.get("get/real/sealing-thread")
        if t:
            lines.append(
                f"| GET /cases/{{id}} with a sealing thread in each worker: throughput, p99 "
                f"vs bare | {t['rps'] / b['rps']:.2f}x, {t['p99_ms'] / b['p99_ms']:.2f}x "
                f"({t['p99_ms']:.1f} ms) | ≥ 0.6x, ≤ 2x | "
                f"{_mark(t['rps'] / b['rps'] >= 0.6 and t['p99_ms'] / b['p99_ms'] <= 2)} |"
            )
    if runs.get("post/real"):
        p, b = runs["post/real"], runs["post/bare"]
        lines.append(
            f"| POST /cases throughput vs bare | {p['rps'] / b['rps']:.2f}x | ≥ 0.5x | "
            f"{_mark(p['rps'] / b['rps'] >= 0.5)} |"
        )
    if runs.get("search/real"):
        s = runs["search/real"]
        lines.append(
            f"| name search p99 at {results['cases']:,} cases | {s['p99_ms']:.1f} ms | ≤ 20 ms | "
            f"{_mark(s['p99_ms'] <= 20)} |"
        )
    if runs.get("search/real/1-connection"):
        s = runs["search/real/1-connection"]
        lines.append(
            f"| name search p99, 1 connection | {s['p99_ms']:.1f} ms (p50 {s['p50_ms']:.1f}) | "
            f"≤ 20 ms | {_mark(s['p99_ms'] <= 20)} |"
        )
    for phase in ("get", "post"):
        prof = (results.get("profile") or {}).get(phase) or {}
        share = (prof.get("py_spy") or {}).get("crypto_share")
        if share is not None:
            lines.append(
                f"| encryption share of request CPU, {phase.upper()} | {100 * share:.1f} % | "
                f"≤ 5 % | {_mark(share <= 0.05)} |"
            )
    rot = results.get("rotation")
    if rot:
        rate = rot["rotate_root_in_process"]["keys_per_second"]
        lines.append(
            f"| root-key rotation ({rot['wrapped_keys']:,} wrapped keys) | {rate:,.0f} keys/s | "
            f"≥ 20,000 | {_mark(rate >= 20_000)} |"
        )
    return "\n".join(lines) + "\n"


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench database's options (run.py and ab.py)."""
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed-batch", type=int, default=250)
    parser.add_argument("--fresh", action="store_true", help="drop and reseed the database")
    parser.add_argument(
        "--synchronous-commit",
        default="off",
        choices=["on", "off"],
        help="PostgreSQL synchronous_commit for the bench database (see README)",
    )
    parser.add_argument("--drop", action="store_true", help="drop the bench database at the end")


def add_load_arguments(parser: argparse.ArgumentParser, duration: int = 20) -> None:
    """The servers' and wrk's options, the same for every measured run (run.py and ab.py)."""
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn")
    parser.add_argument("--duration", type=int, default=duration, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)


def prepare_database(args: Any) -> dict[str, Any]:
    """Create the bench database (recreate it with --fresh), set its synchronous_commit and
    seed the encrypted cases, or reuse them; the seeding record (rate, CPU)."""
    import seed_cases

    if args.fresh and common.database_exists():
        common.drop_database()
    if not common.database_exists():
        common.create_database()
    set_synchronous_commit(args.synchronous_commit)
    log(f"seeding {args.count:,} encrypted cases (or reusing them)")
    record: dict[str, Any] = {}
    with cpu_watch(record):
        record.update(seed_cases.seed(args.count, args.seed_workers, args.seed_batch))
    if record.get("reused"):
        previous = common.RESULTS / "seed.json"
        if previous.exists():
            record = {**json.loads(previous.read_text()), "reused": True}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description="referral_api benchmarks")
    add_database_arguments(parser)
    add_load_arguments(parser)
    parser.add_argument("--profile-requests", type=int, default=2000)
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="repeat the load runs with the suggested indexes (see README)",
    )
    parser.add_argument(
        "--sealer",
        default="external",
        choices=["external", "thread"],
        help="who seals the real app's audit rows: one `referral-api audit seal --follow` "
        "process (the production layout, docs/operations.md) or each worker's thread",
    )
    parser.add_argument("--rotation-keys", type=int, default=50_000)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["load", "profile", "rotation"]
    )
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get update && apt-get install -y wrk")
    import bare_app

    started = time.perf_counter()
    results: dict[str, Any] = {"cases": args.count, "settings": vars(args)}
    try:
        results["seed"] = prepare_database(args)
        results["machine"] = machine()
        if "load" not in args.skip:
            log("seeding the bare baseline's plaintext twin")
            results["bare_seed"] = bare_app.seed(common.db_url(), args.count)
            files = data_files(args.count)
            results["load"] = load_runs(args, files)
            if args.what_if:
                log("what-if: the same runs with the suggested indexes (bench database only)")
                what_if_indexes(create=True)
                try:
                    results["load_what_if"] = load_runs(args, files)
                finally:
                    what_if_indexes(create=False)
        if "profile" not in args.skip:
            log("profiling encryption's share of request CPU")
            results["profile"] = profile_crypto(args)
        if "rotation" not in args.skip:
            log(f"root-key rotation over {args.rotation_keys:,} synthetic wrapped keys")
            results["rotation"] = rotation(args)
    finally:
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        common.write_json(common.RESULTS / "results.json", results)
        table = summary(results)
        (common.RESULTS / "summary.md").write_text(table, encoding="utf-8")
        print(table)
        log(f"done in {results['total_seconds']:.0f} s; results in {common.RESULTS}")
        if args.drop:
            common.drop_database()
            shutil.rmtree(common.WORKDIR, ignore_errors=True)
            log(f"dropped database {common.DB_NAME} and {common.WORKDIR}")


if __name__ == "__main__":
    main()
