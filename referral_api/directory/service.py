"""The directory of services: search for everyone signed in, edits for the owning
organisation's administrators.

The directory is shared across organisations by design (a caseworker must find a legal-aid
service elsewhere to refer to it), so reads are decided on the permission alone; writes are
decided on the service's organisation, and another organisation's services answer 404.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import phonenumbers
from sqlalchemy import ColumnElement, Select, exists, func, literal, or_, select
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor
from referral_api.access.permissions import Permission
from referral_api.access.policy import require, require_on_record
from referral_api.audit import service as audit
from referral_api.auth.models import Organisation
from referral_api.db import new_id
from referral_api.directory.models import Service, ServiceStatus, ServiceType
from referral_api.exceptions import NotFound, ValidationFailed

MAX_LANGUAGES = 20

# A well-formed subset of BCP 47 (RFC 5646): language, optional script, region and variants.
# Extensions and private-use subtags are refused: nobody searches by them.
_LANGUAGE_TAG = re.compile(
    r"(?P<language>[A-Za-z]{2,3})"
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
)
# The same as the documented pattern of a language tag (OpenAPI, an ECMA 262 regex: no named
# groups), anchored; the server also accepts it with surrounding spaces.
LANGUAGE_TAG_PATTERN = "^" + re.sub(r"\(\?P<\w+>", "(", _LANGUAGE_TAG.pattern) + "$"
# An e-mail address in ASCII only (RFC 5322 dot-atom local part, a DNS name; an
# internationalised domain in its xn-- form): anything wider let a street address through
# as "local part" spelt with characters that look like spaces (U+3164, U+2800, U+200B…),
# and look-alike letters (U+017F, U+212A) match `[a-z]` under IGNORECASE.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL = re.compile(
    rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)"
    r"@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63})",
    re.ASCII,
)
MAX_LANGUAGE_TAG = 35  # RFC 5646 §4.4.1: the length an implementation must keep
_PHONE = re.compile(r"\+[0-9 ()./-]{6,30}")

LANGUAGE_TAG_MESSAGE = (
    f"Not a BCP 47 language tag of at most {MAX_LANGUAGE_TAG} characters (e.g. uk, en-GB, sr-Latn)."
)
CONTACT_MESSAGE = (
    "Give the intake e-mail address or phone number for professionals, the phone number in "
    "international format (+…). Never a street address."
)

_EDITABLE = (
    "name",
    "description",
    "service_type",
    "languages",
    "eligibility_notes",
    "area_served",
    "professional_contact",
    "accepting_referrals",
    "status",
)
_REQUIRED_ON_CREATE = (
    "name",
    "description",
    "service_type",
    "languages",
    "area_served",
    "professional_contact",
)


# ---- vocabulary ---------------------------------------------------------------------------


def normalise_language_tag(tag: str) -> str:
    """Canonical case (`pt-br` → `pt-BR`, `SR-LATN` → `sr-Latn`); ValueError if malformed."""
    tag = tag.strip()
    match = _LANGUAGE_TAG.fullmatch(tag) if len(tag) <= MAX_LANGUAGE_TAG else None
    if match is None:
        raise ValueError(LANGUAGE_TAG_MESSAGE)
    parts = [match["language"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts += [variant.lower() for variant in match["variants"].split("-") if variant]
    return "-".join(parts)


def normalise_language_tags(tags: Iterable[str]) -> list[str]:
    """Canonical tags, first occurrence kept; ValidationFailed on a malformed one."""
    normalised: list[str] = []
    try:
        for tag in tags:
            canonical = normalise_language_tag(tag)
            if canonical not in normalised:
                normalised.append(canonical)
    except ValueError:
        raise ValidationFailed({"languages": [LANGUAGE_TAG_MESSAGE]}) from None
    if not normalised or len(normalised) > MAX_LANGUAGES:
        raise ValidationFailed({"languages": [f"Give 1 to {MAX_LANGUAGES} languages."]})
    return normalised


def normalise_professional_contact(value: str) -> str:
    """An e-mail address (domain lower-cased) or an E.164 phone number; ValueError otherwise.

    Free text is refused on purpose: a "contact" field is where a shelter's street address
    would otherwise end up, published to every organisation on the platform.
    """
    value = value.strip()
    if "@" in value:
        address = _EMAIL.fullmatch(value)
        if len(value) > 254 or address is None or len(address["local"]) > 64:
            raise ValueError(CONTACT_MESSAGE)
        return f"{address['local']}@{address['domain'].lower()}"
    if _PHONE.fullmatch(value) is None:
        raise ValueError(CONTACT_MESSAGE)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError(CONTACT_MESSAGE) from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(CONTACT_MESSAGE)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def is_email_contact(value: str) -> bool:
    return "@" in value


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    unknown = set(data) - set(_EDITABLE)
    if unknown:
        raise ValidationFailed({name: ["Unknown field."] for name in sorted(unknown)})
    values = dict(data)
    for field in ("name", "description", "area_served"):
        if field in values:
            values[field] = values[field].strip()
            if not values[field]:
                raise ValidationFailed({field: ["Must not be blank."]})
    if "eligibility_notes" in values and values["eligibility_notes"] is not None:
        values["eligibility_notes"] = values["eligibility_notes"].strip() or None
    if "languages" in values:
        values["languages"] = normalise_language_tags(values["languages"])
    if "professional_contact" in values:
        try:
            values["professional_contact"] = normalise_professional_contact(
                values["professional_contact"]
            )
        except ValueError as error:
            raise ValidationFailed({"professional_contact": [str(error)]}) from None
    return values


def _audit(session: Session, actor: Actor, service: Service, details: dict[str, Any]) -> None:
    audit.record(
        session,
        actor,
        str(Permission.DIRECTORY_MANAGE),
        resource_type="service",
        resource_id=service.id,
        details={**details, "org_id": str(service.org_id)},
    )


# ---- reading ------------------------------------------------------------------------------


def get_service(
    session: Session, actor: Actor, service_id: uuid.UUID, action: Permission
) -> Service:
    service = session.get(Service, service_id)
    if action is Permission.DIRECTORY_READ:
        # Every organisation's services are visible to every signed-in user.
        if service is None:
            raise NotFound()
        require(actor, action)
        return service
    # A change: refused on the record, a made-up id as another organisation's service.
    if service is None:
        raise audit.on_record(NotFound(), str(action), "service", service_id, "no such service")
    require_on_record(actor, action, service, "service", service.id)
    return service


def _offers_language(tag: str) -> ColumnElement[bool]:
    """RFC 4647-style matching: the tag itself, a more specific tag (`pt` finds `pt-BR`), or
    a less specific one (`pt-BR` finds a service offering `pt`)."""
    padded = literal(",") + Service.languages_text + literal(",")
    subtags = tag.split("-")
    prefixes = ["-".join(subtags[:n]) for n in range(len(subtags), 0, -1)]
    return or_(
        padded.contains(f",{tag}-", autoescape=True),
        *(padded.contains(f",{prefix},", autoescape=True) for prefix in prefixes),
    )


def search_services_query(
    actor: Actor,
    *,
    service_type: ServiceType | None = None,
    language: str | None = None,
    area: str | None = None,
    accepting_referrals: bool | None = None,
    org_id: uuid.UUID | None = None,
    status: ServiceStatus | None = None,
) -> Select[Any]:
    """Services matching every given filter. Without `status`: active services of active
    organisations only (what a caseworker can refer to today)."""
    require(actor, Permission.DIRECTORY_READ)
    stmt = select(Service)
    if status is None:
        stmt = stmt.where(
            Service.status == ServiceStatus.ACTIVE,
            Service.org_id.in_(select(Organisation.id).where(Organisation.active.is_(True))),
        )
    else:
        stmt = stmt.where(Service.status == status)
    if service_type is not None:
        stmt = stmt.where(Service.service_type == service_type)
    if language is not None:
        try:
            stmt = stmt.where(_offers_language(normalise_language_tag(language)))
        except ValueError:
            raise ValidationFailed({"language": [LANGUAGE_TAG_MESSAGE]}, location="query") from None
    if area is not None and area.strip():
        stmt = stmt.where(
            Service.area_served_folded.contains(area.strip().casefold(), autoescape=True)
        )
    if accepting_referrals is not None:
        stmt = stmt.where(Service.accepting_referrals.is_(accepting_referrals))
    if org_id is not None:
        stmt = stmt.where(Service.org_id == org_id)
    return stmt


# ---- writing ------------------------------------------------------------------------------


def create_service(
    session: Session, actor: Actor, org_id: uuid.UUID, data: dict[str, Any]
) -> Service:
    """A new service of `org_id`; only that organisation's administrators may add one."""
    org = session.get(Organisation, org_id)
    manage = Permission.DIRECTORY_MANAGE
    if org is None:
        raise audit.on_record(
            NotFound(), str(manage), "organisation", org_id, "no such organisation"
        )
    require_on_record(actor, manage, org, "organisation", org.id)
    values = _normalised(data)
    missing = sorted(set(_REQUIRED_ON_CREATE) - set(values))
    if missing:
        raise ValidationFailed({name: ["Missing data for required field."] for name in missing})
    service = Service(id=new_id(), org_id=org.id, **values)
    session.add(service)
    session.flush()
    _audit(
        session,
        actor,
        service,
        {"created": True, "service_type": service.service_type.value},
    )
    return service


