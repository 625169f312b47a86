"""The bare baseline: a plain Flask + SQLAlchemy (ORM) app on the bench database doing the
same database work as the real endpoints, with no authentication, no encryption, no access
policy, no audit chain and no request logging.

- GET  /api/v1/cases/<id>        select one case by primary key + insert one audit row
- POST /api/v1/cases             insert one case row
- GET  /api/v1/cases?name=…      indexed lookup (lower-cased full name), newest first, ≤ 50
- GET  /api/v1/cases?limit=50    a page of 50, newest first

Its tables (`bare_cases`, `bare_audit_events`) mirror `cases` and `audit_events`, with the
same indexes (plus the name index the lookup needs), and hold the same synthetic people in
plaintext, one column per personal field (as `cases` held one ciphertext per field before
ciphertext format 4; it now holds one per data category). Serve it with
`gunicorn --chdir bench 'bare_app:create_app()'` (BARE_DATABASE_URL names the database);
`python bench/bare_app.py seed --count N` creates and fills its tables.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, request
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    create_engine,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

PERSONAL_COLUMNS = (
    "given_name",
    "family_name",
    "aliases",
    "date_of_birth",
    "sex",
    "nationality",
    "languages",
    "documents",
    "phone",
    "email",
    "safe_contact_notes",
    "address",
    "is_shelter",
    "gbv_type",
    "exploitation_types",
    "means_of_control",
    "recruiter_relation",
    "incident_date",
    "incident_place",
    "narrative",
    "health_notes",
    "psychosocial_notes",
    "legal_status",
    "legal_proceedings",
    "lawyer",
    "residence_status",
    "reflection_period_until",
    "needs_assessment",
    "service_plan",
)
# Request JSON (category → key) → column, as in referral_api.cases.layout.
CATEGORY_KEYS: dict[str, dict[str, str]] = {
    "identity": {c: c for c in PERSONAL_COLUMNS[:8]},
    "contact": {c: c for c in PERSONAL_COLUMNS[8:11]},
    "location": {"address": "address", "is_shelter": "is_shelter"},
    "incident": {c: c for c in PERSONAL_COLUMNS[13:20]},
    "health": {"notes": "health_notes"},
    "psychosocial": {"notes": "psychosocial_notes"},
    "legal": {"status": "legal_status", "proceedings": "legal_proceedings", "lawyer": "lawyer"},
    "immigration": {
        "residence_status": "residence_status",
        "reflection_period_until": "reflection_period_until",
    },
    "needs": {"assessment": "needs_assessment", "plan": "service_plan"},
}
METADATA = (
    "id",
    "case_code",
    "case_type",
    "status",
    "status_reason",
    "risk_level",
    "org_id",
    "assignee_id",
    "nrm_stage",
    "created_at",
    "updated_at",
    "closed_at",
    "restricted",
)
LIST_COLUMNS = METADATA + PERSONAL_COLUMNS[:8]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class BareCase(Base):
    __tablename__ = "bare_cases"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    case_code: Mapped[str] = mapped_column(String(16), unique=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    case_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str | None] = mapped_column(String(48))
    risk_level: Mapped[str] = mapped_column(String(32))
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    nrm_stage: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    key_version: Mapped[int | None] = mapped_column(Integer)
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    erased: Mapped[bool] = mapped_column(Boolean, default=False)
    # The lookup key for name search (plaintext: this is the baseline without encryption).
    full_name: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_bare_cases_name", "org_id", "full_name"),)


# The personal columns hold JSON text (the real table holds ciphertext of the same JSON).
for _column in PERSONAL_COLUMNS:
    setattr(BareCase, _column, mapped_column(_column, Text, nullable=True))


class BareAuditEvent(Base):
    __tablename__ = "bare_audit_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    actor_role: Mapped[str | None] = mapped_column(String(32))
    acting_officer: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(48))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    case_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    categories: Mapped[str | None] = mapped_column(String(200))
    purpose: Mapped[str | None] = mapped_column(String(48))
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(64))
    legal_basis: Mapped[str | None] = mapped_column(String(100))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str | None] = mapped_column(String(2000))


def _encode(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _decode(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def normalise(name: str) -> str:
    return " ".join(name.lower().split())


def _row(case: BareCase, columns: tuple[str, ...]) -> dict[str, Any]:
    personal = set(PERSONAL_COLUMNS)
    return {c: _decode(getattr(case, c)) if c in personal else getattr(case, c) for c in columns}


def _org_id(factory: sessionmaker[Session]) -> uuid.UUID:
    """The bench organisation's id (the real app's `Bench NGO`)."""
    from sqlalchemy import text

    with factory() as session:
        org = session.execute(
            text("SELECT id FROM organisations WHERE name = :n"),
            {"n": os.environ.get("BARE_ORG_NAME", "Bench NGO")},
        ).scalar()
    return uuid.UUID(str(org)) if org else uuid.UUID(int=0)


def create_app(database_url: str | None = None) -> Flask:
    url = database_url or os.environ["BARE_DATABASE_URL"]
    engine = create_engine(url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    org_id = _org_id(factory)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/api/v1/cases/<uuid:case_id>")
    def get_case(case_id: uuid.UUID) -> Any:
        with factory() as session:
            case = session.get(BareCase, case_id)
            if case is None:
                abort(404)
            session.add(
                BareAuditEvent(
                    actor_type="anonymous",
                    action="case:read",
                    resource_type="case",
                    resource_id=str(case.id),
                    case_id=case.id,
                    categories="identity,contact",
                    decision="allow",
                )
            )
            session.commit()
            return jsonify(_row(case, METADATA + PERSONAL_COLUMNS))

    @app.post("/api/v1/cases")
    def create_case() -> Any:
        body = request.get_json()
        case = BareCase(
            id=uuid.uuid4(),
            case_code=f"{body['case_type'].upper()}-{secrets.token_hex(5).upper()}",
            org_id=org_id,
            case_type=body["case_type"],
            status="open",
            risk_level=body.get("risk_level", "medium"),
            nrm_stage=body.get("nrm_stage", "identified"),
            created_by=uuid.UUID(int=1),
        )
        for category, keys in CATEGORY_KEYS.items():
            values = body.get(category) or {}
            for key, column in keys.items():
                setattr(case, column, _encode(values.get(key)))
        identity = body.get("identity") or {}
        case.full_name = normalise(
            f"{identity.get('given_name') or ''} {identity.get('family_name') or ''}"
        )
        with factory() as session:
            session.add(case)
            session.commit()
        return jsonify(_row(case, METADATA + PERSONAL_COLUMNS)), 201

    @app.get("/api/v1/cases")
    def list_cases() -> Any:
        limit = min(int(request.args.get("limit", 50)), 100)
        stmt = select(BareCase).where(BareCase.org_id == org_id, BareCase.erased.is_(False))
        name = request.args.get("name")
        if name:
            stmt = stmt.where(BareCase.full_name == normalise(name))
        stmt = stmt.order_by(BareCase.created_at.desc(), BareCase.id.desc()).limit(limit + 1)
        with factory() as session:
            rows = session.scalars(stmt).all()
            return jsonify([_row(c, LIST_COLUMNS) for c in rows[:limit]])

    return app


# ---- schema and data ---------------------------------------------------------------------


def seed(database_url: str, count: int) -> dict[str, Any]:
    """(Re)create the bare tables and COPY `count` synthetic people in (plaintext)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    engine = create_engine(database_url)
    factory = sessionmaker(bind=engine)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    org_id = _org_id(factory)
    columns = [
        "id",
        "case_code",
        "org_id",
        "case_type",
        "status",
        "risk_level",
        "nrm_stage",
        "created_at",
        "updated_at",
        "version",
        "key_version",
        "restricted",
        "erased",
        "full_name",
        *PERSONAL_COLUMNS,
    ]
    started = time.perf_counter()
    base_time = _utcnow() - timedelta(hours=1)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY bare_cases ({', '.join(columns)}) FROM STDIN") as copy:
            for index in range(count):
                p = common.person(index)
                created = base_time + timedelta(milliseconds=index)
                row: list[Any] = [
                    p["id"],
                    f"{p['case_type'].upper()}-S{index:07X}",
                    org_id,
                    p["case_type"],
                    p["status"],
                    p["risk_level"],
                    p["nrm_stage"],
                    created,
                    created,
                    1,
                    1,
                    False,
                    False,
                    normalise(common.full_name(p)),
                ]
                plain = {
                    column: (p.get(category) or {}).get(key)
                    for category, keys in CATEGORY_KEYS.items()
                    for key, column in keys.items()
                }
                row.extend(_encode(plain[column]) for column in PERSONAL_COLUMNS)
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE bare_cases")
        connection.exec_driver_sql("VACUUM ANALYZE bare_audit_events")
    with factory() as session:
        stored = session.scalar(select(func.count()).select_from(BareCase))
    engine.dispose()
    return {"cases": stored, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="bare baseline tables")
    parser.add_argument("command", choices=["seed"])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--database-url", default=os.environ.get("BARE_DATABASE_URL"))
    args = parser.parse_args()
    print(json.dumps(seed(args.database_url, args.count)))


if __name__ == "__main__":
    main()
