"""Erasure by crypto-shredding (GDPR Art. 17; DESIGN.md §6, issue 6).

A supervisor requests, a DPO (another person) approves; a legal hold blocks it. On approval
every data key of the case is destroyed, every ciphertext column nulled, blind-index entries
deleted and open referrals cancelled, in one transaction, leaving a tombstone without
personal data. The backup test shows what destroying the data keys does and does not do: a
copy of the wrapped keys and ciphertexts taken before the erasure still decrypts while the
root key version it was wrapped under lives, and no longer does once that root version is
rotated away and destroyed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import assert_problem
from idempotency_support import as_written_before
from rights_support import (
    API,
    World,
    all_binary_values,
    as_bytes,
    binary_columns,
    case_linked_rows,
    consent_body,
    database_text,
    new_token,
    ok,
    uuid_param,
)
from sqlalchemy import select

from referral_api.audit.models import AuditEvent
from referral_api.crypto import envelope
from referral_api.crypto.keyring import KeyUnavailable, LocalKeyring
from referral_api.crypto.keys import _case_key_aad, _org_key_aad, unwrap_data_key
from referral_api.db import Base
from referral_api.rights.models import ErasureTombstone


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    """A keyring of this test's own: the backup test rotates and destroys root versions."""
    app_config["KEYRING_PATH"] = str(tmp_path / "k.json")
    return app_config


@pytest.fixture
def world(app: Any, factory: Any, client: Any) -> World:
    return World(app, factory, client)


# ---- a backup, and decrypting it by hand --------------------------------------------------


@dataclass
class Backup:
    """What a database backup taken before the erasure holds about the case: its wrapped
    data keys, its organisation's wrapped keys, and every ciphertext of every row of it."""

    org_keys: list[tuple[uuid.UUID, int, bytes]] = field(default_factory=list)
    case_keys: list[tuple[uuid.UUID, int, uuid.UUID, int, bytes]] = field(default_factory=list)
    # (table, column, row id, case id, blob)
    ciphertexts: list[tuple[str, str, uuid.UUID, uuid.UUID, bytes]] = field(default_factory=list)


def take_backup(world: World, case_id: str) -> Backup:
    backup = Backup()
    for org_id, version, wrapped in world.sql(
        "SELECT org_id, version, wrapped_key FROM org_keys WHERE org_id = :org",
        org=uuid_param(world.app, world.org),
    ):
        backup.org_keys.append((uuid.UUID(str(org_id)), version, as_bytes(wrapped) or b""))
    for cid, version, org_id, org_version, wrapped in world.sql(
        "SELECT case_id, version, org_id, org_key_version, wrapped_key FROM case_keys "
        "WHERE case_id = :cid",
        cid=uuid_param(world.app, case_id),
    ):
        backup.case_keys.append(
            (uuid.UUID(str(cid)), version, uuid.UUID(str(org_id)), org_version, as_bytes(wrapped))
        )
    tables = {t.name: t for t in Base.metadata.sorted_tables}
    for table_name, rows in case_linked_rows(world, case_id).items():
        if table_name == "case_keys":
            continue
        for row in rows:
            for column in binary_columns(tables[table_name]):
                if row[column] is not None:
                    backup.ciphertexts.append(
                        (
                            table_name,
                            column,
                            uuid.UUID(str(row["id"])),
                            uuid.UUID(case_id),
                            as_bytes(row[column]) or b"",
                        )
                    )
    return backup


def decrypt_backup(provider: Any, backup: Backup) -> dict[tuple[str, str, uuid.UUID], Any]:
    """Restore by hand: root → organisation key → data key → field subkey → plaintext."""
    org_keys = {
        (org_id, version): provider.unwrap(wrapped, _org_key_aad(org_id, version))
        for org_id, version, wrapped in backup.org_keys
    }

    def org_key(org_id: uuid.UUID, version: int) -> bytes:
        if (org_id, version) not in org_keys:
            # After an organisation-key rotation the version the backup names is gone.
            raise KeyUnavailable("organisation key version is not available")
        return org_keys[(org_id, version)]

    data_keys = {
        (case_id, version): unwrap_data_key(
            org_key(org_id, org_version),
            wrapped,
            _case_key_aad(case_id, version, org_version),
        )
        for case_id, version, org_id, org_version, wrapped in backup.case_keys
    }
    plain: dict[tuple[str, str, uuid.UUID], Any] = {}
    for table, column, row_id, case_id, blob in backup.ciphertexts:
        data_key = data_keys[(case_id, envelope.key_version_of(blob))]
        plaintext = envelope.decrypt(
            envelope.field_subkey(data_key, table, column),
            blob,
            table=table,
            column=column,
            row_id=row_id,
            case_id=case_id,
        )
        plain[(table, column, row_id)] = json.loads(plaintext)
    return plain


