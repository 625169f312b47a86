"""Migrations are the schema: `upgrade head` builds exactly what the models declare."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import referral_api.models  # noqa: F401
from referral_api.db import Base
from referral_api.extensions import db
from referral_api.migrate import current_revision, head_revision


def test_database_is_at_head(app):
    assert current_revision(db.engine_for(app)) == head_revision()


def test_models_and_migrations_do_not_drift(app):
    with db.engine_for(app).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_0012_downgrade_refuses_to_drop_category_columns_holding_data(app, client, auth_headers):
    """The code before 0012 cannot read category columns: dropping them with a case's data
    in them would lose it, so the downgrade refuses and changes nothing; once they are
    empty it drops them, and upgrading adds them back."""
    import pytest
    from alembic import command
    from sqlalchemy import inspect, text, update

    from referral_api.access.roles import Role
    from referral_api.cases.models import Case
    from referral_api.migrate import alembic_config, upgrade

    created = client.post(
        "/api/v1/cases",
        json={"case_type": "thb", "identity": {"given_name": "Olena"}},
        headers=auth_headers(Role.CASEWORKER),
    )
    assert created.status_code == 201, created.get_json()
    url = app.config["DATABASE_URL"]
    engine = db.engine_for(app)
    engine.dispose()
    command.downgrade(alembic_config(url), "0012")  # the later revisions hold no data
    with pytest.raises(RuntimeError, match="1 case"):
        command.downgrade(alembic_config(url), "0011")
    assert current_revision(engine) == "0012"
    assert "identity" in {c["name"] for c in inspect(engine).get_columns("cases")}

    with engine.begin() as connection:
        connection.execute(update(Case.__table__).values(dict.fromkeys(Case.__encrypted_columns__)))
    engine.dispose()
    command.downgrade(alembic_config(url), "0011")
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("cases")}
        assert "identity" not in columns and "given_name" in columns
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM cases")).scalar() == 1
    finally:
        engine.dispose()
        upgrade(url)
    assert current_revision(engine) == head_revision()


def test_downgrades_refuse_to_drop_tables_holding_records(app, client, factory):
    """Once a case is erased its category columns are empty (0012 lets go), but dropping the
    subject-rights tables would destroy the tombstone that proves the erasure, and dropping
    0002's the audit trail: those downgrades refuse while the tables hold rows."""
    import pytest
    from alembic import command
    from rights_support import World, new_token, ok
    from sqlalchemy import text

    from referral_api.migrate import alembic_config, upgrade

    world = World(app, factory, client)
    ok(world.approve(world.request_erasure(world.case(new_token("downgrade")))))
    url = app.config["DATABASE_URL"]
    engine = db.engine_for(app)
    engine.dispose()
    try:
        for target in ("0005", "base"):
            with pytest.raises(RuntimeError, match="erasure_tombstones \\(1\\)"):
                command.downgrade(alembic_config(url), target)
        with engine.connect() as connection:
            for table in ("erasure_tombstones", "erasure_requests", "audit_events"):
                assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    finally:
        engine.dispose()
        upgrade(url)
    assert current_revision(engine) == head_revision()


def test_0013_stops_on_data_keys_without_their_org_key_and_takes_the_restored_key(
    app, client, auth_headers, runner
):
    """A data key wrapped under an organisation-key version that was deleted (what a
    rotate-org-keys racing a POST /cases could leave before 0013): `keys status` names it,
    the upgrade stops and changes nothing, and once the key row is restored from a backup
    (docs/key-management.md) it goes through and the case decrypts."""
    import json

    import pytest
    from alembic import command
    from sqlalchemy import select, text

    from referral_api.access.roles import Role
    from referral_api.crypto.models import OrgKey
    from referral_api.migrate import alembic_config, upgrade

    headers = auth_headers(Role.CASEWORKER)
    body = {"case_type": "thb", "identity": {"given_name": "Olena"}}
    created = client.post("/api/v1/cases", json=body, headers=headers)
    assert created.status_code == 201, created.get_json()
    url = app.config["DATABASE_URL"]
    engine = db.engine_for(app)
    engine.dispose()
    command.downgrade(alembic_config(url), "0012")
    try:
        with engine.begin() as connection:
            backup = connection.execute(select(OrgKey.__table__)).one()._asdict()
            connection.execute(OrgKey.__table__.insert().values({**backup, "version": 2}))
            connection.execute(text("DELETE FROM org_keys WHERE version = 1"))
        status = runner.invoke(args=["keys", "status", "--json"])
        assert status.exit_code == 0, status.output
        assert json.loads(status.output)["case_keys_without_org_key"] == {str(backup["org_id"]): 1}
        engine.dispose()
        with pytest.raises(RuntimeError, match="1 case data keys"):
            command.upgrade(alembic_config(url), "head")
        assert current_revision(engine) == "0012"

        with engine.begin() as connection:
            connection.execute(OrgKey.__table__.insert().values(backup))  # from the backup
        engine.dispose()
    finally:
        upgrade(url)
    assert current_revision(engine) == head_revision()
    app.extensions["referral_api.crypto"].cache.clear()
    read = client.get(f"/api/v1/cases/{created.get_json()['id']}", headers=headers)
    assert read.status_code == 200 and read.get_json()["identity"]["given_name"] == "Olena"
