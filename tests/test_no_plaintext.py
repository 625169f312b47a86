"""Personal data is ciphertext at rest (DESIGN.md §6): cases written through the API with a
canary in every personal field leave no trace of any canary in any table or log line, the
API still returns them, and a ciphertext moved to another row, column or case does not
decrypt."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import assert_problem
from sqlalchemy import inspect, select, text, update

from referral_api.access.roles import Role
from referral_api.cases.models import Case, CaseNote
from referral_api.crypto import envelope
from referral_api.crypto.envelope import DecryptionError
from referral_api.crypto.fields import decrypt_value
from referral_api.crypto.keyring import InMemoryKeyring, KeyUnavailable
from referral_api.crypto.keys import KeyCache, KeyService
from referral_api.crypto.models import CaseKey, OrgKey
from referral_api.db import Base
from referral_api.extensions import db

CASES = "/api/v1/cases"


def _canaries(tag: str) -> dict[str, Any]:
    """Distinctive values for every personal field (built at run time, so this file's
    source never holds a whole canary)."""
    token = uuid.uuid4().hex[:10]
    c = f"{tag}{token}"
    return {
        "identity": {
            "given_name": f"Cnrygiven{c}",
            "family_name": f"Cnryfamily{c}",
            "aliases": [f"Cnryalias{c}", f"ЗоряКанарка{c}"],
            "date_of_birth": "1987-03-14",
            "sex": "female",
            "nationality": "UA",
            "languages": ["uk", "ru"],
            "documents": [
                {"type": "passport", "country": "UA", "number": f"CNRYDOC{c.upper()}"},
                {"type": "national_id", "country": "UA", "number": f"CNRYNID{c.upper()}"},
            ],
        },
        "contact": {
            "phone": f"+44 7700 9{int(token[:5], 16) % 100000:05d}",
            "email": f"cnry.mail.{c}@example.org",
            "safe_contact_notes": f"Cnrysafecontact{c} only text after 6pm",
        },
        "location": {"address": f"Cnryaddress{c}, 12 Hidden Lane", "is_shelter": True},
        "incident": {
            "gbv_type": None,
            "exploitation_types": ["organ_removal", "domestic_servitude"],
            "means_of_control": ["threats_to_family"],
            "recruiter_relation": "recruitment_agency",
            "incident_date": "2019-11",
            "incident_place": f"Cnryincidentplace{c}",
            "narrative": f"Cnrynarrative{c} — نص السرد {c} — текст",
        },
        "health": {"notes": f"Cnryhealth{c}"},
        "psychosocial": {"notes": f"Cnrypsychosocial{c}"},
        "legal": {
            "status": f"Cnrylegalstatus{c}",
            "proceedings": f"Cnryproceedings{c}",
            "lawyer": f"Cnrylawyer{c}",
        },
        "immigration": {
            "residence_status": f"Cnryresidence{c}",
            "reflection_period_until": "2031-07-19",
        },
        "needs": {"assessment": f"Cnryassessment{c}", "plan": f"Cnryplan{c}"},
    }


def _searchable_strings(value: Any) -> list[str]:
    """Every string leaf of a payload long or distinctive enough to scan for."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in _searchable_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _searchable_strings(item)]
    if isinstance(value, str) and (len(value) >= 10 or "_" in value):
        return [value]
    return []


def _forms(canary: str) -> set[str]:
    """The canary as text, plus forms an encoder might write it in."""
    forms = {canary, json.dumps(canary)[1:-1]}  # \\uXXXX-escaped for non-ASCII
    if canary.startswith("+"):
        forms.add(canary.replace(" ", ""))  # E.164 form of the phone
    for part in canary.split():
        if len(part) >= 12:
            forms.add(part)  # pieces of the multi-word values
    return forms


def _scan_database(engine: Any, canaries: list[str]) -> list[tuple[str, str, str]]:
    """Every table and column, read with raw SQL: (table, column, canary) per hit.
    Text is compared case-insensitively; bytes by the canary's UTF-8 bytes (and
    case-insensitively for ASCII)."""
    needles = {form: canary for canary in canaries for form in _forms(canary)}
    hits: list[tuple[str, str, str]] = []
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
        for table in sorted(tables):
            result = connection.execute(text(f'SELECT * FROM "{table}"'))
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    if isinstance(value, bytes):
                        lowered = value.lower()
                        for form, canary in needles.items():
                            encoded = form.encode("utf-8")
                            if encoded in value or encoded.lower() in lowered:
                                hits.append((table, column, canary))
                    else:
                        haystack = str(value).casefold()
                        for form, canary in needles.items():
                            if form.casefold() in haystack:
                                hits.append((table, column, canary))
        connection.rollback()
    return hits


