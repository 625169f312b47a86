"""The `referral-api` command (also `flask --app referral_api`): thin wrappers over services.

Integrators script these commands, so flags and output are a contract (docs/cli.md):
ids are printed alone on one line; secrets are printed once as KEY=value lines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext
from marshmallow import ValidationError
from marshmallow.validate import Email

from referral_api.access.actor import Actor
from referral_api.access.roles import OrgType, Role
from referral_api.exceptions import ReferralApiError


def _factory() -> Flask:
    """The app, or one `error:` line when the configuration is refused (a key file others
    can read, a missing secret…): not a traceback ending in the message."""
    from referral_api import create_app
    from referral_api.exceptions import ConfigurationError

    try:
        return create_app()
    except ConfigurationError as error:
        click.echo(f"error: {error.detail}", err=True)
        sys.exit(1)


class _CommandLine(FlaskGroup):
    """The `referral-api` group: a database that cannot be reached, or whose schema is not
    this release's (not migrated yet), is one `error:` line and exit 1 from every command (a
    cron job after a failover or a deployment that skipped `db upgrade`), not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import DBAPIError

        try:
            return super().invoke(ctx)
        except DBAPIError as error:
            if _unreachable(error):
                # The class only: the message can quote the URL, its password, or values.
                orig = error.orig if error.orig is not None else error
                click.echo(
                    f"error: the database could not be reached ({type(orig).__name__})", err=True
                )
                ctx.exit(1)
            # `db upgrade` failing is not a schema to upgrade: its traceback is wanted.
            behind = None if ctx.invoked_subcommand == "db" else _schema_behind(ctx)
            if behind is None:
                raise  # any other database error is a bug: its traceback is wanted
            _refuse_schema(ctx, behind)


def _refuse_schema(ctx: click.Context, behind: tuple[str | None, str | None]) -> None:
    click.echo(
        f"error: the database schema is at {behind[0] or 'no revision'}, this release "
        f"needs {behind[1]}: run `referral-api db upgrade` first",
        err=True,
    )
    ctx.exit(1)


def _schema_behind(ctx: click.Context) -> tuple[str | None, str | None] | None:
    """(the database's revision, this release's head) when they differ; None when they agree
    or the revision cannot be read."""
    from flask.cli import ScriptInfo
    from sqlalchemy.exc import SQLAlchemyError

    from referral_api.extensions import db
    from referral_api.migrate import current_revision, head_revision

    try:
        app = ctx.ensure_object(ScriptInfo).load_app()
        reached = current_revision(db.engine_for(app))
    except SQLAlchemyError:
        return None
    head = head_revision()
    return None if reached == head else (reached, head)


def _unreachable(error: Any) -> bool:
    """No connection could be made (no statement was run), or the one in use was lost:
    the API's rule for its 503 database-unavailable (`errors.handle_database_error`)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    connecting = isinstance(error, OperationalError | InterfaceError) and error.statement is None
    return bool(connecting or error.connection_invalidated)


# Commands that run on a database whose schema is not this release's: migrating it, and
# those that need no database (the API description, a new keyring).
_ANY_SCHEMA = frozenset({"db", "openapi", "create-keyring"})


@click.group(
    cls=_CommandLine, create_app=_factory, add_default_commands=False, add_version_option=False
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """referral_api administration."""
    # Checked before the command runs, not only when one of its statements fails: against
    # an older schema some commands ran to the end (audit seal, create-org, create-client,
    # consent expire, retention run), writing under rules the schema does not hold yet.
    if ctx.invoked_subcommand not in _ANY_SCHEMA:
        behind = _schema_behind(ctx)
        if behind is not None:
            _refuse_schema(ctx, behind)


def _session() -> Any:
    from referral_api.extensions import db

    return db.session_factory_for(current_app)()


def _fail(error: ReferralApiError) -> None:
    click.echo(f"error: {error.detail}", err=True)
    for fields in (error.extra.get("errors") or {}).values():
        for field, messages in fields.items():
            click.echo(f"  {field}: {'; '.join(messages)}", err=True)
    sys.exit(1)


def _refuse_unstorable_text(options: dict[str, str | None]) -> None:
    """Refuse option values the API refuses in a body (docs/errors.md): U+0000, or a lone
    surrogate, which is what a non-UTF-8 byte on the command line arrives as. Neither can
    be stored (the INSERT failed with a traceback); one `error:` line and exit 1, as for a
    name the service refuses."""
    from referral_api.jsonio import text_problem

    for option, value in options.items():
        message = text_problem(value) if value is not None else None
        if message:
            click.echo(f"error: {option}: {message}", err=True)
            sys.exit(1)


def _run(action: Any) -> Any:
    """Run one service call in one transaction under the system actor."""
    session = _session()
    try:
        result = action(session, Actor.system())
        session.commit()
        return result
    except ReferralApiError as error:
        session.rollback()
        _fail(error)
    finally:
        session.close()


# AppGroup and @with_appcontext: the commands also run from `app.cli` (tests, embedding),
# where no FlaskGroup pushes the application context for them.
db_group = AppGroup("db", help="Database schema.")


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (works from any directory: migrations ship in the package)."""
    from alembic.util import CommandError

    from referral_api.extensions import db
    from referral_api.migrate import current_revision, head_revision, upgrade

    try:
        upgrade(current_app.config["DATABASE_URL"], revision)
    except CommandError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    # The revision reached: asking for an older one than the database is at changes nothing.
    engine = db.engine_for(current_app)
    engine.dispose()
    reached = current_revision(engine)
    click.echo(
        f"database at {reached}" + (" (head)" if reached == head_revision() else ""), err=True
    )