def current_keyring(app: Any) -> LocalKeyring:
    """The keyring as the key file holds it now (not the app's in-process copy)."""
    return LocalKeyring.load(app.config["KEYRING_PATH"], create_if_missing=False)


# ---- arranging a case with something in every table -------------------------------------


@dataclass
class Target:
    case_id: str
    token: str
    open_referrals: list[str]
    closed_referral: str


def rich_case(world: World) -> Target:
    """A case with notes, two consents (one withdrawn with a reason), evidence, a referral
    accepted by the receiver with a transition note and messages both ways (sent with an
    Idempotency-Key), a draft referral, a rejected referral, a lifted legal hold and a
    pending subject export: a row, and a ciphertext, in every table a case reaches."""
    token = new_token("target")
    case_id = world.case(token)
    for category in ("health", "needs", "legal"):
        world.note(case_id, category, f"{category} note {token}")
    shared = ["identity", "legal"]
    world.consent(
        case_id,
        world.receiver_org,
        shared,
        evidence={
            "media_type": "application/pdf",
            "content_base64": base64.b64encode(f"%PDF-1.4 {token}".encode()).decode(),
        },
    )
    other = world.consent(case_id, world.outsider_org, ["needs"])
    ok(
        world.client.post(
            f"{API}/consents/{other['id']}/withdraw",
            json={"reason": f"changed mind {token}"},
            headers=world.h["worker"],
        )
    )
    key = f"idem-{uuid.uuid4().hex}"
    referral = world.refer(
        case_id, shared, send=True, message=f"Please help {token}", **{"Idempotency-Key": key}
    )
    # Its response stored, as an earlier version stored every keyed response (such records
    # live on for the key's lifetime after an upgrade): erasure must reach them too.
    as_written_before(world.app, key, referral)
    accepted = referral["id"]
    world.move(accepted, "received")
    world.move(accepted, "accepted", note=f"we take it {token}")
    for by in ("receiver", "worker"):
        ok(
            world.client.post(
                f"{API}/referrals/{accepted}/messages",
                json={"body": f"message from {by} {token}"},
                headers=world.h[by],
            ),
            201,
        )
    draft = world.refer(case_id, shared, send=False, message=f"draft {token}")["id"]
    rejected = world.refer(case_id, shared, send=True, message=f"third {token}")["id"]
    world.move(rejected, "rejected", reason="no_capacity")
    ok(world.hold(case_id, True, reason=f"court order {token}"))
    ok(world.hold(case_id, False))
    ok(
        world.client.post(
            f"{API}/cases/{case_id}/export",
            json={"reason": f"subject request {token}"},
            headers=world.h["sup"],
        ),
        201,
    )
    return Target(case_id, token, [accepted, draft], rejected)


def tables_with_rows(world: World, case_id: str) -> set[str]:
    return {name for name, rows in case_linked_rows(world, case_id).items() if rows}


# ---- the whole path -----------------------------------------------------------------------