def _scan_text(haystack: str, canaries: list[str]) -> list[str]:
    folded = haystack.casefold()
    return [c for c in canaries for form in _forms(c) if form.casefold() in folded]


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (pytest swaps it between phases)."""

    def write(self, data: str) -> int:
        return sys.stderr.write(data)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def captured_logs(
    app: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[[], str]]:
    """Everything logged while the test runs: caplog's records (message, extras, formatted
    exceptions) and the app's own JSON handler's stderr output, at INFO and above for every
    logger (SQLAlchemy's statement log included) and DEBUG for the app's."""
    handler = next(
        h for h in logging.getLogger("referral_api").handlers if getattr(h, "_referral_api", False)
    )
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(_CurrentStderr())  # type: ignore[arg-type]
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="referral_api")
    collected: list[str] = []

    def everything() -> str:
        captured = capfd.readouterr()
        collected.extend([captured.out, captured.err])
        parts = [caplog.text, *collected]
        for record in caplog.records:
            parts.append(record.getMessage())
            parts.append(json.dumps(vars(record), default=str))
        return "\n".join(parts)

    yield everything
    handler.setStream(previous)


@pytest.fixture
def caseworker(factory: Any) -> Any:
    return factory.user(Role.CASEWORKER)


@pytest.fixture
def headers(factory: Any, caseworker: Any) -> dict[str, str]:
    return factory.headers(caseworker)


def _create(client: Any, headers: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
    response = client.post(CASES, json={"case_type": "thb", **payload}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def _note(client: Any, headers: dict[str, str], case_id: str, category: str, body: str) -> str:
    response = client.post(
        f"{CASES}/{case_id}/notes", json={"category": category, "text": body}, headers=headers
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]  # type: ignore[no-any-return]


def _patch(client: Any, headers: dict[str, str], case_id: str, changes: dict[str, Any]) -> Any:
    etag = client.get(f"{CASES}/{case_id}", headers=headers).headers["ETag"]
    response = client.patch(
        f"{CASES}/{case_id}", json=changes, headers={**headers, "If-Match": etag}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _without_nulls(category: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in category.items() if v is not None}


def _assert_category_values(body: dict[str, Any], expected: dict[str, Any]) -> None:
    for category, values in expected.items():
        for key, value in values.items():
            assert body[category][key] == value, (category, key)


# ---- the scan -----------------------------------------------------------------------------


def test_no_canary_reaches_any_table_or_log_and_the_api_returns_them(
    app, client, factory, headers, captured_logs
):
    first, second = _canaries("A"), _canaries("B")
    patched = {
        "identity": {"given_name": _canaries("P")["identity"]["given_name"]},
        "contact": {"safe_contact_notes": _canaries("P")["contact"]["safe_contact_notes"]},
        "health": {"notes": _canaries("P")["health"]["notes"]},
        "needs": {"plan": _canaries("P")["needs"]["plan"]},
    }
    note_texts = {
        category: f"Cnrynote{category}{uuid.uuid4().hex[:10]} текст"
        for category in ("incident", "health", "psychosocial", "needs")
    }

    case_a = _create(client, headers, first)
    case_b = _create(client, headers, {**second, "risk_level": "high"})
    for category, body in note_texts.items():
        _note(client, headers, case_a["id"], category, body)
    after_patch = _patch(client, headers, case_b["id"], {"risk_level": "critical", **patched})
    assert after_patch["identity"]["given_name"] == patched["identity"]["given_name"]
    # A search by a canary name: its term must not reach logs either.
    found = client.get(
        CASES, query_string={"name": first["identity"]["given_name"]}, headers=headers
    )
    assert [c["id"] for c in found.get_json()] == [case_a["id"]]

    canaries = sorted(
        {
            *_searchable_strings(first),
            *_searchable_strings(second),
            *_searchable_strings(patched),
            *note_texts.values(),
        }
    )
    # Every category and the notes contribute canaries; and dates and codes are included.
    assert len(canaries) >= 40
    assert "1987-03-14" in canaries and "organ_removal" in canaries

    engine = db.engine_for(app)
    assert _scan_database(engine, canaries) == []
    assert _scan_text(captured_logs(), canaries) == []

    # The scan is not vacuous: cases hold a ciphertext per category, audit rows exist for
    # both cases, and a planted value is found wherever it sits.
    with engine.connect() as connection:
        blobs = connection.execute(text("SELECT identity, incident, location FROM cases")).all()
        audit = connection.execute(
            text("SELECT action, categories, details, resource_id FROM audit_events")
        ).all()
        connection.rollback()
    assert len(blobs) == 2 and all(isinstance(v, bytes | memoryview) for r in blobs for v in r)
    assert {str(case_a["id"]), str(case_b["id"])} <= {row.resource_id for row in audit}
    assert _scan_text(json.dumps([list(map(str, r)) for r in audit]), canaries) == []
    planted = first["legal"]["lawyer"]
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE organisations SET name = :n"), {"n": planted.upper() + " org"}
        )
    assert {(t, c) for t, c, _ in _scan_database(engine, [planted])} == {("organisations", "name")}

    # Decryption through the API returns every value (PATCH replaced only what it named).
    body_a = client.get(f"{CASES}/{case_a['id']}", headers=headers).get_json()
    body_b = client.get(f"{CASES}/{case_b['id']}", headers=headers).get_json()
    _assert_category_values(body_a, {k: _without_nulls(v) for k, v in first.items()})
    expected_b = {k: dict(_without_nulls(v)) for k, v in second.items()}
    for category, values in patched.items():
        expected_b[category].update(values)
    _assert_category_values(body_b, expected_b)
    notes = client.get(f"{CASES}/{case_a['id']}/notes", headers=headers).get_json()
    assert {n["category"]: n["text"] for n in notes} == note_texts


# ---- moved ciphertexts --------------------------------------------------------------------


def _raw_copy(engine: Any, table: str, source: str, target: str, where_from: Any, where_to: Any):
    """UPDATE target column of one row with the source column of another, in raw SQL."""
    with engine.begin() as connection:
        blob = connection.execute(
            text(f'SELECT "{source}" FROM "{table}" WHERE id = :id'),
            {"id": where_from},
        ).scalar_one()
        connection.execute(
            text(f'UPDATE "{table}" SET "{target}" = :blob WHERE id = :id'),
            {"blob": blob, "id": where_to},
        )


def _id_param(engine: Any, value: str) -> Any:
    """How each dialect stores a UUID primary key (SQLite: 32 hex characters)."""
    return uuid.UUID(value).hex if engine.dialect.name == "sqlite" else uuid.UUID(value)


def _assert_opaque_500(response: Any, *secrets: str) -> None:
    problem = assert_problem(response, 500)
    raw = response.get_data(as_text=True)
    for secret in secrets:
        assert secret not in raw
    for word in ("DecryptionError", "authenticate", "Traceback", "InvalidTag", "ciphertext"):
        assert word not in raw
    assert problem["title"]


@pytest.fixture
def two_cases(client, headers) -> tuple[dict[str, Any], dict[str, Any]]:
    return _create(client, headers, _canaries("X")), _create(client, headers, _canaries("Y"))


def _clear_key_cache(app: Any) -> None:
    app.extensions["referral_api.crypto"].cache.clear()


def test_identity_copied_to_another_case_fails_to_decrypt(app, client, headers, two_cases):
    case_a, case_b = two_cases
    engine = db.engine_for(app)
    _raw_copy(
        engine,
        "cases",
        "identity",
        "identity",
        _id_param(engine, case_a["id"]),
        _id_param(engine, case_b["id"]),
    )

    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(case_b["id"]))
        blob = case.identity_ct
        with pytest.raises(DecryptionError):
            decrypt_value(session, case, "identity", blob)
        with pytest.raises(DecryptionError):
            _ = case.given_name
        # Even with case A's own subkey, the blob names case A's row and case id.
        keys = session.info["crypto"].keys(session)
        subkey_a = keys.subkey(uuid.UUID(case_a["id"]), 1, "cases", "identity")
        with pytest.raises(DecryptionError):
            envelope.decrypt(
                subkey_a,
                blob,
                table="cases",
                column="identity",
                row_id=case.id,
                case_id=case.id,
            )
        # Claiming only another case id (right key, row and column) fails too.
        with pytest.raises(DecryptionError):
            envelope.decrypt(
                subkey_a,
                blob,
                table="cases",
                column="identity",
                row_id=uuid.UUID(case_a["id"]),
                case_id=case.id,
            )
        # Only in its true place does it decrypt (so the failures above are the binding).
        plain = envelope.decrypt(
            subkey_a,
            blob,
            table="cases",
            column="identity",
            row_id=uuid.UUID(case_a["id"]),
            case_id=uuid.UUID(case_a["id"]),
        )
        assert json.loads(plain)["given_name"] == case_a["identity"]["given_name"]
        session.rollback()

    _clear_key_cache(app)
    response = client.get(f"{CASES}/{case_b['id']}", headers=headers)
    _assert_opaque_500(response, case_a["identity"]["given_name"], case_b["identity"]["given_name"])
    # The other case is untouched.
    ok = client.get(f"{CASES}/{case_a['id']}", headers=headers)
    assert ok.status_code == 200
    assert ok.get_json()["identity"]["given_name"] == case_a["identity"]["given_name"]


def test_identity_copied_to_another_category_of_the_same_case_fails(
    app, client, headers, two_cases
):
    case_a, _ = two_cases
    engine = db.engine_for(app)
    row = _id_param(engine, case_a["id"])
    _raw_copy(engine, "cases", "identity", "contact", row, row)

    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(case_a["id"]))
        with pytest.raises(DecryptionError):
            decrypt_value(session, case, "contact", case.contact_ct)
        # Same key, same row: only the column named in the associated data differs.
        keys = session.info["crypto"].keys(session)
        subkey = keys.subkey(case.id, 1, "cases", "identity")
        place = {"table": "cases", "row_id": case.id, "case_id": case.id}
        with pytest.raises(DecryptionError):
            envelope.decrypt(subkey, case.contact_ct, column="contact", **place)
        assert (
            json.loads(envelope.decrypt(subkey, case.contact_ct, column="identity", **place))
            == case_a["identity"]
        )
        session.rollback()

    _clear_key_cache(app)
    response = client.get(f"{CASES}/{case_a['id']}", headers=headers)
    _assert_opaque_500(response, case_a["identity"]["given_name"])


def test_category_ciphertext_copied_to_a_per_field_column_fails(app, client, headers, two_cases):
    """A case stored before category columns is read from its per-field columns (formats
    1-3): a format-4 blob planted there, with the category column emptied, names another
    column and fails; so does a per-field blob planted in a category column."""
    case_a, _ = two_cases
    engine = db.engine_for(app)
    row = _id_param(engine, case_a["id"])
    _raw_copy(engine, "cases", "identity", "given_name", row, row)
    with engine.begin() as connection:
        connection.execute(text("UPDATE cases SET identity = NULL WHERE id = :id"), {"id": row})
    _clear_key_cache(app)
    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(case_a["id"]))
        assert case.identity_ct is None and case.given_name_ct is not None
        with pytest.raises(DecryptionError):
            _ = case.given_name
        session.rollback()
    response = client.get(f"{CASES}/{case_a['id']}", headers=headers)
    _assert_opaque_500(response, case_a["identity"]["given_name"])

    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(case_a["id"]))
        data_key = session.info["crypto"].keys(session).case_key(case.id, 1)
        blob = _v3_blob(data_key, case_a["contact"]["phone"], "cases", "phone", case.id, case.id)
        session.rollback()
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE cases SET contact = :blob WHERE id = :id"), {"blob": blob, "id": row}
        )
    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(case_a["id"]))
        with pytest.raises(DecryptionError):
            _ = case.phone
        session.rollback()


def test_note_text_copied_to_another_note_fails(app, client, headers, two_cases, captured_logs):
    case_a, _ = two_cases
    secret_one = f"Cnrynoteone{uuid.uuid4().hex}"
    secret_two = f"Cnrynotetwo{uuid.uuid4().hex}"
    note_one = _note(client, headers, case_a["id"], "health", secret_one)
    note_two = _note(client, headers, case_a["id"], "health", secret_two)
    engine = db.engine_for(app)
    _raw_copy(
        engine,
        "case_notes",
        "text",
        "text",
        _id_param(engine, note_one),
        _id_param(engine, note_two),
    )

    with db.session_factory_for(app)() as session:
        note = session.get(CaseNote, uuid.UUID(note_two))
        with pytest.raises(DecryptionError):
            decrypt_value(session, note, "text", note.text_ct)
        # Same case key, same table and column: the row id alone tells them apart.
        subkey = session.info["crypto"].keys(session).subkey(note.case_id, 1, "case_notes", "text")
        with pytest.raises(DecryptionError):
            envelope.decrypt(
                subkey,
                note.text_ct,
                table="case_notes",
                column="text",
                row_id=note.id,
                case_id=note.case_id,
            )
        session.rollback()

    _clear_key_cache(app)
    response = client.get(f"{CASES}/{case_a['id']}/notes", headers=headers)
    _assert_opaque_500(response, secret_one, secret_two)
    assert _scan_text(captured_logs(), [secret_one, secret_two]) == []


# ---- data keys ----------------------------------------------------------------------------


def test_every_case_has_a_wrapped_data_key_and_no_raw_key_is_stored(app, client, headers):
    created = [_create(client, headers, _canaries(f"K{i}")) for i in range(3)]
    engine = db.engine_for(app)
    crypto = app.extensions["referral_api.crypto"]
    with db.session_factory_for(app)() as session:
        data_keys: list[bytes] = []
        org_keys: list[bytes] = []
        for body in created:
            case = session.get(Case, uuid.UUID(body["id"]))
            assert case.key_version == 1
            row = session.get(CaseKey, (case.id, case.key_version))
            assert row is not None and row.org_id == case.org_id
            # nonce ‖ AES-GCM(32-byte key) ‖ tag: wrapped, not the key itself.
            assert len(row.wrapped_key) == 12 + 32 + 16
            # A fresh cache: the key really comes from unwrapping the stored row.
            keys = KeyService(session, crypto.provider, KeyCache(), crypto.index_bits)
            dek = keys.case_key(case.id, case.key_version)
            assert len(dek) == 32 and dek not in row.wrapped_key
            subkey = envelope.field_subkey(dek, "cases", "identity")
            place = {"table": "cases", "column": "identity", "row_id": case.id}
            assert (
                json.loads(envelope.decrypt(subkey, case.identity_ct, case_id=case.id, **place))
                == body["identity"]
            )
            # The stored wrapped bytes are not a usable key for the data.
            for start in range(len(row.wrapped_key) - 31):
                candidate = envelope.field_subkey(
                    row.wrapped_key[start : start + 32], "cases", "identity"
                )
                with pytest.raises(DecryptionError):
                    envelope.decrypt(candidate, case.identity_ct, case_id=case.id, **place)
            org_row = session.get(OrgKey, (case.org_id, row.org_key_version))
            org_key = keys.org_key(case.org_id, row.org_key_version)
            assert org_key not in org_row.wrapped_key
            data_keys.append(dek)
            org_keys.append(org_key)

            # Without the keyring (another root), nothing unwraps.
            foreign = KeyService(session, InMemoryKeyring.generate(), KeyCache())
            with pytest.raises(KeyUnavailable):
                foreign.case_key(case.id, case.key_version)
            # The data key is wrapped by its organisation's key: any other one fails.
            wrong_org_key = KeyCache()
            wrong_org_key.put(("org", case.org_id, row.org_key_version), bytes(32))
            with pytest.raises(KeyUnavailable):
                KeyService(session, crypto.provider, wrong_org_key).case_key(
                    case.id, case.key_version
                )
        assert len(set(data_keys)) == 3
        session.rollback()

    # No raw data key or organisation key appears anywhere in the database.
    with engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    if isinstance(value, bytes):
                        assert not any(k in value for k in (*data_keys, *org_keys)), table
        connection.rollback()
    with engine.connect() as connection:
        count = connection.execute(select(CaseKey.case_id)).all()
        connection.rollback()
    assert len(count) == 3


# ---- ciphertext formats -------------------------------------------------------------------


def _v1_blob(data_key: bytes, value: Any, table: str, column: str, row_id: Any, case_id: Any):
    """A FORMAT_V1 ciphertext as the application wrote them before FORMAT_V2, built from
    the documented layout: HKDF-SHA256(DEK, "table/column"), AES-256-GCM over header ‖
    length-prefixed table, column, row id, case id."""
    import os
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def lp(part: bytes) -> bytes:
        return struct.pack(">I", len(part)) + part

    header = struct.pack(">BBI", 1, 1, 1)
    subkey = HKDF(hashes.SHA256(), 32, salt=None, info=f"{table}/{column}".encode()).derive(
        data_key
    )
    aad = header + lp(table.encode()) + lp(column.encode()) + lp(row_id.bytes) + lp(case_id.bytes)
    nonce = os.urandom(12)
    plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return header + nonce + AESGCM(subkey).encrypt(nonce, plaintext, aad)


def _v2_blob(data_key: bytes, value: Any, table: str, column: str, row_id: Any, case_id: Any):
    """A FORMAT_V2 ciphertext (per-column HKDF-Expand), as written before FORMAT_V3."""
    tail = envelope.column_aad(table, column) + envelope.place_aad(row_id, case_id)
    plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    aead = envelope.field_aead(data_key, table, column, envelope.FORMAT_V2)
    return envelope.seal(aead, envelope.header(1, envelope.FORMAT_V2), plaintext, tail)


def _v3_blob(data_key: bytes, value: Any, table: str, column: str, row_id: Any, case_id: Any):
    """A FORMAT_V3 ciphertext (a per-field column's key from the format-3 schedule)."""
    tail = envelope.column_aad(table, column) + envelope.place_aad(row_id, case_id)
    plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    aead = envelope.field_aead(data_key, table, column, envelope.FORMAT_V3)
    return envelope.seal(aead, envelope.header(1, envelope.FORMAT_V3), plaintext, tail)


def _store_per_field(app: Any, case_id: uuid.UUID, formats: dict[str, int]) -> dict[str, Any]:
    """Rewrite a case as it was stored before category columns: every field in its own
    column (format 1, 2 or 3 as `formats` says, 3 otherwise), the category columns empty.
    Returns the field values."""
    engine = db.engine_for(app)
    with db.session_factory_for(app)() as session:
        case = session.get(Case, case_id)
        values = {name: getattr(case, name) for name in Case.__encrypted_fields__}
        data_key = session.info["crypto"].keys(session).case_key(case_id, 1)
        build = {1: _v1_blob, 2: _v2_blob, 3: _v3_blob}
        blobs = {
            name: build[formats.get(name, 3)](data_key, value, "cases", name, case_id, case_id)
            for name, value in values.items()
        }
        session.rollback()
    with engine.begin() as connection:
        connection.execute(
            update(Case.__table__)
            .where(Case.__table__.c.id == case_id)
            .values({**blobs, **dict.fromkeys(Case.__encrypted_columns__)})
        )
    _clear_key_cache(app)
    return values


def test_cases_stored_per_field_still_read_and_move_to_category_columns(app, client, headers):
    """A case stored before category columns (formats 1 to 3 side by side, one column per
    field) keeps decrypting through the models and the API (reading, listing, search); a
    category written again moves into its column (format 4) and its fields' own columns are
    cleared, the other categories staying where they were."""
    body = _create(client, headers, _canaries("V"))
    case_id = uuid.UUID(body["id"])
    identity = body["identity"]
    engine = db.engine_for(app)
    values = _store_per_field(
        app, case_id, {"given_name": 1, "family_name": 1, "aliases": 2, "documents": 2}
    )
    assert values["given_name"] == identity["given_name"]

    with db.session_factory_for(app)() as session:
        case = session.get(Case, case_id)
        assert case.identity_ct is None and case.incident_ct is None
        assert [case.given_name_ct[0], case.aliases_ct[0], case.narrative_ct[0]] == [1, 2, 3]
        assert {name: getattr(case, name) for name in Case.__encrypted_fields__} == values
        # Older blobs still name their place: in another column they fail.
        with pytest.raises(DecryptionError):
            decrypt_value(session, case, "family_name", case.given_name_ct)
        with pytest.raises(DecryptionError):
            decrypt_value(session, case, "documents", case.aliases_ct)
        session.rollback()
    read = client.get(f"{CASES}/{body['id']}", headers=headers).get_json()
    assert {k: v for k, v in read.items() if k not in ("updated_at", "version")} == {
        k: v for k, v in body.items() if k not in ("updated_at", "version")
    }
    found = client.get(CASES, query_string={"name": identity["aliases"][1]}, headers=headers)
    assert [c["id"] for c in found.get_json()] == [body["id"]]
    listed = client.get(CASES, headers=headers).get_json()
    assert [c["identity"] for c in listed if c["id"] == body["id"]] == [identity]

    renamed = f"Cnryrenamed{uuid.uuid4().hex[:8]}"
    _patch(client, headers, body["id"], {"identity": {"given_name": renamed}})
    with engine.connect() as connection:
        stored = connection.execute(
            text(
                "SELECT identity, given_name, family_name, aliases, contact, phone "
                "FROM cases WHERE id = :id"
            ),
            {"id": _id_param(engine, body["id"])},
        ).one()
    identity_blob, given, family, aliases, contact, phone = stored
    assert bytes(identity_blob)[0] == 4 and (given, family, aliases) == (None, None, None)
    assert contact is None and bytes(phone)[0] == 3  # not written: still per field
    _clear_key_cache(app)
    read = client.get(f"{CASES}/{body['id']}", headers=headers).get_json()
    assert read["identity"] == {**identity, "given_name": renamed}
    assert read["contact"] == body["contact"]


def test_sealing_after_the_data_key_was_replaced_uses_the_new_key(app, client, headers):
    """A record remembers its field keys, but a write never seals under a remembered key
    that is no longer its data key (that would store what nothing can decrypt): with the
    key of its version replaced, the next seal uses the new one."""
    import os

    from referral_api.crypto import fields

    body = _create(client, headers, _canaries("K"))
    case_id = uuid.UUID(body["id"])
    place = {"table": "cases", "column": "identity", "row_id": case_id, "case_id": case_id}
    with db.session_factory_for(app)() as session:
        case = session.get(Case, case_id)
        keys = session.info["crypto"].keys(session)
        stored = keys.case_key(case_id, 1)
        assert case.given_name == body["identity"]["given_name"]  # remembers its keys
        replaced = os.urandom(32)
        keys.cache.put(("case", case_id, 1), replaced)
        case.given_name = "Cnryreplaced"
        fields._seal_pending(keys, case)
        blob = case.identity_ct
        new_key = envelope.field_subkey(replaced, "cases", "identity")
        sealed = json.loads(envelope.decrypt(new_key, blob, **place))
        assert sealed == {**body["identity"], "given_name": "Cnryreplaced"}
        with pytest.raises(DecryptionError):
            envelope.decrypt(envelope.field_subkey(stored, "cases", "identity"), blob, **place)
        session.rollback()
    _clear_key_cache(app)


def test_the_key_cache_holds_one_entry_per_case_not_per_field(app, client, headers):
    """Reading all 29 fields of a case caches its data key once; field keys are derived
    where used and never cached (the cache's capacity counts cases)."""
    first = _create(client, headers, _canaries("C1"))
    second = _create(client, headers, _canaries("C2"))
    cache = app.extensions["referral_api.crypto"].cache
    _clear_key_cache(app)
    for body in (first, second):
        read = client.get(f"{CASES}/{body['id']}", headers=headers).get_json()
        assert read["legal"]["lawyer"] == body["legal"]["lawyer"]
    entries = list(cache._data)
    for body in (first, second):
        naming = [k for k in entries if uuid.UUID(body["id"]) in k]
        assert naming == [("case", uuid.UUID(body["id"]), 1)]
    assert {k[0] for k in entries} <= {"org", "case", "index", "index-plan"}


def test_a_category_plaintext_is_compact_utf8_json_of_its_fields(app, client, headers):
    """The documented plaintext of a category column: the JSON object of its fields, UTF-8,
    no spaces, non-ASCII as is (what any JSON library reading a backup must expect)."""
    body = _create(client, headers, _canaries("J"))
    case_id = uuid.UUID(body["id"])
    with db.session_factory_for(app)() as session:
        case = session.get(Case, case_id)
        subkey = session.info["crypto"].keys(session).subkey(case_id, 1, "cases", "identity")
        place = {"table": "cases", "column": "identity", "row_id": case_id, "case_id": case_id}
        plaintext = envelope.decrypt(subkey, case.identity_ct, **place)
        members = Case.__encrypted_columns__["identity"].members
        expected = {name: getattr(case, name) for name in members}
        session.rollback()
    assert plaintext == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    assert list(json.loads(plaintext)) == list(members)
    assert expected["given_name"] == body["identity"]["given_name"]
