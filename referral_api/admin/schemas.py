"""Organisations, users and API clients as administrators see them (no case content)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.access.roles import OrgType, Role
from referral_api.auth.schemas import NEW_PASSWORD_LENGTH
from referral_api.pagination import PageArgsSchema
from referral_api.schema_fields import AwareDateTime, Boolean, no_coordinates, not_blank

_NAME: list[Callable[[Any], Any]] = [validate.Length(min=1, max=200), not_blank]
# An organisation's name is published with its services (the directory, HSDS).
_ORG_NAME = [*_NAME, no_coordinates]


class OrganisationSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    name = ma.fields.String()
    org_type = ma.fields.Enum(OrgType, by_value=True)
    active = Boolean()
    created_at = AwareDateTime(dump_only=True)
    updated_at = AwareDateTime(dump_only=True)


class OrganisationCreateSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=_ORG_NAME)
    org_type = ma.fields.Enum(OrgType, by_value=True, required=True)


class OrganisationUpdateSchema(ma.Schema):
    name = ma.fields.String(validate=_ORG_NAME)
    active = Boolean()


class OrganisationQueryArgsSchema(PageArgsSchema):
    org_type = ma.fields.Enum(OrgType, by_value=True)


class UserSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    org_id = ma.fields.UUID(dump_only=True)
    email = ma.fields.String()
    display_name = ma.fields.String()
    role = ma.fields.Enum(Role, by_value=True)
    active = Boolean()
    password_change_required = Boolean(
        dump_only=True,
        metadata={
            "description": "An administrator set the password: the user's next sign-in replaces it."
        },
    )
    created_at = AwareDateTime(dump_only=True)
    updated_at = AwareDateTime(dump_only=True)


class UserCreateSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=validate.Length(max=254))
    display_name = ma.fields.String(required=True, validate=_NAME)
    role = ma.fields.Enum(Role, by_value=True, required=True)
    password = ma.fields.String(required=True, load_only=True, validate=NEW_PASSWORD_LENGTH)


class UserUpdateSchema(ma.Schema):
    display_name = ma.fields.String(validate=_NAME)
    role = ma.fields.Enum(Role, by_value=True)
    active = Boolean()
    password = ma.fields.String(load_only=True, validate=NEW_PASSWORD_LENGTH)


class ApiClientSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    org_id = ma.fields.UUID(dump_only=True)
    name = ma.fields.String()
    client_id = ma.fields.String(dump_only=True)
    role = ma.fields.Enum(Role, by_value=True)
    active = Boolean()
    created_at = AwareDateTime(dump_only=True)
    updated_at = AwareDateTime(dump_only=True)


class ApiClientCreatedSchema(ApiClientSchema):
    client_secret = ma.fields.String(
        dump_only=True, metadata={"description": "Shown once, at creation or rotation"}
    )


class ApiClientCreateSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=_NAME)
    role = ma.fields.Enum(Role, by_value=True, required=True)


class ApiClientUpdateSchema(ma.Schema):
    name = ma.fields.String(validate=_NAME)
    role = ma.fields.Enum(Role, by_value=True)
    active = Boolean()