def test_erasure_leaves_no_decryptable_data_and_a_backup_dies_with_its_root_version(
    app, client, runner, world
):
    target = rich_case(world)
    # Two more cases that must survive: one of the same organisation, one of another.
    same_org_token = new_token("sameorg")
    same_org_case = world.case(same_org_token)
    world.note(same_org_case, "health", f"kept {same_org_token}")
    other_org_token = new_token("otherorg")
    other_org_case = world.case(other_org_token, by="outsider")

    # The arrangement reaches every table that holds ciphertext for a case.
    reached = tables_with_rows(world, target.case_id)
    tables = {t.name: t for t in Base.metadata.sorted_tables}
    encrypted_tables = {
        name for name in tables if binary_columns(tables[name]) and "case_id" in tables[name].c
    } | {"cases"}
    assert encrypted_tables <= reached, encrypted_tables - reached

    backup = take_backup(world, target.case_id)
    assert len(backup.case_keys) == 1 and len(backup.org_keys) == 1
    provider = app.extensions["referral_api.crypto"].provider
    before = decrypt_backup(current_keyring(app), backup)
    # 10 category columns of the case, and the rows of every table it reaches.
    assert len(before) == len(backup.ciphertexts) > 30
    case_uuid = uuid.UUID(target.case_id)
    assert before[("cases", "identity", case_uuid)]["given_name"] == f"Olena{target.token}"
    # The backup holds the person's data in every one of those tables.
    for table_name in encrypted_tables - {"case_keys"}:
        values = [v for (t, _, _), v in before.items() if t == table_name]
        if table_name == "consent_records":  # the evidence file, base64
            values = [base64.b64decode(v).decode() for v in values if v]
        assert target.token in json.dumps(values, ensure_ascii=False), table_name

    linked = case_linked_rows(world, target.case_id)
    index_entries = len(linked["case_search_index"])
    assert index_entries > 0
    audit_before = {
        row[0]
        for row in world.sql(
            "SELECT id FROM audit_events WHERE case_id = :cid",
            cid=uuid_param(app, target.case_id),
        )
    }

    request_id = world.request_erasure(target.case_id, "consent_withdrawn")
    tombstone = ok(world.approve(request_id))

    assert tombstone["case_id"] == target.case_id
    assert tombstone["org_id"] == str(world.org)
    assert tombstone["request_id"] == request_id
    assert tombstone["basis"] == "consent_withdrawn"
    assert tombstone["requested_by"] == str(world.ids["sup"])
    assert tombstone["approved_by"] == str(world.ids["dpo"])
    assert tombstone["data_keys_destroyed"] == 1
    assert tombstone["ciphertexts_cleared"] == len(backup.ciphertexts)
    assert tombstone["index_entries_deleted"] == index_entries
    assert tombstone["referrals_cancelled"] == 2
    # The digest proves which wrapped keys were destroyed, without being able to unwrap them.
    destroyed = sorted(wrapped for *_, wrapped in backup.case_keys)
    assert tombstone["key_digest"] == hashlib.sha256(b"".join(destroyed)).hexdigest()
    assert target.token not in json.dumps(tombstone)

    # Raw rows: no ciphertext left in any row of the case, no key, no index entry.
    after = case_linked_rows(world, target.case_id)
    for table_name, rows in after.items():
        for row in rows:
            for column in binary_columns(tables[table_name]):
                assert row[column] is None, (table_name, column)
    for gone in ("case_keys", "case_search_index", "subject_exports", "idempotent_responses"):
        assert after[gone] == [], gone
    assert after["cases"][0]["erased"] in (True, 1)
    statuses = {
        str(uuid.UUID(str(r["id"]))): (r["status"], r["status_reason"]) for r in after["referrals"]
    }
    assert statuses == {
        **dict.fromkeys(target.open_referrals, ("cancelled", "case_erased")),
        target.closed_referral: ("rejected", "no_capacity"),
    }
    assert after["cases"][0]["key_version"] is None
    # Nothing of the case survives anywhere in the database: no plaintext canary in any
    # column of any table (audit rows and tombstones included), and none of its
    # ciphertexts or wrapped keys copied elsewhere.
    assert target.token not in database_text(world)
    remaining = set(all_binary_values(world))
    assert not {blob for *_, blob in backup.ciphertexts} & remaining
    assert not {wrapped for *_, wrapped in backup.case_keys} & remaining
    # The erasing process keeps no data key of the case in its key cache.
    cache = app.extensions["referral_api.crypto"].cache
    assert not [k for k in cache._data if isinstance(k, tuple) and case_uuid in k]

    # A backup restored right now still decrypts: the organisation key is live and the
    # root version that wraps it exists. Destroying DEK rows alone does not defeat it.
    assert decrypt_backup(current_keyring(app), backup) == before

    result = runner.invoke(args=["keys", "rotate-root"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["keys", "destroy-root", "1", "--yes"])
    assert result.exit_code == 0, result.output
    assert current_keyring(app).describe().destroyed == (1,)

    # Now the backup is dead with the current keyring: its organisation key was wrapped
    # under root version 1, which no longer exists (in the file nor in the app).
    for keyring in (current_keyring(app), provider):
        with pytest.raises(KeyUnavailable):
            decrypt_backup(keyring, backup)
        org_id, version, wrapped = backup.org_keys[0]
        with pytest.raises(KeyUnavailable):
            keyring.unwrap(wrapped, _org_key_aad(org_id, version))

    # Every other case still decrypts through the API, from keys unwrapped afresh.
    cache.clear()
    kept = ok(client.get(f"{API}/cases/{same_org_case}", headers=world.h["worker"]))
    assert kept["identity"]["given_name"] == f"Olena{same_org_token}"
    notes = ok(client.get(f"{API}/cases/{same_org_case}/notes", headers=world.h["worker"]))
    assert [n["text"] for n in notes] == [f"kept {same_org_token}"]
    other = ok(client.get(f"{API}/cases/{other_org_case}", headers=world.h["outsider"]))
    assert other["health"]["notes"] == f"Diabetic {other_org_token}"
    found = ok(
        client.get(
            f"{API}/cases",
            query_string={"name": f"Olena{same_org_token}"},
            headers=world.h["worker"],
        )
    )
    assert [c["id"] for c in found] == [same_org_case]

    # The audit trail keeps every row of the case and still verifies.
    audit_after = {
        row[0]
        for row in world.sql(
            "SELECT id FROM audit_events WHERE case_id = :cid",
            cid=uuid_param(app, target.case_id),
        )
    }
    assert audit_before < audit_after
    erase_rows = world.scalars(
        select(AuditEvent).where(AuditEvent.case_id == case_uuid, AuditEvent.action == "case:erase")
    )
    assert len(erase_rows) == 1
    erase_row = erase_rows[0]
    assert erase_row.decision == "allow"
    assert erase_row.actor_id == world.ids["dpo"]
    assert erase_row.legal_basis == "gdpr-17:consent_withdrawn"
    details = json.loads(erase_row.details)
    assert details["tombstone_id"] == tombstone["id"]
    assert details["key_digest"] == tombstone["key_digest"]
    verify = ok(client.get(f"{API}/audit/verify", headers=world.h["platform_dpo"]))
    assert verify["ok"] is True, verify
    assert verify["first_bad_id"] is None

    stored = world.scalars(select(ErasureTombstone).where(ErasureTombstone.case_id == case_uuid))
    assert len(stored) == 1 and str(stored[0].id) == tombstone["id"]


def test_restored_backup_of_data_keys_is_useless_even_with_the_live_org_key(
    app, client, runner, world
):
    token = new_token("restored")
    case_id = world.case(token)
    backup = take_backup(world, case_id)
    ok(world.approve(world.request_erasure(case_id)))
    # The documented routine after erasures: new organisation keys, new root, old root gone.
    assert runner.invoke(args=["keys", "rotate-org-keys"]).exit_code == 0
    assert runner.invoke(args=["keys", "rotate-root"]).exit_code == 0
    assert runner.invoke(args=["keys", "destroy-root", "1", "--yes"]).exit_code == 0

    # Restore only the erased case's key rows and ciphertexts; use the live org_keys row.
    live = take_backup(world, world.case(new_token("live")))
    restored = Backup(live.org_keys, backup.case_keys, backup.ciphertexts)
    with pytest.raises(KeyUnavailable):
        decrypt_backup(current_keyring(app), restored)


def test_erased_case_answers_410_to_its_organisation_and_404_to_others(app, client, world):
    token = new_token("gone")
    case_id = world.case(token)
    consent = world.consent(case_id, world.receiver_org, ["identity"])
    ok(world.approve(world.request_erasure(case_id)))

    own = [world.h["worker"], world.h["sup"]]
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"{API}/cases/{case_id}", None),
        ("PATCH", f"{API}/cases/{case_id}", {"risk_level": "low"}),
        ("GET", f"{API}/cases/{case_id}/notes", None),
        ("POST", f"{API}/cases/{case_id}/notes", {"category": "needs", "text": "x"}),
        ("GET", f"{API}/cases/{case_id}/consents", None),
        ("POST", f"{API}/cases/{case_id}/consents", None),
        ("GET", f"{API}/consents/{consent['id']}", None),
        (
            "POST",
            f"{API}/cases/{case_id}/referrals",
            {
                "to_org_id": str(world.receiver_org),
                "purpose": "legal_assistance",
                "categories": ["identity"],
                "send": True,
            },
        ),
    ]
    for method, url, body in requests:
        if url.endswith("/consents") and method == "POST":
            body = consent_body(world.receiver_org, ["identity"])
        for headers in own:
            response = client.open(
                url, method=method, json=body, headers={**headers, "If-Match": '"x"'}
            )
            problem = assert_problem(response, 410)
            assert problem["type"].endswith("/problems/erased"), problem
            assert token not in response.get_data(as_text=True)
        for outsider in ("outsider", "outsider_sup"):
            response = client.open(
                url, method=method, json=body, headers={**world.h[outsider], "If-Match": '"x"'}
            )
            assert_problem(response, 404)
    # The owning organisation's DPO sees it gone too; rights actions on it are gone as well.
    assert_problem(client.get(f"{API}/cases/{case_id}", headers=world.h["dpo"]), 410)
    for path, body in (
        ("erasure", {"basis": "objection"}),
        ("export", {"reason": "subject request"}),
        ("restriction", {"restricted": True}),
        ("legal-hold", {"hold": True, "reason": "court"}),
    ):
        response = client.post(f"{API}/cases/{case_id}/{path}", json=body, headers=world.h["sup"])
        assert_problem(response, 410)
        response = client.post(
            f"{API}/cases/{case_id}/{path}", json=body, headers=world.h["outsider_sup"]
        )
        assert_problem(response, 404)
    # It is out of lists and searches.
    listed = ok(client.get(f"{API}/cases", headers=world.h["worker"]))
    assert case_id not in [c["id"] for c in listed]
    # The 410s are on the record as denials, ids only.
    denials = world.scalars(
        select(AuditEvent).where(
            AuditEvent.case_id == uuid.UUID(case_id),
            AuditEvent.decision == "deny",
            AuditEvent.reason == "case erased",
        )
    )
    assert len(denials) >= len(requests) * len(own)


