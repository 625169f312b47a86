"""Request and response shapes of the authentication endpoints."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.access.permissions import Permission
from referral_api.access.roles import OrgType, Role

# What a new password must be, whoever sets it (an administrator, or its user at sign-in).
NEW_PASSWORD_LENGTH = validate.Length(min=12, max=1024)


class LoginSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=validate.Length(max=254))
    password = ma.fields.String(
        required=True, load_only=True, validate=validate.Length(min=1, max=1024)
    )
    new_password = ma.fields.String(
        load_only=True,
        validate=NEW_PASSWORD_LENGTH,
        metadata={
            "description": "Replaces the password at this sign-in (every other login of the "
            "account ends). Required when an administrator set the password: without it "
            "such a sign-in is refused with 403 /problems/password-change-required."
        },
    )

    @ma.validates_schema
    def _new_password_differs(self, data: dict[str, Any], **_kwargs: Any) -> None:
        # Checked before any password is: a 422 decided after verifying would tell a
        # guesser that the password was right.
        if "new_password" in data and data["new_password"] == data.get("password"):
            raise ma.ValidationError(
                "Choose a password other than the current one.", "new_password"
            )


class ClientCredentialsSchema(ma.Schema):
    """OAuth 2.0 client credentials (RFC 6749 §4.4), as JSON or form-encoded."""

    grant_type = ma.fields.String(required=True, validate=validate.Equal("client_credentials"))
    client_id = ma.fields.String(validate=validate.Length(min=1, max=64))
    client_secret = ma.fields.String(load_only=True, validate=validate.Length(min=1, max=256))
    scope = ma.fields.String(validate=validate.Length(max=256))


class TokenSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    refresh_token = ma.fields.String()
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "Seconds"})


class OrganisationRefSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    org_type = ma.fields.Enum(OrgType, by_value=True)


class MeSchema(ma.Schema):
    id = ma.fields.UUID()
    kind = ma.fields.String(metadata={"description": "`user` or `client`"})
    email = ma.fields.String(allow_none=True)
    display_name = ma.fields.String()
    role = ma.fields.Enum(Role, by_value=True)
    organisation = ma.fields.Nested(OrganisationRefSchema)
    permissions = ma.fields.List(ma.fields.Enum(Permission, by_value=True))
    acting_officer = ma.fields.String(allow_none=True)
