"""`referral-api retention run [--apply]`: erase closed cases past their retention period,
clear expired subject-access exports, delete spent sign-in failure counters and expired
idempotency keys with the responses stored for them."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup

retention_group = AppGroup("retention", help="Retention schedule.")


@retention_group.command("run")
@click.option("--apply", "apply_", is_flag=True, help="Erase the due cases (default: list only)")
def run(apply_: bool) -> None:
    """List (or with --apply erase, by crypto-shredding) cases past retention; legal holds
    are skipped. --apply also clears expired exports, spent sign-in failure counters and
    expired idempotency keys (with their stored responses)."""
    from referral_api.access.actor import Actor
    from referral_api.auth.service import purge_stale_throttles
    from referral_api.cases.models import Case, CaseStatus
    from referral_api.extensions import db
    from referral_api.idempotency import purge_expired as purge_idempotency_keys
    from referral_api.rights.models import ErasureBasis
    from referral_api.rights.service import (
        LegalHoldActive,
        erase_case,
        purge_expired_exports,
        retention_due,
    )

    factory = db.session_factory_for(current_app)
    with factory() as session:
        due = retention_due(session, current_app.config["RETENTION_POLICY"])
    held = [row for row in due if row.legal_hold]
    todo = [row for row in due if not row.legal_hold]
    for row in due:
        flag = " (legal hold: skipped)" if row.legal_hold else ""
        click.echo(
            f"{row.case_id} {row.case_type} closed {row.closed_at:%Y-%m-%d} "
            f"due {row.due_at:%Y-%m-%d}{flag}"
        )
    if not apply_:
        click.echo(
            f"{len(todo)} cases due for erasure, {len(held)} on legal hold; "
            "run with --apply to erase",
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
        session.commit()
    if purged:
        click.echo(f"{purged} expired subject-access exports cleared", err=True)
    if counters:
        click.echo(f"{counters} spent sign-in failure counters deleted", err=True)
    if keys:
        click.echo(f"{keys} expired idempotency keys deleted", err=True)
    erased, skipped = 0, len(held)
    left_alone = 0
    with click.progressbar(todo, label="erasing", show_pos=True, file=sys.stderr) as bar:
        for row in bar:
            with factory() as session:
                case = session.get(Case, row.case_id, with_for_update=True)
                # The list is a snapshot: a case erased, reopened or closed anew since is
                # left alone (a reopened case is in use again; a re-closed one not yet due).
                # Read FOR UPDATE: a reopening or a legal hold at this moment waits for the
                # erasure, or the erasure sees it.
                if (
                    case is None
                    or case.erased
                    or case.status is not CaseStatus.CLOSED
                    or case.closed_at != row.closed_at
                ):
                    left_alone += 1
                    continue
                try:
                    erase_case(
                        session,
                        Actor.system(),
                        case,
                        ErasureBasis.RETENTION_EXPIRED,
                        request_id=None,
                        requested_by=None,
                    )
                except LegalHoldActive:
                    # Placed since the list was made: skipped like the others.
                    skipped += 1
                    continue
                session.commit()
                erased += 1
    summary = f"{erased} cases erased, {skipped} skipped under legal hold"
    if left_alone:
        summary += f", {left_alone} changed since listed and left alone"
    click.echo(summary, err=True)