def test_the_erasure_requests_are_listed_a_page_at_a_time(app, client, world):
    """Found by review: GET /erasures answered every request in one response, with no page
    size (?limit was a 422), and each request shown is an audit row."""
    made = [world.request_erasure(world.case(new_token("page"))) for _ in range(5)]
    seen: list[str] = []
    url, pages = f"{API}/erasures?limit=2", 0
    while url:
        response = client.get(url, headers=world.h["dpo"])
        page = ok(response)
        assert len(page) <= 2
        seen += [r["id"] for r in page]
        pages += 1
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
    assert pages == 3 and sorted(seen) == sorted(made)
    shown = world.sql("SELECT count(*) FROM audit_events WHERE action = 'erasure:list'")
    assert shown == [(5,)]
    assert_problem(client.get(f"{API}/erasures?limit=101", headers=world.h["dpo"]), 422)
    # The pages, in order, are the one-page list (oldest first).
    everything = ok(client.get(f"{API}/erasures?limit=100", headers=world.h["dpo"]))
    assert [r["id"] for r in everything] == seen
    assert [r["requested_at"] for r in everything] == sorted(r["requested_at"] for r in everything)


def test_open_referrals_are_cancelled_and_every_recipient_is_told(app, client, world):
    token = new_token("referred")
    case_id = world.case(token)
    world.consent(case_id, world.receiver_org, ["identity", "legal"])
    live = world.refer(case_id, ["identity"], send=True, message=f"help {token}")["id"]
    world.move(live, "received")
    draft = world.refer(case_id, ["identity"], send=False, message=f"draft {token}")["id"]
    done = world.refer(case_id, ["identity"], send=True, message=f"done {token}")["id"]
    world.move(done, "rejected", reason="no_capacity", business_status="intake-2")
    packet = client.get(f"{API}/referrals/{live}/packet", headers=world.h["receiver"])
    assert packet.status_code == 200

    tombstone = ok(world.approve(world.request_erasure(case_id)))
    assert tombstone["referrals_cancelled"] == 2

    for referral_id in (live, draft):
        body = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["worker"]))
        assert (body["status"], body["status_reason"]) == ("cancelled", "case_erased")
        assert body["message"] is None
    finished = ok(client.get(f"{API}/referrals/{done}", headers=world.h["worker"]))
    assert (finished["status"], finished["business_status"]) == ("rejected", None)
    received = ok(client.get(f"{API}/referrals/{live}", headers=world.h["receiver"]))
    assert (received["status"], received["status_reason"]) == ("cancelled", "case_erased")
    assert token not in json.dumps(received)
    assert_problem(client.get(f"{API}/referrals/{live}/packet", headers=world.h["receiver"]), 404)
    # The status history records the cancellation with its reason code.
    history = world.sql(
        "SELECT to_status, reason FROM referral_transitions WHERE referral_id = :rid",
        rid=uuid_param(app, live),
    )
    assert ("cancelled", "case_erased") in [tuple(row) for row in history]
    # The receiver learns of the cancellation like any other (Art. 19: recipients are told).
    notes = ok(client.get(f"{API}/notifications", headers=world.h["receiver"]))
    cancelled = [n for n in notes if n["referral_id"] == live and n["status"] == "cancelled"]
    assert cancelled, notes
    # A draft was never sent: its receiver is not told it existed.
    assert not [n for n in notes if n["referral_id"] == draft]
    # A finished referral disclosed data too: its receiver is told of the erasure (Art. 19),
    # once; the receiver of the cancelled one already knows from the cancellation.
    erased = [(n["referral_id"], n["status"]) for n in notes if n["event"] == "case:erased"]
    assert erased == [(done, None)]
    (details,) = world.sql("SELECT details FROM audit_events WHERE action = 'case:erase'")[0]
    assert json.loads(details)["recipients_notified"] == 1
    # The sender (the controller that erased) is not told of its own erasure.
    sender = ok(client.get(f"{API}/notifications", headers=world.h["worker"]))
    assert not [n for n in sender if n["event"] == "case:erased"]