@click.command("create-org")
@with_appcontext
@click.option("--name", required=True)
@click.option("--type", "org_type", required=True, type=click.Choice([t.value for t in OrgType]))
def create_org(name: str, org_type: str) -> None:
    """Create an organisation; prints its id."""
    from referral_api.admin import service

    _refuse_unstorable_text({"--name": name})
    org = _run(
        lambda s, a: service.create_organisation(s, a, name=name, org_type=OrgType(org_type))
    )
    click.echo(str(org.id))


def _password_from_env_or_prompt() -> str:
    password = os.environ.get("REFERRAL_API_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise click.UsageError("Set REFERRAL_API_PASSWORD or run interactively to be prompted.")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.command("create-user")
@with_appcontext
@click.option("--email", required=True)
@click.option("--org", "org_ref", required=True, help="Organisation id or exact name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--name", "display_name", default=None, help="Display name (default: the e-mail)")
def create_user(email: str, org_ref: str, role: str, display_name: str | None) -> None:
    """Create a user; password from REFERRAL_API_PASSWORD or a hidden prompt; prints the id."""
    from referral_api.admin import service
    from referral_api.extensions import hasher

    _refuse_unstorable_text({"--email": email, "--org": org_ref, "--name": display_name})
    try:
        # The same rule as the API's user schema: a malformed address could never log in.
        Email(error="--email is not a valid e-mail address.")(email)
    except ValidationError as error:
        raise click.BadParameter(str(error.messages[0]), param_hint="--email") from None
    password = _password_from_env_or_prompt()
    if len(password) < 12:
        raise click.UsageError("The password must have at least 12 characters.")

    def action(session: Any, actor: Actor) -> Any:
        org = service.find_organisation(session, org_ref)
        return service.create_user(
            session,
            actor,
            hasher,
            org,
            email=email,
            display_name=display_name or email,
            role=Role(role),
            password=password,
        )

    click.echo(str(_run(action).id))


@click.command("create-client")
@with_appcontext
@click.option("--name", required=True)
@click.option("--org", "org_ref", required=True, help="Organisation id or exact name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
def create_client(name: str, org_ref: str, role: str) -> None:
    """Create an API client; prints client_id=… and client_secret=… (shown once), then id=…
    (the record's id, which /api/v1/clients/{id} URLs take, e.g. to rotate the secret)."""
    from referral_api.admin import service
    from referral_api.extensions import hasher

    _refuse_unstorable_text({"--name": name, "--org": org_ref})

    def action(session: Any, actor: Actor) -> Any:
        org = service.find_organisation(session, org_ref)
        return service.create_client(session, actor, hasher, org, name=name, role=Role(role))

    created = _run(action)
    click.echo(f"client_id={created.client.client_id}")
    click.echo(f"client_secret={created.client_secret}")
    click.echo(f"id={created.client.id}")


@click.command("seed-demo")
@with_appcontext
def seed_demo() -> None:
    """Create demo organisations and users (development only; does nothing if data exists)."""
    from referral_api.seed import DEMO_PASSWORD, seed_demo_data

    if current_app.config["ENV_NAME"] == "production":
        # A refusal, not a usage error (click's exit 2 and usage text): the command line
        # was right (docs/cli.md: a refusal is one `error:` line and exit 1).
        click.echo("error: seed-demo is refused in production.", err=True)
        sys.exit(1)
    created = _run(lambda s, a: seed_demo_data(s, a))
    if not created:
        click.echo("demo data: database already has organisations; nothing seeded", err=True)
        return
    click.echo(f"demo users (password for all: {DEMO_PASSWORD}):")
    for email, role, org in created:
        click.echo(f"  {email:<42} {role:<15} {org}")


openapi_group = AppGroup("openapi", help="OpenAPI document.")


@openapi_group.command("write")
@click.argument("path", default="openapi/openapi.json", type=click.Path(dir_okay=False))
def openapi_write(path: str) -> None:
    """Write the live OpenAPI document to PATH (default openapi/openapi.json)."""
    from referral_api.openapi import spec_json

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(spec_json(current_app), encoding="utf-8")
    click.echo(str(target), err=True)


@main.command("create-keyring", with_appcontext=False)
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def create_keyring(path: str | None) -> None:
    """Create a new local keyring file (one root key, mode 0600) at PATH, default
    $REFERRAL_API_KEYRING; refused if a file is there. Prints its path. Needs no database
    and no configuration: production refuses to start without the keyring, so it comes
    first."""
    from referral_api.crypto.keyring import LocalKeyring

    target = path or os.environ.get("REFERRAL_API_KEYRING")
    if not target:
        click.echo("error: give PATH or set REFERRAL_API_KEYRING", err=True)
        sys.exit(1)
    try:
        LocalKeyring.create(Path(target))
    except (FileExistsError, OSError) as error:
        reason = (
            "a file is already there"
            if isinstance(error, FileExistsError)
            else (error.strerror or type(error).__name__)
        )
        click.echo(f"error: the keyring cannot be created at {target}: {reason}", err=True)
        sys.exit(1)
    click.echo(str(Path(target).resolve()))


def register_commands(app: Flask) -> None:
    # flask-smorest registers its own "openapi" group; ours replaces it (stable output).
    app.cli.commands.pop("openapi", None)
    from referral_api.audit.commands import audit_group
    from referral_api.consent.commands import consent_group
    from referral_api.crypto.commands import keys_group
    from referral_api.rights.commands import retention_group

    for command in (
        db_group,
        create_org,
        create_user,
        create_client,
        seed_demo,
        openapi_group,
        keys_group,
        audit_group,
        consent_group,
        retention_group,
    ):
        app.cli.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
