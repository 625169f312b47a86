"""`referral-api keys …`: status and rotation (thin wrappers over crypto.rotation)."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from referral_api.crypto import rotation

# AppGroup: its commands push the application context themselves, so they also run from
# `app.cli` (tests, embedding), where no FlaskGroup does it for them.
keys_group = AppGroup("keys", help="Key status and rotation.")


def _factory() -> Any:
    from referral_api.extensions import db

    return db.session_factory_for(current_app)


def _one_error_line(command: Callable[..., None]) -> Callable[..., None]:
    """A key that will not unwrap, a record that will not decrypt, or a refusal: exit 1 with
    one `error:` line on stderr (docs/cli.md), not a traceback. The messages name versions,
    tables and ids, never key material. What the command did before stays done: every
    rotation is resumable, and its batches are all or nothing."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from referral_api.crypto.envelope import DecryptionError
        from referral_api.crypto.keyring import KeyUnavailable
        from referral_api.exceptions import ReferralApiError

        try:
            command(*args, **kwargs)
        except ReferralApiError as error:
            _fail(error.detail)
        except (KeyUnavailable, DecryptionError) as error:
            _fail(f"{error}; fix the key or the record, then run the command again")

    return run


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _audit(action: str, details: dict[str, Any]) -> None:
    from referral_api.access.actor import Actor
    from referral_api.audit.service import record

    with _factory()() as session:
        record(session, Actor.system(), action, resource_type="keys", details=details)
        session.commit()


@keys_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output")
def status(as_json: bool) -> None:
    """Key versions and how much data each version protects."""
    with _factory()() as session:
        result = rotation.key_status(session)
    data: dict[str, dict[Any, Any]] = {
        "root": result.root,
        "org_keys_by_root_version": result.org_keys_by_root_version,
        "index_keys_by_root_version": result.index_keys_by_root_version,
        "index_keys_by_state": result.index_keys_by_state,
        "case_keys_by_version": result.case_keys_by_version,
        "cases_by_key_version": result.cases_by_key_version,
        "ciphertexts_by_key_version": result.ciphertexts_by_key_version,
        # formats 1-3: a case's fields still in their own columns (docs/key-management.md)
        "ciphertexts_by_format": result.ciphertexts_by_format,
        # blind_index.RULES: keys on older rules need `rotate-index` (docs/search.md)
        "index_keys_by_rules": result.index_keys_by_rules,
        # unreadable cases: docs/key-management.md, "Data keys without their organisation key"
        "case_keys_without_org_key": result.case_keys_without_org_key,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    root = result.root
    click.echo(
        f"root key: provider {root['provider']}, current v{root['current_version']}, "
        f"available {root['versions']}, destroyed {root['destroyed']}"
    )
    for label in list(data)[1:]:
        values = data[label]
        # Versions (and formats) are numbers, shown as v1…; index-key states are words.
        shown = ", ".join(
            f"v{k}: {v}" if isinstance(k, int) else f"{k}: {v}" for k, v in sorted(values.items())
        )
        shown = shown or "none"
        click.echo(f"{label.replace('_', ' ')}: {shown}")


@keys_group.command("rotate-root")
@click.option("--resume", is_flag=True, help="Finish re-wrapping without a new root version")
@_one_error_line
def rotate_root(resume: bool) -> None:
    """New root key version; re-wrap every organisation and index key (online, resumable)."""
    started = time.perf_counter()
    with click.progressbar(
        length=0, label="re-wrapping keys", show_pos=True, file=sys.stderr
    ) as bar:
        version, total = rotation.rotate_root(_factory(), resume=resume, progress=bar.update)
    seconds = time.perf_counter() - started
    _audit("keys:rotate-root", {"root_version": version, "rewrapped": total})
    rate = f" ({total / seconds:,.0f} keys/s)" if total and seconds > 0 else ""
    click.echo(f"root key v{version} current; {total} keys re-wrapped in {seconds:.1f} s{rate}")


@keys_group.command("destroy-root")
@click.argument("version", type=int)
@click.confirmation_option(prompt="Destroy this root key version for ever?")
@_one_error_line
def destroy_root(version: int) -> None:
    """Destroy an old root key version (refused while any key is wrapped under it)."""
    with _factory()() as session:
        rotation.destroy_root_version(session, version)
    _audit("keys:destroy-root", {"root_version": version})
    click.echo(f"root key v{version} destroyed")


@keys_group.command("rotate-case-keys")
@click.option(
    "--batch-size",
    default=200,
    show_default=True,
    type=click.IntRange(min=1, max=rotation.MAX_SWEEP_BATCH),
)
@_one_error_line
def rotate_case_keys(batch_size: int) -> None:
    """Give every case a new data key and re-encrypt everything under its old one (resumable)."""
    from sqlalchemy import func, select

    factory = _factory()
    with factory() as session:
        job = rotation.open_rotation_job(session, "case-keys")
        started_at = job.started_at
        pending = session.scalar(
            select(func.count()).select_from(
                rotation.cases_needing_rotation(session, started_at).subquery()
            )
        )
        session.commit()
        job_id = job.id
    with click.progressbar(
        length=pending or 0, label="re-encrypting cases", show_pos=True, file=sys.stderr
    ) as bar:
        done = rotation.rotate_case_keys(
            factory, started_at=started_at, batch_size=batch_size, progress=bar.update
        )
    rotation.finish_rotation_job(factory, job_id)
    _audit("keys:rotate-case-keys", {"cases": done})
    click.echo(f"{done} cases re-encrypted under new data keys")


@keys_group.command("rotate-index")
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1, max=rotation.MAX_SWEEP_BATCH),
)
@_one_error_line
def rotate_index(batch_size: int) -> None:
    """New blind-index key per organisation: dual-write, backfill, switch (resumable)."""
    factory = _factory()
    with factory() as session:
        created = rotation.start_index_rotation(session)
        session.commit()
    with click.progressbar(
        length=0, label="backfilling index", show_pos=True, file=sys.stderr
    ) as bar:
        filled = rotation.backfill_index(factory, batch_size=batch_size, progress=bar.update)
    _audit("keys:rotate-index", {"organisations": created, "cases": filled})
    click.echo(f"{created} organisations on a new index key; {filled} cases indexed")


@keys_group.command("rotate-org-keys")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1))
@_one_error_line
def rotate_org_keys(batch_size: int) -> None:
    """New organisation keys; re-wrap every data key; delete the old versions (resumable).

    Run it after erasures, then `rotate-root` and `destroy-root OLD`: backups taken before
    can then no longer unwrap the erased cases' data keys.
    """
    from sqlalchemy import func, select

    from referral_api.crypto.models import CaseKey

    factory = _factory()
    with factory() as session:
        total = session.scalar(select(func.count()).select_from(CaseKey)) or 0
    with click.progressbar(
        length=total, label="re-wrapping data keys", show_pos=True, file=sys.stderr
    ) as bar:
        orgs, rewrapped = rotation.rotate_org_keys(
            factory, batch_size=batch_size, progress=bar.update
        )
    _audit("keys:rotate-org-keys", {"organisations": orgs, "data_keys": rewrapped})
    click.echo(f"{orgs} organisations on new keys; {rewrapped} data keys re-wrapped")