# ---- who may request and approve ----------------------------------------------------------


def test_only_a_supervisor_requests_and_only_a_dpo_of_the_case_approves(app, client, world):
    case_id = world.case(new_token("who"))
    for name in ("worker", "dpo", "admin", "outsider"):
        response = client.post(
            f"{API}/cases/{case_id}/erasure", json={"basis": "objection"}, headers=world.h[name]
        )
        assert_problem(response, 403)  # no permission, whatever the scope
    assert_problem(
        client.post(
            f"{API}/cases/{case_id}/erasure",
            json={"basis": "objection"},
            headers=world.h["outsider_sup"],
        ),
        404,
    )
    bad = client.post(
        f"{API}/cases/{case_id}/erasure", json={"basis": "bored"}, headers=world.h["sup"]
    )
    assert_problem(bad, 422)

    request_id = world.request_erasure(case_id, "objection")
    again = client.post(
        f"{API}/cases/{case_id}/erasure", json={"basis": "objection"}, headers=world.h["sup2"]
    )
    assert_problem(again, 409)

    for name in ("worker", "sup", "sup2", "admin"):
        assert_problem(world.approve(request_id, by=name), 403)
    assert_problem(world.approve(request_id, by="outsider_dpo"), 404)
    assert_problem(
        client.post(f"{API}/erasures/{uuid.uuid4()}/approve", headers=world.h["dpo"]), 404
    )
    # Still pending and the case untouched.
    pending = ok(client.get(f"{API}/erasures", headers=world.h["dpo"]))
    assert [r["id"] for r in pending] == [request_id]
    assert ok(client.get(f"{API}/erasures", headers=world.h["outsider_dpo"])) == []
    assert ok(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]))["id"] == case_id

    ok(world.approve(request_id))
    second = world.approve(request_id)
    assert_problem(second, 409)
    assert ok(client.get(f"{API}/erasures", headers=world.h["dpo"])) == []
    executed = ok(
        client.get(f"{API}/erasures", query_string={"status": "executed"}, headers=world.h["dpo"])
    )
    assert [(r["id"], r["decided_by"]) for r in executed] == [(request_id, str(world.ids["dpo"]))]
    # Refusals by role are on the record.
    denied = world.sql(
        "SELECT count(*) FROM audit_events WHERE action = 'erasure:approve' AND decision = 'deny'"
    )[0][0]
    assert denied >= 5


