"""Administration API: organisations (platform admins), users and API clients (org admins).

The creating POSTs honour Idempotency-Key: a replay answers what the first request created as
the matching GET shows it now (no response is stored: an API client's holds its secret)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response

from referral_api.access.permissions import Permission
from referral_api.admin import service
from referral_api.admin.schemas import (
    ApiClientCreatedSchema,
    ApiClientCreateSchema,
    ApiClientSchema,
    ApiClientUpdateSchema,
    OrganisationCreateSchema,
    OrganisationQueryArgsSchema,
    OrganisationSchema,
    OrganisationUpdateSchema,
    UserCreateSchema,
    UserSchema,
    UserUpdateSchema,
)
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.extensions import db, hasher
from referral_api.pagination import PageArgsSchema, link_header, paginate
from referral_api.smorest import Blueprint, current_actor, etag_for, require_if_match

blp = Blueprint("admin", __name__, url_prefix="/api/v1", description="Administration")

_ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "Strong entity tag"}}


def _with_etag(
    kind: str, obj: Any, body: Any, status: int = 200
) -> tuple[Any, int, dict[str, str]]:
    return body, status, {"ETag": etag_for(kind, obj.id, obj.version)}


def _page(stmt: Any, model: Any, args: dict[str, Any]) -> tuple[list[Any], dict[str, str]]:
    page = paginate(
        db.session,
        stmt,
        created_col=model.created_at,
        id_col=model.id,
        cursor=args["cursor"],
        limit=args["limit"],
    )
    return page.items, link_header(page, args["limit"])


# ---- organisations ------------------------------------------------------------------------


@blp.route("/orgs", methods=["GET"])
@blp.requires(Permission.ORG_READ)
@blp.arguments(OrganisationQueryArgsSchema, location="query")
@blp.response(200, OrganisationSchema(many=True))
def list_orgs(args: dict[str, Any]) -> Any:
    """List organisations (platform admins: all; org admins: their own)"""
    stmt = service.list_organisations_query(current_actor(), args.get("org_type"))
    items, headers = _page(stmt, Organisation, args)
    return items, 200, headers


def _current_org(org_id: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the organisation the first request created, as GET /orgs/{id}
    shows it to this caller now."""
    return get_org(org_id=org_id)


@blp.route("/orgs", methods=["POST"])
@blp.requires(Permission.ORG_MANAGE)
@blp.idempotent(resource=_current_org)
@blp.arguments(OrganisationCreateSchema)
@blp.response(201, OrganisationSchema, headers=_ETAG_HEADER)
@blp.alt_response(409, response="CONFLICT")
def create_org(data: dict[str, Any]) -> Any:
    """Create an organisation"""
    org = service.create_organisation(db.session, current_actor(), **data)
    return _with_etag("org", org, org, 201)


