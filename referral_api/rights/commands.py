"""`referral-api retention run [--apply]`: erase closed cases past their retention period,
clear expired subject-access exports, delete spent sign-in failure counters and expired
idempotency keys with the responses stored for them."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import DBAPIError

retention_group = AppGroup("retention", help="Retention schedule.")


@retention_group.command("run")
@click.option("--apply", "apply_", is_flag=True, help="Erase the due cases (default: list only)")
def run(apply_: bool) -> None:
    """List (or with --apply erase, by crypto-shredding) cases past retention; cases on
    legal hold or restricted are skipped. --apply also clears expired exports, spent sign-in
    failure counters, expired idempotency keys (with their stored responses) and logins
    ended over 30 days ago (with their refresh tokens). A case whose erasure a
    concurrent change aborted is left for the next run: exit status 1."""
    from referral_api.access.actor import Actor
    from referral_api.auth.service import purge_ended_sessions, purge_stale_throttles
    from referral_api.errors import is_transaction_conflict
    from referral_api.extensions import db
    from referral_api.idempotency import purge_expired as purge_idempotency_keys
    from referral_api.rights.service import (
        LegalHoldActive,
        erase_if_still_due,
        purge_expired_exports,
        retention_due,
    )

    factory = db.session_factory_for(current_app)
    with factory() as session:
        due = retention_due(session, current_app.config["RETENTION_POLICY"])
    held = [row for row in due if row.kept]
    todo = [row for row in due if not row.kept]
    for row in due:
        kept = [
            why
            for why, yes in (("legal hold", row.legal_hold), ("restricted", row.restricted))
            if yes
        ]
        flag = f" ({', '.join(kept)}: skipped)" if kept else ""
        click.echo(
            f"{row.case_id} {row.case_type} closed {row.closed_at:%Y-%m-%d} "
            f"due {row.due_at:%Y-%m-%d}{flag}"
        )
    if not apply_:
        restricted = sum(1 for row in due if row.restricted and not row.legal_hold)
        click.echo(
            f"{len(todo)} cases due for erasure, {len(held) - restricted} on legal hold, "
            f"{restricted} restricted; run with --apply to erase",
            err=True,
        )
        return
    with factory() as session:
        purged = purge_expired_exports(session, Actor.system())
        counters = purge_stale_throttles(
            session,
            timedelta(seconds=current_app.config["LOGIN_FAILURE_WINDOW_SECONDS"]),
            datetime.now(UTC),
        )
        keys = purge_idempotency_keys(session, Actor.system())
        logins, refresh_tokens = purge_ended_sessions(session, Actor.system(), datetime.now(UTC))
        session.commit()
    if purged:
        click.echo(f"{purged} expired subject-access exports cleared", err=True)
    if counters:
        click.echo(f"{counters} spent sign-in failure counters deleted", err=True)
    if keys:
        click.echo(f"{keys} expired idempotency keys deleted", err=True)
    if logins:
        click.echo(
            f"{logins} logins ended over 30 days ago deleted, with {refresh_tokens} refresh tokens",
            err=True,
        )
    erased, skipped = 0, len(held)
    left_alone = failed = 0
    with click.progressbar(todo, label="erasing", show_pos=True, file=sys.stderr) as bar:
        for row in bar:
            with factory() as session:
                try:
                    tombstone = erase_if_still_due(session, Actor.system(), row)
                    session.commit()
                except LegalHoldActive:
                    # Placed since the list was made: skipped like the others.
                    skipped += 1
                    continue
                except DBAPIError as error:
                    # A deadlock, serialization failure or lock timeout with a request on
                    # this case: nothing of its erasure was stored. The others go on; the
                    # exit status tells the timer to run again. (The API's own test of a
                    # retryable conflict, its 503s: one list of SQLSTATEs.)
                    if not is_transaction_conflict(error):
                        raise
                    session.rollback()
                    failed += 1
                    click.echo(
                        f"\n{row.case_id}: not erased, a concurrent change got in the way "
                        f"({type(error.orig).__name__}); retry later",
                        err=True,
                    )
                    continue
                if tombstone is None:
                    left_alone += 1
                else:
                    erased += 1
    summary = f"{erased} cases erased, {skipped} skipped under legal hold or restriction"
    if left_alone:
        summary += f", {left_alone} changed since listed and left alone"
    if failed:
        summary += f", {failed} failed on a database conflict (retry later)"
    click.echo(summary, err=True)
    if failed:
        raise SystemExit(1)