def test_a_request_cannot_claim_the_retention_schedules_basis(app, client, world):
    """`retention_expired` is the retention run's own basis (no request, no requester): a
    supervisor's request naming it would register a manual erasure as the schedule's."""
    case_id = world.case(new_token("basis"))
    refused = client.post(
        f"{API}/cases/{case_id}/erasure",
        json={"basis": "retention_expired"},
        headers=world.h["sup"],
    )
    assert "basis" in assert_problem(refused, 422)["errors"]["json"]
    assert world.sql("SELECT count(*) FROM erasure_requests") == [(0,)]
    assert world.sql("SELECT count(*) FROM audit_events WHERE action = 'case:erasure-request'") == [
        (0,)
    ]
    # The request body's documented bases are exactly the ones a request may give.
    spec = ok(client.get(f"{API}/openapi.json"))
    basis = spec["components"]["schemas"]["ErasureCreate"]["properties"]["basis"]
    assert basis["enum"] == [
        "consent_withdrawn",
        "no_longer_necessary",
        "objection",
        "unlawful_processing",
        "legal_obligation",
    ]
    world.request_erasure(case_id, "legal_obligation")
    assert world.sql("SELECT basis FROM erasure_requests") == [("legal_obligation",)]


def test_the_dpo_cannot_approve_their_own_request(app, client, factory, world):
    """DPOs lack `case:erasure-request`, so a DPO can only be the requester if the person
    requested as a supervisor and was then made the DPO (roles are reloaded from the
    database on every request). The requester's id is what is compared, not the role."""
    case_id = world.case(new_token("own"))
    request_id = world.request_erasure(case_id)  # by "sup"
    user = f"{API}/users/{world.ids['sup']}"
    etag = client.get(user, headers=world.h["admin"]).headers["ETag"]
    ok(client.patch(user, json={"role": "dpo"}, headers={**world.h["admin"], "If-Match": etag}))
    sup = world.principals["sup"]
    same_person = factory.headers(type(sup)(sup.id, sup.org_id, sup.email, sup.role))

    refused = client.post(f"{API}/erasures/{request_id}/approve", headers=same_person)
    problem = assert_problem(refused, 403)
    assert "requester" in problem["detail"]
    # The refusal is on the record, with ids and a reason code only.
    denials = world.sql(
        "SELECT actor_id, case_id, reason FROM audit_events "
        "WHERE action = 'case:erase-approve' AND decision = 'deny'"
    )
    assert [(str(a).replace("-", ""), str(c).replace("-", ""), r) for a, c, r in denials] == [
        (str(sup.id).replace("-", ""), case_id.replace("-", ""), "approver is the requester")
    ]
    assert ok(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]))["id"] == case_id
    pending = ok(client.get(f"{API}/erasures", headers=world.h["dpo"]))
    assert [(r["id"], r["status"]) for r in pending] == [(request_id, "pending")]

    tombstone = ok(world.approve(request_id, by="dpo"))
    assert tombstone["requested_by"] == str(world.ids["sup"])
    assert tombstone["approved_by"] == str(world.ids["dpo"])


