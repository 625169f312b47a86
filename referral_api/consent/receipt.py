"""Consent receipts: machine-readable, shaped after ISO/IEC TS 27560 and the Kantara
Consent Receipt, in the consent's language where a translation exists (English otherwise).

A receipt names ids, codes, organisations, purposes, categories, validity and how to
withdraw. It carries no personal field of the case.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from referral_api.auth.models import Organisation
from referral_api.consent.decision import EventView, derive_state
from referral_api.consent.models import ConsentRecord

RECEIPT_VERSION = "referral-api-receipt-1 (ISO/IEC TS 27560:2023 shaped)"

# Translations of purposes, categories and the withdrawal sentence.
_PURPOSES: dict[str, dict[str, str]] = {
    "en": {
        "case_management": "Managing your case and support",
        "psychosocial_support": "Psychosocial support and counselling",
        "legal_assistance": "Legal advice and representation",
        "shelter": "Safe accommodation",
        "health": "Health care",
        "social_assistance": "Social assistance",
        "law_enforcement_report": "Reporting to the police, if you choose to",
        "return_assistance": "Help to return home safely",
        "statistics": "Anonymous statistics",
    },
    "uk": {
        "case_management": "Ведення вашої справи та підтримка",
        "psychosocial_support": "Психосоціальна підтримка та консультування",
        "legal_assistance": "Юридична допомога та представництво",
        "shelter": "Безпечне житло",
        "health": "Медична допомога",
        "social_assistance": "Соціальна допомога",
        "law_enforcement_report": "Повідомлення поліції, якщо ви цього бажаєте",
        "return_assistance": "Допомога в безпечному поверненні додому",
        "statistics": "Анонімна статистика",
    },
    "ru": {
        "case_management": "Ведение вашего дела и поддержка",
        "psychosocial_support": "Психосоциальная поддержка и консультирование",
        "legal_assistance": "Юридическая помощь и представительство",
        "shelter": "Безопасное жильё",
        "health": "Медицинская помощь",
        "social_assistance": "Социальная помощь",
        "law_enforcement_report": "Сообщение в полицию, если вы этого хотите",
        "return_assistance": "Помощь в безопасном возвращении домой",
        "statistics": "Анонимная статистика",
    },
}
_CATEGORIES: dict[str, dict[str, str]] = {
    "en": {
        "identity": "Who you are (name, date of birth, documents)",
        "contact": "How to contact you safely",
        "location": "Where you are staying",
        "incident": "What happened to you",
        "health": "Health information",
        "psychosocial": "Counselling notes",
        "legal": "Your legal situation",
        "immigration": "Your residence status",
        "needs": "Your needs and support plan",
    },
    "uk": {
        "identity": "Хто ви (ім'я, дата народження, документи)",
        "contact": "Як безпечно з вами зв'язатися",
        "location": "Де ви перебуваєте",
        "incident": "Що з вами сталося",
        "health": "Інформація про здоров'я",
        "psychosocial": "Нотатки консультацій",
        "legal": "Ваше правове становище",
        "immigration": "Ваш статус перебування",
        "needs": "Ваші потреби та план підтримки",
    },
    "ru": {
        "identity": "Кто вы (имя, дата рождения, документы)",
        "contact": "Как безопасно связаться с вами",
        "location": "Где вы находитесь",
        "incident": "Что с вами произошло",
        "health": "Сведения о здоровье",
        "psychosocial": "Записи консультаций",
        "legal": "Ваше правовое положение",
        "immigration": "Ваш статус пребывания",
        "needs": "Ваши потребности и план поддержки",
    },
}
_WITHDRAW: dict[str, str] = {
    "en": (
        "You can withdraw this consent at any time, without giving a reason, by telling any "
        "staff member of {controller}. Sharing stops at once."
    ),
    "uk": (
        "Ви можете будь-коли відкликати цю згоду без пояснення причин, сказавши про це "
        "будь-якому працівнику {controller}. Передача даних припиниться негайно."
    ),
    "ru": (
        "Вы можете в любое время отозвать это согласие без объяснения причин, сообщив "
        "любому сотруднику {controller}. Передача данных прекратится сразу."
    ),
}
TRANSLATED_LANGUAGES = frozenset(_WITHDRAW)


def receipt_language(language: str) -> str:
    base = language.split("-")[0].lower()
    return base if base in TRANSLATED_LANGUAGES else "en"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def build_receipt(
    consent: ConsentRecord,
    controller: Organisation,
    recipients: dict[Any, Organisation],
    state: str | None,
    issued_at: datetime,
) -> dict[str, Any]:
    language = receipt_language(consent.language)
    purpose_text, category_text = _PURPOSES[language], _CATEGORIES[language]

    # A renewal sets a new end for every provision: the receipt states the validity in force
    # when it is issued, not the end the renewal superseded.
    derived = derive_state(
        (EventView(e.event_type, e.occurred_at, e.valid_until) for e in consent.events),
        issued_at,
        live=True,
    )

    purposes = []
    for provision in consent.provisions:
        valid_until = derived.renewed_until if derived.renewed else provision.valid_until
        recipient = recipients.get(provision.recipient_org_id)
        purposes.append(
            {
                "purpose": provision.purpose.value,
                "purpose_description": purpose_text[provision.purpose.value],
                "recipient": (
                    {
                        "organisation_id": str(recipient.id),
                        "name": recipient.name,
                        "type": recipient.org_type.value,
                    }
                    if recipient is not None
                    else {
                        "organisation_type": provision.recipient_org_type.value
                        if provision.recipient_org_type
                        else None
                    }
                ),
                "data_categories": [
                    {"code": code, "description": category_text[code]}
                    for code in provision.categories.split(",")
                    if code
                ],
                "valid_from": _iso(provision.valid_from),
                "valid_until": _iso(valid_until),
            }
        )
    return {
        "receipt_version": RECEIPT_VERSION,
        "receipt_id": f"urn:uuid:{consent.id}",
        "record_id": str(consent.id),
        "issued_at": issued_at.isoformat(),
        "language": language,
        "jurisdiction": consent.jurisdiction,
        "consent_timestamp": consent.created_at.isoformat(),
        "collection_method": consent.collection_method.value,
        "notice_version": consent.notice_version,
        "grantor": consent.grantor.value,
        "state": state,
        "controller": {
            "organisation_id": str(controller.id),
            "name": controller.name,
            "type": controller.org_type.value,
        },
        "legal_basis": {
            "gdpr_article_6": consent.article6.value,
            "gdpr_article_9": consent.article9.value if consent.article9 else None,
        },
        "purposes": purposes,
        "withdrawal": {
            "method": _WITHDRAW[language].format(controller=controller.name),
            "api": f"POST /api/v1/consents/{consent.id}/withdraw",
            "justification_required": False,
        },
    }
