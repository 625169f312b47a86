"""Directory of services: search and read for every signed-in user, edits by the owning
organisation's administrators, and a read-only Open Referral HSDS 3.0 publication.

The HSDS endpoints need a token too: a directory of shelters' and support services' intake
channels is for the professionals on the platform, not for the open internet.
"""

from __future__ import annotations

import uuid
from typing import Any

from referral_api.access.permissions import Permission
from referral_api.directory import hsds, service
from referral_api.directory.models import Service
from referral_api.directory.schemas import (
    HsdsOrganizationPageSchema,
    HsdsPageArgsSchema,
    HsdsServicePageSchema,
    HsdsServiceQueryArgsSchema,
    HsdsServiceSchema,
    ServiceCreateSchema,
    ServiceQueryArgsSchema,
    ServiceSchema,
    ServiceUpdateSchema,
)
from referral_api.extensions import db
from referral_api.pagination import link_header, paginate
from referral_api.smorest import Blueprint, current_actor, etag_for, require_if_match

blp = Blueprint(
    "directory",
    __name__,
    url_prefix="/api/v1",
    description="Directory of services (with an Open Referral HSDS 3.0 publication)",
)

_ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "Strong entity tag"}}


def _with_etag(item: Service, status: int = 200) -> tuple[Service, int, dict[str, str]]:
    return item, status, {"ETag": etag_for("service", item.id, item.version)}


@blp.route("/services", methods=["GET"])
@blp.requires(Permission.DIRECTORY_READ)
@blp.arguments(ServiceQueryArgsSchema, location="query")
@blp.response(200, ServiceSchema(many=True))
def list_services(args: dict[str, Any]) -> Any:
    """Search the directory of services

    Filters combine; without `status` only active services of active organisations are listed.
    """
    cursor, limit = args.pop("cursor"), args.pop("limit")
    stmt = service.search_services_query(current_actor(), **args)
    page = paginate(
        db.session,
        stmt,
        created_col=Service.created_at,
        id_col=Service.id,
        cursor=cursor,
        limit=limit,
    )
    return page.items, 200, link_header(page, limit)


@blp.route("/services/<uuid:service_id>", methods=["GET"])
@blp.requires(Permission.DIRECTORY_READ)
@blp.response(200, ServiceSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def get_service(service_id: uuid.UUID) -> Any:
    """Read a service"""
    item = service.get_service(db.session, current_actor(), service_id, Permission.DIRECTORY_READ)
    return _with_etag(item)


def _current_service(service_id: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the service the first request added, as GET /services/{id} shows
    it now."""
    return get_service(service_id=service_id)


@blp.route("/orgs/<uuid:org_id>/services", methods=["POST"])
@blp.requires(Permission.DIRECTORY_MANAGE)
@blp.idempotent(resource=_current_service)
@blp.arguments(ServiceCreateSchema)
@blp.response(201, ServiceSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
def create_service(data: dict[str, Any], org_id: uuid.UUID) -> Any:
    """Add a service to your organisation's directory entry"""
    item = service.create_service(db.session, current_actor(), org_id, data)
    return _with_etag(item, 201)


@blp.route("/services/<uuid:service_id>", methods=["PATCH"])
@blp.requires(Permission.DIRECTORY_MANAGE)
@blp.arguments(ServiceUpdateSchema)
@blp.response(200, ServiceSchema, headers=_ETAG_HEADER)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def update_service(changes: dict[str, Any], service_id: uuid.UUID) -> Any:
    """Change a service of your organisation (If-Match required)"""
    actor = current_actor()
    item = service.get_service(db.session, actor, service_id, Permission.DIRECTORY_MANAGE)
    require_if_match(etag_for("service", item.id, item.version))
    service.update_service(db.session, actor, item, changes)
    db.session.commit()
    return _with_etag(item)


# ---- Open Referral HSDS 3.0 (read-only) ---------------------------------------------------


@blp.route("/hsds/services", methods=["GET"])
@blp.requires(Permission.DIRECTORY_READ)
@blp.arguments(HsdsServiceQueryArgsSchema, location="query")
@blp.response(200, HsdsServicePageSchema)
def hsds_list_services(args: dict[str, Any]) -> Any:
    """List services in HSDS 3.0 form (paginated, one-to-one fields)

    Every service is listed, inactive ones too, so consumers learn when a service closes.
    """
    items, total = service.hsds_services_page(db.session, current_actor(), **args)
    contents = [hsds.service_summary(item) for item in items]
    return hsds.page_of(contents, total=total, page=args["page"], per_page=args["per_page"])


@blp.route("/hsds/services/<uuid:service_id>", methods=["GET"])
@blp.requires(Permission.DIRECTORY_READ)
@blp.response(200, HsdsServiceSchema)
@blp.alt_response(404, response="NOT_FOUND")
def hsds_get_service(service_id: uuid.UUID) -> Any:
    """Read a fully nested service in HSDS 3.0 form"""
    item = service.get_service(db.session, current_actor(), service_id, Permission.DIRECTORY_READ)
    return hsds.service_full(item)


@blp.route("/hsds/organizations", methods=["GET"])
@blp.requires(Permission.DIRECTORY_READ)
@blp.arguments(HsdsPageArgsSchema, location="query")
@blp.response(200, HsdsOrganizationPageSchema)
def hsds_list_organizations(args: dict[str, Any]) -> Any:
    """List the organisations that publish services, in HSDS 3.0 form (paginated)"""
    items, total = service.hsds_organisations_page(db.session, current_actor(), **args)
    contents = [hsds.organization_summary(org) for org in items]
    return hsds.page_of(contents, total=total, page=args["page"], per_page=args["per_page"])