def test_the_platform_dpo_may_approve_any_organisations_request(app, client, world):
    case_id = world.case(new_token("platform"))
    request_id = world.request_erasure(case_id)
    listed = ok(client.get(f"{API}/erasures", headers=world.h["platform_dpo"]))
    assert request_id in [r["id"] for r in listed]
    tombstone = ok(world.approve(request_id, by="platform_dpo"))
    assert tombstone["approved_by"] == str(world.ids["platform_dpo"])
    assert_problem(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]), 410)


# ---- legal hold ---------------------------------------------------------------------------


def test_a_legal_hold_blocks_erasure_until_lifted(app, client, world):
    token = new_token("hold")
    case_id = world.case(token)
    request_id = world.request_erasure(case_id)

    assert_problem(world.hold(case_id, True), 422)  # a hold needs a reason
    assert_problem(world.hold(case_id, True, by="worker", reason="court"), 403)
    assert_problem(world.hold(case_id, True, by="outsider_sup", reason="court"), 404)
    placed = ok(world.hold(case_id, True, reason=f"criminal proceedings {token}"))
    assert placed["hold"] is True and placed["placed_at"] and placed["lifted_at"] is None
    assert_problem(world.hold(case_id, True, reason="again"), 409)

    keys_before = world.sql(
        "SELECT count(*) FROM case_keys WHERE case_id = :cid", cid=uuid_param(app, case_id)
    )[0][0]
    refused = world.approve(request_id)
    problem = assert_problem(refused, 409)
    assert problem["type"].endswith("/problems/legal-hold"), problem
    # A refused erasure is on the record like any other refusal (it wrote nothing before).
    assert world.sql(
        "SELECT action, decision, reason FROM audit_events WHERE request_id = :r",
        r=refused.headers["X-Request-ID"],
    ) == [("case:erase-approve", "deny", "legal hold")]
    # Nothing was destroyed, the request is still pending, the case still reads.
    assert (
        world.sql(
            "SELECT count(*) FROM case_keys WHERE case_id = :cid", cid=uuid_param(app, case_id)
        )[0][0]
        == keys_before
        == 1
    )
    pending = ok(client.get(f"{API}/erasures", headers=world.h["dpo"]))
    assert [r["id"] for r in pending] == [request_id]
    body = ok(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]))
    assert body["identity"]["given_name"] == f"Olena{token}"
    # The hold's reason is ciphertext at rest.
    assert token not in database_text(world)

    lifted = ok(world.hold(case_id, False, by="dpo"))
    assert lifted["hold"] is False and lifted["lifted_at"]
    assert_problem(world.hold(case_id, False), 409)
    ok(world.approve(request_id))
    assert_problem(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]), 410)
    actions = [
        row[0]
        for row in world.sql(
            "SELECT action FROM audit_events WHERE case_id = :cid AND decision = 'allow' "
            "ORDER BY id",
            cid=uuid_param(app, case_id),
        )
    ]
    assert actions.count("case:legal-hold") == 2
    assert actions[-1] == "case:erase"


