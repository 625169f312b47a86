"""`referral-api audit …`: seal pending rows and verify the hash chain."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

from referral_api.audit import service

# AppGroup: its commands push the application context themselves, so they also run from
# `app.cli` (tests, embedding), where no FlaskGroup does it for them.
audit_group = AppGroup("audit", help="Audit log.")


@audit_group.command("seal")
def seal() -> None:
    """Chain every pending audit row."""
    from referral_api.extensions import db

    sealed = service.seal_all(db.session_factory_for(current_app))
    click.echo(f"{sealed} rows sealed")


@audit_group.command("verify")
def verify() -> None:
    """Recompute the chain; exit 1 and name the first bad row if it does not match."""
    from referral_api.extensions import db

    factory = db.session_factory_for(current_app)
    service.seal_all(factory)
    with factory() as session:
        result = service.verify_chain(session)
    if result.ok:
        click.echo(f"audit chain ok: {result.checked} rows verified, {result.unsealed} pending")
        return
    click.echo(
        f"audit chain BROKEN at row id {result.first_bad_id} (seq {result.first_bad_seq}): "
        f"{result.problem}; {result.checked} rows verified before it",
        err=True,
    )
    sys.exit(1)
