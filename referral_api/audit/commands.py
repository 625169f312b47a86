"""`referral-api audit …`: seal pending rows and verify the hash chain."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from referral_api.audit import anchors, service

# AppGroup: its commands push the application context themselves, so they also run from
# `app.cli` (tests, embedding), where no FlaskGroup does it for them.
audit_group = AppGroup("audit", help="Audit log.")


@audit_group.command("seal")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep sealing until stopped (SIGTERM/SIGINT): the sealer process for "
    "REFERRAL_API_AUDIT_SEALER=external.",
)
@click.option(
    "--delay-ms",
    type=click.IntRange(min=10),
    default=None,
    help="With --follow: pause between rounds (default REFERRAL_API_AUDIT_SEAL_DELAY_MS).",
)
@click.option("--rounds", type=click.IntRange(min=1), default=None, hidden=True)
def seal(follow: bool, delay_ms: int | None, rounds: int | None) -> None:
    """Chain every pending audit row (once, or continuously with --follow)."""
    from referral_api.extensions import db

    if not follow:
        sealed = _seal_all(db.session_factory_for(current_app))
        click.echo(f"{sealed} rows sealed")
        return
    from referral_api.audit.hooks import follow as follow_chain

    delay = (
        delay_ms / 1000
        if delay_ms is not None
        else max(float(current_app.config.get("AUDIT_SEAL_DELAY_SECONDS", 0.1)), 0.01)
    )
    click.echo(f"sealing audit rows every {delay * 1000:.0f} ms until stopped", err=True)
    sealed = follow_chain(current_app._get_current_object(), delay, rounds)  # type: ignore[attr-defined]
    click.echo(f"{sealed} rows sealed")


def _seal_all(factory: Any) -> int:
    """`service.seal_all`, or one `error:` line when the next sequence number is already
    taken: the chain's head is behind rows sealed past it, which a data-only restore leaves
    when `audit_chain_head` was not emptied first (docs/operations.md). Each round failed
    with a traceback of SQL."""
    from sqlalchemy.exc import IntegrityError

    try:
        return service.seal_all(factory)
    except IntegrityError as error:
        if "seq" not in str(error.orig):
            raise
        click.echo(
            "error: the audit chain's head is behind rows already sealed (a sequence number "
            "it would give is taken): was the database restored data-only without emptying "
            "audit_chain_head first? See docs/operations.md, 'Migrations go forward'.",
            err=True,
        )
        sys.exit(1)


def _verify_in_pages(factory: Any, anchors: dict[int, str], page_rows: int) -> service.VerifyResult:
    """The whole chain, `page_rows` at a time (a transaction each, progress on stderr): one
    result, as `verify_chain` over all of it would give."""
    checked, rebuilt = 0, list[int]()
    after: tuple[int, str] | None = None
    while True:
        # Anchors inside earlier pages were checked there.
        ahead = {seq: digest for seq, digest in anchors.items() if after is None or seq > after[0]}
        with factory() as session:
            page = service.verify_chain(session, anchors=ahead, after=after, limit=page_rows)
        checked += page.checked
        rebuilt.extend(page.head_rebuilt_at)
        # An incomplete page always ends at a row (its seq and hash).
        if not page.ok or page.complete or page.last_seq is None or page.last_hash is None:
            return replace(page, checked=checked, head_rebuilt_at=tuple(rebuilt))
        click.echo(f"verified to seq {page.last_seq:,}", err=True)
        after = (page.last_seq, page.last_hash)


@audit_group.command("verify")
@click.option("--page-rows", type=click.IntRange(min=1), default=200_000, hidden=True)
@click.option(
    "--anchors",
    "anchor_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file kept outside the database (docs/audit.md): the chain must still hold "
    "every head recorded in it, and a passing verification appends the current head.",
)
def verify(anchor_file: Path | None, page_rows: int) -> None:
    """Recompute the chain; exit 1 and name the first bad row if it does not match."""
    from referral_api.extensions import db

    try:
        recorded = anchors.read(anchor_file) if anchor_file is not None else {}
    except anchors.AnchorFileError as error:
        raise click.BadParameter(str(error), param_hint="--anchors") from error
    if anchor_file is not None and not anchor_file.parent.is_dir():
        raise click.BadParameter(f"{anchor_file.parent} is not a directory", param_hint="--anchors")
    factory = db.session_factory_for(current_app)
    _seal_all(factory)
    result = _verify_in_pages(factory, recorded, page_rows)
    if result.ok:
        click.echo(f"audit chain ok: {result.checked} rows verified, {result.unsealed} pending")
        for row_id in result.head_rebuilt_at:
            click.echo(
                f"warning: the chain head was lost and rebuilt (row id {row_id}): rows removed "
                "from the end before it could not be detected",
                err=True,
            )
        if result.last_seq is not None and result.last_hash is not None:
            click.echo(f"head: seq {result.last_seq} hash {result.last_hash}")
            if anchor_file is not None and recorded.get(result.last_seq) != result.last_hash:
                try:
                    anchors.append(anchor_file, result.last_seq, result.last_hash)
                except OSError as error:
                    raise click.ClickException(
                        f"the chain verified, but its head could not be recorded: {error}"
                    ) from error
        if anchor_file is not None:
            click.echo(f"{len(recorded)} anchors checked ({anchor_file})")
        return
    click.echo(
        f"audit chain BROKEN at row id {result.first_bad_id} (seq {result.first_bad_seq}): "
        f"{result.problem}; {result.checked} rows verified before it",
        err=True,
    )
    sys.exit(1)
