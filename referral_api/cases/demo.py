"""Synthetic demo cases: invented people with names in several languages and scripts and
phones in several countries, so search can be tried at once. None of these people exist."""

from __future__ import annotations

import random
import uuid
from datetime import date, timedelta
from typing import Any

from sqlalchemy.orm import Session

from referral_api.cases.models import (
    Case,
    CaseStatus,
    CaseType,
    NrmStage,
    RiskLevel,
    insert_cases,
)
from referral_api.cases.service import new_case_code

# (given, family, sex, nationality, languages, phone)
DEMO_PEOPLE: list[tuple[str, str, str, str, list[str], str]] = [
    ("Olena", "Kovalenko", "female", "UA", ["uk", "ru"], "+380501234567"),
    ("Олена", "Коваленко", "female", "UA", ["uk"], "+380671112233"),
    ("Алёна", "Смирнова", "female", "RU", ["ru"], "+79161234567"),
    ("Mariana", "Popescu", "female", "RO", ["ro"], "+40721234567"),
    ("Fatima", "Al-Hassan", "female", "SY", ["ar"], "+963944123456"),
    ("فاطمة", "الحسن", "female", "SY", ["ar"], "+963933456789"),
    ("Ahmed", "Mansour", "male", "EG", ["ar", "en"], "+201001234567"),
    ("Jürgen", "Müller", "male", "DE", ["de"], "+4915112345678"),
    ("Grace", "Okafor", "female", "NG", ["en", "ig"], "+2348031234567"),
    ("Nguyen", "Thi Lan", "female", "VN", ["vi"], "+84912345678"),
    ("Maria", "dos Santos", "female", "BR", ["pt"], "+5511912345678"),
    ("Ana", "Horvat", "female", "HR", ["hr"], "+385911234567"),
    ("Amina", "Diallo", "female", "GN", ["fr"], "+224621234567"),
    ("Priya", "Sharma", "female", "IN", ["hi", "en"], "+919812345678"),
    ("Mehmet", "Yılmaz", "male", "TR", ["tr"], "+905321234567"),
    ("Siobhán", "O'Brien", "female", "IE", ["en", "ga"], "+353871234567"),
]

_EXPLOITATION = ["sexual", "labour", "domestic_servitude", "forced_criminality", "forced_begging"]
_CONTROL = ["debt_bondage", "document_confiscation", "threats", "isolation", "false_promises"]
_GBV = ["physical_assault", "psychological_abuse", "sexual_assault", "denial_of_resources"]


def seed_demo_cases(
    session: Session, org_id: uuid.UUID, *, count: int | None = None, seed: int = 7
) -> list[Case]:
    rng = random.Random(seed)  # noqa: S311 - synthetic demo data, not security
    people = DEMO_PEOPLE[: count or len(DEMO_PEOPLE)]
    cases = []
    for index, (given, family, sex, nationality, languages, phone) in enumerate(people):
        case_type = CaseType.THB if index % 3 else CaseType.GBV
        born = date(1975, 1, 1) + timedelta(days=rng.randrange(0, 365 * 30))
        case = Case(
            id=uuid.uuid4(),
            case_code=new_case_code(case_type.value),
            org_id=org_id,
            case_type=case_type,
            status=rng.choice([CaseStatus.OPEN, CaseStatus.ACTIVE]),
            risk_level=rng.choice(list(RiskLevel)),
            nrm_stage=rng.choice(
                [NrmStage.IDENTIFIED, NrmStage.ASSISTANCE, NrmStage.REFLECTION_PERIOD]
            ),
        )
        values: dict[str, Any] = {
            "given_name": given,
            "family_name": family,
            "aliases": [],
            "date_of_birth": born.isoformat(),
            "sex": sex,
            "nationality": nationality,
            "languages": languages,
            "documents": [
                {
                    "type": "passport",
                    "country": nationality,
                    "number": f"{nationality}{rng.randrange(10**6, 10**7)}",
                }
            ],
            "phone": phone,
            "safe_contact_notes": "Text only; do not call after 18:00.",
            "address": f"Shelter room {rng.randrange(1, 40)}" if index % 2 else None,
            "is_shelter": bool(index % 2),
            "narrative": "Synthetic demo narrative.",
            "needs_assessment": "Legal counselling, psychosocial support.",
        }
        if case_type is CaseType.THB:
            values["exploitation_types"] = [rng.choice(_EXPLOITATION)]
            values["means_of_control"] = rng.sample(_CONTROL, 2)
            values["recruiter_relation"] = rng.choice(
                ["acquaintance", "recruitment_agency", "stranger"]
            )
        else:
            values["gbv_type"] = rng.choice(_GBV)
            values["recruiter_relation"] = "intimate_partner"
        for attribute, value in values.items():
            setattr(case, attribute, value)
        cases.append(case)
    insert_cases(session, cases, actor_id=None)
    return cases
