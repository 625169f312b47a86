"""Two builds of the application under the same load, interleaved, on one seeded database.

A single `run.py` figure moves by 10 to 15 % between runs of the same code minutes apart on a
shared VM (bench/README.md, runs N to Q), more than a change is often worth. This script
measures a change instead of a machine: it serves build A and build B in turn (A B, then
B A, …) from one seeded bench database, with the same wrk load, the same sealer process
layout and the same data files, and reports B against A per endpoint, round by round.

    .venv/bin/python bench/ab.py --base HEAD~1                  # HEAD~1 against this tree
    .venv/bin/python bench/ab.py --base d63d988 --head eea65cb --endpoints post --rounds 4

A build is a git revision (checked out with `git worktree` under BENCH_WORKDIR) or `.`,
this working tree. Both must have the same migrations (one schema serves both). Seeding,
the data files and the log-in use this tree's code; the read endpoints run first, then
POST (its new cases would otherwise change what later searches find); the posted cases
are deleted at the end. Writes bench/results/ab.json and prints the table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import run

_MIGRATIONS = "referral_api/migrations/versions"


def checkout(revision: str) -> tuple[str, Path]:
    """(label, source tree) of a build: `.` is this working tree, anything else a detached
    worktree of that revision under BENCH_WORKDIR (reused if already there)."""
    if revision == ".":
        return "working tree", common.REPO
    sha = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=common.REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = common.WORKDIR / f"ab-{sha}"
    if not tree.exists():
        common.WORKDIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha],
            cwd=common.REPO,
            capture_output=True,
            check=True,
        )
    return sha, tree


def remove_worktree(tree: Path) -> None:
    if tree != common.REPO:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)],
            cwd=common.REPO,
            capture_output=True,
            check=False,
        )


def same_migrations(a: Path, b: Path) -> bool:
    def listing(tree: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (tree / _MIGRATIONS).glob("*.py")}

    return listing(a) == listing(b)


def measure(
    label: str, tree: Path, modes: list[str], files: dict[str, Path], args: Any
) -> dict[str, Any]:
    """Serve one build and run each endpoint once against it (a sealer process of the same
    build beside it, as run.py does for the real app)."""
    env = {
        **common.app_env(),
        "REFERRAL_API_AUDIT_SEALER": "external",
        # The build's own package, ahead of the one installed in .venv (this tree).
        "PYTHONPATH": str(tree),
    }
    server = run.Server(
        f"ab-{label}", run.REAL_PORT, "referral_api:create_app()", env, args.workers, cwd=tree
    )
    token_file = common.WORKDIR / "token"
    records: dict[str, Any] = {}
    try:
        server.wait_ready("/ready")
        for mode in modes:
            token_file.write_text(run.login(server) + "\n")
            sealer = run.Sealer(env, cwd=tree)
            try:
                record = run._measured(
                    server.url, mode, files.get(mode), token_file, args.warmup, args
                )
            finally:
                sealer.stop()
            records[mode] = record
            run.log(
                f"{label:>12} {mode:<6} {record['rps']:8.1f} req/s  p50 {record['p50_ms']:6.2f} ms"
                f"  p99 {record['p99_ms']:6.2f} ms  other load {record['other_cpu_cores']} cores"
            )
    finally:
        server.stop()
    return records


def table(results: dict[str, Any], modes: list[str]) -> str:
    base, head = results["base"]["label"], results["head"]["label"]
    lines = [
        f"| endpoint | {base} req/s | {head} req/s | ratio (median) | {base} p99 ms | "
        f"{head} p99 ms | p99 ratio (median) |",
        "|---|---|---|---:|---|---|---:|",
    ]
    for mode in modes:
        a = [r[mode] for r in results["rounds"]["base"] if mode in r]
        b = [r[mode] for r in results["rounds"]["head"] if mode in r]
        rps = statistics.median(y["rps"] / x["rps"] for x, y in zip(a, b, strict=True))
        p99 = statistics.median(y["p99_ms"] / x["p99_ms"] for x, y in zip(a, b, strict=True))
        cells = [
            ", ".join(format(record[key], spec) for record in side)
            for key, spec in (("rps", ".0f"), ("p99_ms", ".1f"))
            for side in (a, b)
        ]
        lines.append(
            f"| {mode} | {cells[0]} | {cells[1]} | {rps:.3f}x | {cells[2]} | {cells[3]} | "
            f"{p99:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="two builds under the same load, interleaved")
    parser.add_argument("--base", required=True, help="git revision, or . for this tree")
    parser.add_argument("--head", default=".", help="git revision, or . (default)")
    parser.add_argument("--endpoints", default="get,search,post", help="of get,search,list,post")
    parser.add_argument("--rounds", type=int, default=3, help="pairs per endpoint")
    run.add_database_arguments(parser)
    run.add_load_arguments(parser, duration=15)
    args = parser.parse_args()
    modes = [m for m in ("get", "search", "list", "post") if m in args.endpoints.split(",")]

    builds = {"base": checkout(args.base), "head": checkout(args.head)}
    if not same_migrations(builds["base"][1], builds["head"][1]):
        raise SystemExit("the two builds have different migrations: one schema cannot serve both")
    results: dict[str, Any] = {
        "settings": vars(args),
        **{side: {"label": label, "tree": str(tree)} for side, (label, tree) in builds.items()},
        "rounds": {"base": [], "head": []},
    }
    try:
        results["seed"] = run.prepare_database(args)
        files = run.data_files(args.count)
        # Reads first, then POST: posted cases would change what later searches find.
        for phase in ([m for m in modes if m != "post"], [m for m in modes if m == "post"]):
            if not phase:
                continue
            for round_ in range(args.rounds):
                order = ("base", "head") if round_ % 2 == 0 else ("head", "base")
                for side in order:
                    label, tree = builds[side]
                    records = measure(label, tree, phase, files, args)
                    rounds = results["rounds"][side]
                    while len(rounds) <= round_:
                        rounds.append({})
                    rounds[round_].update(records)
        results["removed_posted_cases"] = run.remove_posted_cases(bare=False)
    finally:
        common.write_json(common.RESULTS / "ab.json", results)
        for _label, tree in builds.values():
            remove_worktree(tree)
        if args.drop:
            common.drop_database()
            shutil.rmtree(common.WORKDIR, ignore_errors=True)
    text = table(results, modes)
    (common.RESULTS / "ab.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
