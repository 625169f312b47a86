"""The compiled CaseSchema dump (referral_api.fastdump) writes exactly what marshmallow's
dump writes, for every projection a viewer can get, and refuses what it cannot reproduce."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
import pytest
from test_cases_api import FULL_CASE, Team, case_url, create

from referral_api.access.categories import ORG_TYPE_CEILINGS, Category
from referral_api.access.roles import Role
from referral_api.cases.layout import project
from referral_api.cases.models import Case, CaseStatus, CaseType, NrmStage, RiskLevel
from referral_api.cases.schemas import CaseSchema
from referral_api.extensions import db
from referral_api.fastdump import CompiledDumpSchema, NotCompilable, compile_dump

_FULL: dict[str, Any] = {
    "given_name": "Олена",
    "family_name": "Kovalenko",
    "aliases": ["Lena", "أولينا"],
    "date_of_birth": "1999-04-02",
    "sex": "female",
    "nationality": "UA",
    "languages": ["uk", "ru"],
    "documents": [
        {"type": "passport", "country": "UA", "number": "FA123456"},
        {"type": "national_id", "country": None, "number": "77"},
    ],
    "phone": "+380501234567",
    "email": "olena@example.org",
    "safe_contact_notes": "text only",
    "address": "Shelter 4",
    "is_shelter": True,
    "gbv_type": None,
    "exploitation_types": ["labour", "sexual"],
    "means_of_control": ["debt_bondage"],
    "recruiter_relation": "acquaintance",
    "incident_date": "2026-09",
    "incident_place": "Odesa",
    "narrative": "…",
    "health_notes": "h",
    "psychosocial_notes": "p",
    "legal_status": "s",
    "legal_proceedings": "pr",
    "lawyer": "l",
    "residence_status": "r",
    "reflection_period_until": "2027-01-15",
    "needs_assessment": "a",
    "service_plan": "b",
}


def _case(values: dict[str, Any], **metadata: Any) -> Case:
    """An unsaved case: its fields are pending plaintext, read without any key."""
    case = Case(
        id=uuid.uuid4(),
        case_code="THB-7K3Q-9XMD",
        org_id=uuid.uuid4(),
        case_type=CaseType.THB,
        status=CaseStatus.CLOSED,
        risk_level=RiskLevel.HIGH,
        nrm_stage=NrmStage.IDENTIFIED,
        **metadata,
    )
    for name, value in values.items():
        setattr(case, name, value)
    return case


def _projections() -> list[frozenset[Category]]:
    categories = list(Category)
    chosen = {frozenset(), frozenset(categories), frozenset({Category.IDENTITY})}
    chosen |= {frozenset(ceiling) for ceiling in ORG_TYPE_CEILINGS.values()}
    chosen |= {frozenset(pair) for pair in itertools.combinations(categories, 2)}
    return sorted(chosen, key=lambda s: (len(s), sorted(c.value for c in s)))


def _marshmallows_dump(schema: ma.Schema, obj: Any, many: bool | None = None) -> Any:
    """What marshmallow's own `Schema.dump` makes of `obj` (CaseSchema overrides `dump`)."""
    return ma.Schema.dump(schema, obj, many=many)


def test_the_compiled_case_dump_equals_marshmallows_for_every_projection() -> None:
    schema = CaseSchema()
    now = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
    cases = {
        "full": _case(
            _FULL,
            assignee_id=uuid.uuid4(),
            status_reason="services_completed",
            created_at=now,
            updated_at=now,
            closed_at=now,
            restricted=True,
        ),
        "nothing set": _case({}),
        "nulls and empty lists": _case(
            dict.fromkeys(_FULL) | {"aliases": [], "documents": []}, restricted=False
        ),
    }
    compared = 0
    for label, case in cases.items():
        for shown in _projections():
            view = project(case, shown)
            expected = _marshmallows_dump(schema, view)
            assert schema.dump(view) == expected, (label, sorted(c.value for c in shown))
            assert json.dumps(schema.dump(view)) == json.dumps(expected)
            compared += 1
    assert compared == 3 * len(_projections()) > 3 * 36
    views = [project(case, frozenset(Category)) for case in cases.values()]
    assert CaseSchema(many=True).dump(views) == _marshmallows_dump(schema, views, many=True)