def test_a_restricted_case_can_still_be_erased(app, client, world):
    case_id = world.case(new_token("restricted"))
    ok(
        client.post(
            f"{API}/cases/{case_id}/restriction", json={"restricted": True}, headers=world.h["sup"]
        )
    )
    ok(world.approve(world.request_erasure(case_id)))
    row = world.sql(
        "SELECT erased, restricted FROM cases WHERE id = :cid", cid=uuid_param(app, case_id)
    )[0]
    assert (bool(row[0]), bool(row[1])) == (True, False)
    assert_problem(client.get(f"{API}/cases/{case_id}", headers=world.h["worker"]), 410)


def test_erasure_drops_the_consent_evidence_digest_and_the_quality_report_moves_on(
    app, client, world
):
    """A digest of the person's signed form could still confirm a guessed copy of it: it goes
    with the erasure. The quality report then no longer lists the erased person's consents
    (their evidence is gone on purpose); a living case's missing evidence is still flagged."""
    evidence = {
        "media_type": "application/pdf",
        "content_base64": base64.b64encode(b"%PDF-1.4 signed form").decode(),
    }
    erased_case = world.case(new_token("erased"))
    world.consent(erased_case, world.receiver_org, ["identity"], evidence=evidence)
    world.consent(erased_case, world.receiver_org, ["legal"])  # no evidence
    living_case = world.case(new_token("living"))
    world.consent(living_case, world.receiver_org, ["identity"], evidence=evidence)
    world.consent(living_case, world.receiver_org, ["legal"])  # no evidence

    def quality_cases() -> list[str]:
        rows = ok(client.get(f"{API}/dpo/reports/quality", headers=world.h["dpo"]))
        return sorted(row["case_id"] for row in rows if row["no_evidence"])

    assert quality_cases() == sorted([erased_case, living_case])
    ok(world.approve(world.request_erasure(erased_case)))

    digests = world.sql(
        "SELECT case_id, evidence_sha256, evidence_media_type FROM consent_records "
        "WHERE evidence_sha256 IS NOT NULL OR evidence_media_type IS NOT NULL"
    )
    # Only the living case's consent keeps its digest (ids compared as hex: SQLite stores
    # them without dashes).
    assert [str(row[0]).replace("-", "") for row in digests] == [living_case.replace("-", "")]
    assert quality_cases() == [living_case]
