"""What a backup taken before an erasure still reveals after the documented key routine
(rotate-index, rotate-org-keys, rotate-root, destroy-root OLD): its blind-index entries of the
erased person must no longer confirm a guessed name. The retired index key was kept (and
re-wrapped by every root rotation) until a reviewer's probe showed it; it is deleted now."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from referral_api.access.roles import Role
from referral_api.cases.models import Case, CaseSearchIndex
from referral_api.cases.search import index_entries, index_terms
from referral_api.crypto.fields import crypto_of
from referral_api.crypto.keyring import KeyUnavailable
from referral_api.extensions import db


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    app_config["KEYRING_PATH"] = str(tmp_path / "keyring.json")
    return app_config


def test_a_backups_index_entries_of_an_erased_person_die_with_the_key_routine(
    app, client, factory, runner
):
    from referral_api.access.actor import Actor
    from referral_api.rights.models import ErasureBasis
    from referral_api.rights.service import erase_case

    headers = factory.headers(factory.user(Role.CASEWORKER))
    response = client.post(
        "/api/v1/cases",
        json={
            "case_type": "thb",
            "identity": {
                "given_name": "Olena",
                "family_name": "Kovalenko",
                "date_of_birth": "1999-04-02",
            },
        },
        headers=headers,
    )
    assert response.status_code == 201
    case_id = uuid.UUID(response.get_json()["id"])
    factory_ = db.session_factory_for(app)

    # The "backup" (a database dump taken before the erasure): the blind-index entries, and
    # what an attacker would guess (the person's name and birth date) as normalised terms.
    with factory_() as s:
        backup = {
            (f, v, val)
            for f, v, val in s.execute(
                select(
                    CaseSearchIndex.field, CaseSearchIndex.key_version, CaseSearchIndex.value
                ).where(CaseSearchIndex.case_id == case_id)
            )
        }
        case = s.get(Case, case_id)
        guesses = index_terms(case, crypto_of(s).phone_region)
        org_id = case.org_id
        s.rollback()
    assert backup

    with factory_() as s:
        erase_case(
            s,
            Actor.system(),
            s.get(Case, case_id),
            ErasureBasis.CONSENT_WITHDRAWN,
            request_id=None,
            requested_by=None,
        )
        s.commit()
    for args in (
        ["rotate-index"],
        ["rotate-org-keys"],
        ["rotate-root"],
        ["destroy-root", "1", "--yes"],
    ):
        result = runner.invoke(args=["keys", *args])
        assert result.exit_code == 0, (args, result.output)
    app.extensions["referral_api.crypto"].cache.clear()

    # With the live database and keyring only, the guessed name of the erased person must
    # no longer match the backup's index entries.
    with factory_() as s:
        keys = crypto_of(s).keys(s)
        fake = Case(id=case_id, org_id=org_id)
        try:
            recomputed = {
                (e["field"], e["key_version"], e["value"])
                for e in index_entries(keys, fake, 1, guesses)
            }
        except KeyUnavailable:  # the old index key is gone: what should happen
            recomputed = set()
        s.rollback()
    assert not (recomputed & backup), sorted(recomputed & backup)[:3]