def test_case_schema_dumps_mappings_by_its_compiled_form_and_objects_by_marshmallow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The compiled form really serves CaseSchema's dumps (with marshmallow's field loop
    disabled they still work); an object that is not a mapping goes to marshmallow."""
    from types import SimpleNamespace

    schema = CaseSchema()
    view = project(_case(_FULL), frozenset(Category))
    expected = _marshmallows_dump(schema, view)
    assert isinstance(schema, CompiledDumpSchema)

    def no_marshmallow(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("marshmallow's field loop ran")

    with monkeypatch.context() as patched:
        patched.setattr(ma.Schema, "_serialize", no_marshmallow)
        assert schema.dump(view) == expected
        assert CaseSchema(many=True).dump([view, view]) == [expected, expected]
        with pytest.raises(AssertionError, match="field loop"):
            schema.dump(SimpleNamespace(**view))
    assert schema.dump(SimpleNamespace(**view)) == expected
    assert CaseSchema(many=True).dump([SimpleNamespace(**view)]) == [expected]


def test_case_responses_are_the_schemas_dump_of_the_projection(
    app: Any, client: Any, factory: Any
) -> None:
    """Through the routes: a single case (GET, POST) and a list page carry what
    marshmallow's dump of CaseSchema makes of the viewer's projection."""
    team = Team(factory)
    dpo = factory.headers(factory.user(Role.DPO, team.org_id))
    created = create(client, team.cw, FULL_CASE)
    body = created.get_json()
    assert created.mimetype == "application/json"

    def expected(case_id: str, shown: frozenset[Category]) -> Any:
        with db.session_factory_for(app)() as session:
            case = session.get(Case, uuid.UUID(case_id))
            dumped = _marshmallows_dump(CaseSchema(), project(case, shown))
            session.rollback()
        return json.loads(json.dumps(dumped))

    assert body == expected(body["id"], frozenset(Category))
    read = client.get(case_url(body["id"]), headers=team.cw)
    assert read.get_json() == body and read.mimetype == "application/json"
    # A DPO gets pseudonymous metadata only: the projection without categories.
    dpo_read = client.get(case_url(body["id"]), headers=dpo).get_json()
    assert dpo_read == expected(body["id"], frozenset())
    assert "identity" not in dpo_read and dpo_read["case_code"] == body["case_code"]
    listed = client.get("/api/v1/cases", headers=team.cw)
    assert listed.mimetype == "application/json"
    assert listed.get_json() == [expected(body["id"], frozenset({Category.IDENTITY}))]


class _Hooked(ma.Schema):
    name = ma.fields.String()

    @ma.post_dump
    def _shout(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {key: value.upper() for key, value in data.items()}


class _Inner(ma.Schema):
    value = ma.fields.Integer()


@pytest.mark.parametrize(
    "schema",
    [
        _Hooked(),
        ma.Schema.from_dict({"name": ma.fields.String(data_key="full_name")})(),
        ma.Schema.from_dict({"name": ma.fields.String(attribute="other")})(),
        ma.Schema.from_dict({"name": ma.fields.String(dump_default="x")})(),
        ma.Schema.from_dict({"name": ma.fields.Function(lambda obj: obj)})(),
        ma.Schema.from_dict({"name": ma.fields.Constant("c")})(),
        ma.Schema.from_dict({"items": ma.fields.String()})(),
        ma.Schema.from_dict({"rows": ma.fields.List(ma.fields.Nested(_Inner, many=True))})(),
        ma.Schema.from_dict({"nested": ma.fields.Nested(_Hooked)})(),
    ],
    ids=[
        "hook",
        "data_key",
        "attribute",
        "dump_default",
        "function",
        "constant",
        "dict-attribute-name",
        "list-of-many",
        "nested-hook",
    ],
)
def test_what_the_compiled_dump_cannot_reproduce_is_refused(schema: ma.Schema) -> None:
    with pytest.raises(NotCompilable):
        compile_dump(schema)


def test_compiled_dump_keeps_marshmallows_handling_of_missing_none_and_nesting() -> None:
    schema = ma.Schema.from_dict(
        {
            "when": ma.fields.AwareDateTime(allow_none=True),
            "one": ma.fields.Nested(_Inner, allow_none=True),
            "many": ma.fields.Nested(_Inner, many=True),
            "listed": ma.fields.List(ma.fields.Nested(_Inner)),
            "numbers": ma.fields.List(ma.fields.Integer(), allow_none=True),
            "flag": ma.fields.Boolean(allow_none=True),
        }
    )()
    dump = compile_dump(schema)
    samples: list[dict[str, Any]] = [
        {},
        {"when": None, "one": None, "numbers": None, "flag": None},
        {
            "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "one": {"value": "7", "ignored": 1},
            "many": [{"value": 1}, {}],
            "listed": [{"value": 2}],
            "numbers": ["3", 4],
            "flag": "yes",
            "unknown": "dropped",
        },
    ]
    for sample in samples:
        assert dump(sample) == schema.dump(sample)