@blp.route("/orgs/<uuid:org_id>", methods=["GET"])
@blp.requires(Permission.ORG_READ)
@blp.response(200, OrganisationSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def get_org(org_id: uuid.UUID) -> Any:
    """Read an organisation"""
    org = service.get_organisation(db.session, current_actor(), org_id, Permission.ORG_READ)
    return _with_etag("org", org, org)


@blp.route("/orgs/<uuid:org_id>", methods=["PATCH"])
@blp.requires(Permission.ORG_MANAGE)
@blp.arguments(OrganisationUpdateSchema)
@blp.response(200, OrganisationSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def update_org(changes: dict[str, Any], org_id: uuid.UUID) -> Any:
    """Rename, deactivate or reactivate an organisation (If-Match required)"""
    actor = current_actor()
    org = service.get_organisation(db.session, actor, org_id, Permission.ORG_MANAGE)
    require_if_match(etag_for("org", org.id, org.version))
    service.update_organisation(db.session, actor, org, changes)
    db.session.commit()
    return _with_etag("org", org, org)


# ---- users --------------------------------------------------------------------------------


@blp.route("/orgs/<uuid:org_id>/users", methods=["GET"])
@blp.requires(Permission.USER_READ)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, UserSchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
def list_users(args: dict[str, Any], org_id: uuid.UUID) -> Any:
    """List an organisation's users"""
    actor = current_actor()
    org = service.get_organisation(db.session, actor, org_id, Permission.USER_READ)
    items, headers = _page(service.list_users_query(actor, org), User, args)
    return items, 200, headers


@blp.route("/orgs/<uuid:org_id>/users", methods=["POST"])
@blp.requires(Permission.USER_MANAGE)
# Not honoured: the body holds the new user's password, and a kept record of the request
# would hold a fast digest of it (idempotency_records.body_sha256), an offline oracle for
# the password beside the users row, which holds every other field of the body.
@blp.repeatable(
    "e-mail addresses are unique, so a repeat creates no second user and answers 409; the "
    "body holds a password, so no record of the request is kept."
)
@blp.arguments(UserCreateSchema)
@blp.response(201, UserSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def create_user(data: dict[str, Any], org_id: uuid.UUID) -> Any:
    """Create a user in an organisation"""
    actor = current_actor()
    org = service.get_organisation(db.session, actor, org_id, Permission.USER_MANAGE)
    user = service.create_user(db.session, actor, hasher, org, **data)
    db.session.commit()
    return _with_etag("user", user, user, 201)


@blp.route("/users/<uuid:user_id>", methods=["GET"])
@blp.requires(Permission.USER_READ)
@blp.response(200, UserSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def get_user(user_id: uuid.UUID) -> Any:
    """Read a user"""
    user = service.get_user(db.session, current_actor(), user_id, Permission.USER_READ)
    return _with_etag("user", user, user)


@blp.route("/users/<uuid:user_id>", methods=["PATCH"])
@blp.requires(Permission.USER_MANAGE)
@blp.arguments(UserUpdateSchema)
@blp.response(200, UserSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def update_user(changes: dict[str, Any], user_id: uuid.UUID) -> Any:
    """Change a user's name, role, password or active status (If-Match required)

    Deactivation, a role change or a password reset ends the user's current logins. A
    password reset here must be replaced at the user's next sign-in; your own password is
    changed at sign-in (`POST /auth/login` with `new_password`), not here (403).
    """
    actor = current_actor()
    user = service.get_user(db.session, actor, user_id, Permission.USER_MANAGE)
    require_if_match(etag_for("user", user.id, user.version))
    service.update_user(db.session, actor, hasher, user, changes)
    db.session.commit()
    return _with_etag("user", user, user)


# ---- API clients --------------------------------------------------------------------------


@blp.route("/orgs/<uuid:org_id>/clients", methods=["GET"])
@blp.requires(Permission.CLIENT_READ)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, ApiClientSchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
def list_clients(args: dict[str, Any], org_id: uuid.UUID) -> Any:
    """List an organisation's API clients"""
    actor = current_actor()
    org = service.get_organisation(db.session, actor, org_id, Permission.CLIENT_READ)
    items, headers = _page(service.list_clients_query(actor, org), ApiClient, args)
    return items, 200, headers


def _current_client(client_pk: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the API client the first request created, as GET /clients/{id}
    shows it now — without its secret, which is shown once and never stored."""
    return get_client(client_pk=client_pk)


@blp.route("/orgs/<uuid:org_id>/clients", methods=["POST"])
@blp.requires(Permission.CLIENT_MANAGE)
@blp.idempotent(resource=_current_client)
@blp.arguments(ApiClientCreateSchema)
@blp.response(201, ApiClientCreatedSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def create_client(data: dict[str, Any], org_id: uuid.UUID) -> Any:
    """Create an API client; its secret is shown in this response only

    With `Idempotency-Key`, a replay answers the client created first as it is now, without
    `client_secret`: the secret is shown once and never stored. Lost it? Rotate it (POST
    /clients/{id}/secret).
    """
    actor = current_actor()
    org = service.get_organisation(db.session, actor, org_id, Permission.CLIENT_MANAGE)
    created = service.create_client(db.session, actor, hasher, org, **data)
    return _created_client(created, 201)


def _created_client(created: service.ClientWithSecret, status: int) -> Any:
    # Raw attribute values, not a pre-dumped dict: @blp.response dumps with
    # ApiClientCreatedSchema, and dumping twice breaks the Enum field (500 on every create).
    fields = ApiClientSchema().dump_fields
    body = {name: getattr(created.client, name) for name in fields}
    body["client_secret"] = created.client_secret
    return _with_etag("client", created.client, body, status)


@blp.route("/clients/<uuid:client_pk>", methods=["GET"])
@blp.requires(Permission.CLIENT_READ)
@blp.response(200, ApiClientSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def get_client(client_pk: uuid.UUID) -> Any:
    """Read an API client (never its secret)"""
    client = service.get_client(db.session, current_actor(), client_pk, Permission.CLIENT_READ)
    return _with_etag("client", client, client)


@blp.route("/clients/<uuid:client_pk>", methods=["PATCH"])
@blp.requires(Permission.CLIENT_MANAGE)
@blp.arguments(ApiClientUpdateSchema)
@blp.response(200, ApiClientSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def update_client(changes: dict[str, Any], client_pk: uuid.UUID) -> Any:
    """Rename, change the role of, or (de)activate an API client (If-Match required)"""
    actor = current_actor()
    client = service.get_client(db.session, actor, client_pk, Permission.CLIENT_MANAGE)
    require_if_match(etag_for("client", client.id, client.version))
    service.update_client(db.session, actor, client, changes)
    db.session.commit()
    return _with_etag("client", client, client)


@blp.route("/clients/<uuid:client_pk>/secret", methods=["POST"])
@blp.requires(Permission.CLIENT_MANAGE)
@blp.response(200, ApiClientCreatedSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def rotate_client_secret(client_pk: uuid.UUID) -> Response | Any:
    """Issue a new secret (shown once); the old one and its tokens stop working at once

    `Idempotency-Key` is refused here (422): a replay could not show the new secret, which is
    never stored. A repeat cannot rotate twice anyway: the first rotation changes the ETag,
    so a repeat with the same If-Match answers 412.
    """
    actor = current_actor()
    client = service.get_client(db.session, actor, client_pk, Permission.CLIENT_MANAGE)
    require_if_match(etag_for("client", client.id, client.version))
    rotated = service.rotate_client_secret(db.session, actor, hasher, client)
    db.session.commit()
    return _created_client(rotated, 200)