def update_service(
    session: Session, actor: Actor, service: Service, changes: dict[str, Any]
) -> Service:
    require_on_record(actor, Permission.DIRECTORY_MANAGE, service, "service", service.id)
    values = _normalised(changes)
    for field, value in values.items():
        setattr(service, field, value)
    session.flush()
    # Names of the changed fields; values only for the flags that change who gets referrals.
    shown = {
        key: getattr(value, "value", value)
        for key, value in values.items()
        if key in ("status", "accepting_referrals")
    }
    _audit(session, actor, service, {"changed": sorted(values), **shown})
    return service


# ---- Open Referral HSDS publication -------------------------------------------------------


def _offset_page(
    session: Session, stmt: Select[Any], order_by: Iterable[Any], page: int, per_page: int
) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.scalars(
        stmt.order_by(*order_by).offset((page - 1) * per_page).limit(per_page)
    ).all()
    return list(rows), total


def hsds_services_page(
    session: Session,
    actor: Actor,
    *,
    page: int,
    per_page: int,
    organization_id: uuid.UUID | None = None,
    modified_after: datetime | None = None,
) -> tuple[list[Service], int]:
    """Every service, active or not (a consumer must learn that a service closed), by name."""
    require(actor, Permission.DIRECTORY_READ)
    stmt = select(Service)
    if organization_id is not None:
        stmt = stmt.where(Service.org_id == organization_id)
    if modified_after is not None:
        stmt = stmt.where(Service.updated_at >= modified_after)
    return _offset_page(session, stmt, (Service.name, Service.id), page, per_page)


def hsds_organisations_page(
    session: Session, actor: Actor, *, page: int, per_page: int
) -> tuple[list[Organisation], int]:
    """Organisations that publish at least one service, by name."""
    require(actor, Permission.DIRECTORY_READ)
    stmt = select(Organisation).where(exists().where(Service.org_id == Organisation.id))
    return _offset_page(session, stmt, (Organisation.name, Organisation.id), page, per_page)
