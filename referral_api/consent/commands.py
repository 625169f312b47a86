"""`referral-api consent expire`: record `expired` events (idempotent)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

# AppGroup: its commands push the application context themselves, so they also run from
# `app.cli` (tests, embedding), where no FlaskGroup does it for them.
consent_group = AppGroup("consent", help="Consent maintenance.")


@consent_group.command("expire")
def expire() -> None:
    """Record `expired` for consents whose provisions have all ended (safe to repeat).

    Decisions never wait for this: an ended provision stops permitting at once. The events
    are for reporting.
    """
    from referral_api.access.actor import Actor
    from referral_api.consent.service import expire_due
    from referral_api.extensions import db

    with db.session_factory_for(current_app)() as session:
        count = expire_due(session, Actor.system())
        session.commit()
    click.echo(f"{count} consents marked expired")
