"""Project Api and Blueprint: cross-cutting HTTP behaviour that enforces and documents itself.

- `@blp.requires(Permission.X)` authenticates the bearer token, reloads the actor from the
  database and checks the role's permission; it adds `bearerAuth` security and 401/403 to
  the spec. `@blp.public` marks the few views that need no token.
- A view with neither cannot be registered (deny by default).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import wraps
from http import HTTPStatus
from typing import Any, TypeVar

import flask_smorest
import marshmallow as ma
from flask import current_app, g, request
from flask_smorest.utils import prepare_response
from werkzeug.exceptions import HTTPException

from referral_api import jsonio
from referral_api.access.actor import Actor, ActorKind
from referral_api.access.permissions import Permission, resource_type
from referral_api.errors import PROBLEM_MIMETYPE, ProblemSchema, problem_from_http_exception
from referral_api.exceptions import (
    AuthenticationFailed,
    Forbidden,
    Gone,
    PreconditionFailed,
    PreconditionRequired,
    ProcessingRestricted,
    ValidationFailed,
)

F = TypeVar("F", bound=Callable[..., Any])

# Up to 128 letters, digits, spaces and . @ / - _; not starting or ending with a space (so
# never blank: a blank officer would be recorded as if one were named).
_OFFICER_PATTERN = re.compile(r"[\w.@/-](?:[\w .@/-]{0,126}[\w.@/-])?")


class UndeclaredPermissionError(RuntimeError):
    """Raised at start-up when a view declares neither a permission nor `public`."""


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        return problem_from_http_exception(error)

    def _register_responses(self) -> None:
        # Same lazily registered responses as flask-smorest, but errors are problem+json.
        for status in HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
                prepare_response(response, self.spec, PROBLEM_MIMETYPE)
            else:
                prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_MIMETYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)

    def init_app(self, app: Any, *, spec_kwargs: Any = None) -> None:
        super().init_app(app, spec_kwargs=spec_kwargs)
        self.spec.components.security_scheme(
            "bearerAuth",
            {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        )


def current_actor() -> Actor:
    actor = g.get("actor")
    if actor is None:  # a view reached without @requires: refuse, never guess
        raise AuthenticationFailed()
    return actor  # type: ignore[no-any-return]


def authenticate_request() -> Actor:
    """Verify the bearer token and rebuild the actor from the database (never the token)."""
    from referral_api.auth.access_tokens import access_token_claims
    from referral_api.auth.service import STALE_TOKEN_RECORDS, load_actor, stale_token_refusal
    from referral_api.extensions import db

    claims = access_token_claims()
    try:
        session_id = uuid.UUID(str(claims.get("sid")))
    except ValueError:
        raise AuthenticationFailed("The access token is not valid.") from None
    subject, now = str(claims.get("sub", "")), datetime.now(UTC)
    actor = load_actor(db.session, subject=subject, session_id=session_id, now=now)
    if actor is None:
        refused = AuthenticationFailed("The session is no longer valid. Log in again.")
        if STALE_TOKEN_RECORDS.first(session_id):
            # On the record (errors.handle_domain_error), under the account's organisation.
            g.actor, refused.audit = stale_token_refusal(
                db.session, subject=subject, session_id=session_id, now=now
            )
        raise refused
    officer = request.headers.get("X-Acting-Officer")
    if officer is not None and actor.kind is ActorKind.CLIENT:
        if not _OFFICER_PATTERN.fullmatch(officer):
            raise ValidationFailed(
                {
                    "X-Acting-Officer": [
                        "Up to 128 letters, digits, spaces and . @ / - _, not starting or "
                        "ending with a space"
                    ]
                },
                location="headers",
            )
        actor = replace(actor, acting_officer=officer)
    actor = replace(actor, request_id=g.get("request_id"))
    g.actor = actor
    return actor


# The audit resource type of the record a URL's id names (the rows services write use the
# same names). A route with an id of another name fails its test (tests/test_audit.py).
URL_ID_TYPES = {
    "case_id": "case",
    "consent_id": "consent",
    "referral_id": "referral",
    "org_id": "organisation",
    "user_id": "user",
    "client_pk": "client",
    "service_id": "service",
    "request_id": "erasure_request",
    "export_id": "export",
    "notification_id": "notification",
}


def _denial_entry(permission: Permission, view_args: dict[str, Any]) -> dict[str, Any]:
    """What a role-level refusal records in the audit log (ids from the URL only): the record
    the URL names, typed as the rows of allowed requests type it (`POST /cases/{id}/consents`
    refused names the case), or, without an id, what the permission acts on."""
    named = next((k for k in view_args if k in URL_ID_TYPES), None)
    case_id = view_args.get("case_id")
    return {
        "action": str(permission),
        "resource_type": resource_type(permission) if named is None else URL_ID_TYPES[named],
        "resource_id": None if named is None else view_args[named],
        "case_id": case_id if isinstance(case_id, uuid.UUID) else None,
        "decision": "deny",
        "reason": "permission not granted to role",
    }


def _case_refusal_entry(
    permission: Permission, view_args: dict[str, Any], refused: Gone | ProcessingRestricted
) -> dict[str, Any]:
    """What a write refused because its case was erased or restricted meanwhile records: the
    case, as a request refused for such a case at its start does."""
    return {
        **_denial_entry(permission, view_args),
        "resource_type": "case",
        "resource_id": str(refused.case_id),
        "case_id": refused.case_id,
        "reason": "case erased" if isinstance(refused, Gone) else "processing restricted",
    }


class Blueprint(flask_smorest.Blueprint):
    # Request bodies parsed by orjson (as the stdlib would parse them; `jsonio`).
    ARGUMENTS_PARSER = jsonio.Parser()

    def arguments(self, schema: Any, **kwargs: Any) -> Callable[[F], F]:
        """flask-smorest's `arguments`, with one schema instance per view for its lifetime.

        Given a class, webargs instantiates it for every request, and each instantiation
        deep-copies the declared fields and rebuilds every nested schema. A marshmallow
        schema keeps no per-call state (`load` only reads its options), so one instance
        serves every request; the OpenAPI document is the same for a class and its
        default instance.
        """
        if isinstance(schema, type) and issubclass(schema, ma.Schema):
            schema = schema()
        if kwargs.get("location") == "query":
            # A query parameter no list knows is refused (422), not ignored: a misspelt
            # filter (`stauts=open`, `nmae=`) would otherwise answer the whole list as if
            # it had matched.
            kwargs.setdefault("unknown", ma.RAISE)
        return super().arguments(schema, **kwargs)  # type: ignore[no-any-return]

    def requires(self, permission: Permission) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            @wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                actor = authenticate_request()
                if not actor.can(permission):
                    denied = Forbidden("Your role does not allow this action.")
                    denied.audit = _denial_entry(permission, kwargs)
                    raise denied
                if _undecided_post_with_key():
                    from referral_api.idempotency import refuse_key

                    refuse_key()
                try:
                    return func(*args, **kwargs)
                except (Gone, ProcessingRestricted) as refused:
                    if refused.audit is None and refused.case_id is not None:
                        # A write that found the case erased or restricted under it (it
                        # waited on the case's row while that committed): refused like a
                        # request that began after it, and on the record like it.
                        refused.audit = _case_refusal_entry(permission, kwargs, refused)
                    raise

            wrapper.__required_permission__ = permission  # type: ignore[attr-defined]
            documented = self.doc(security=[{"bearerAuth": []}])(wrapper)
            documented = self.alt_response(401, response="UNAUTHORIZED")(documented)
            documented = self.alt_response(403, response="FORBIDDEN")(documented)
            return documented  # type: ignore[no-any-return]

        return decorator

    def idempotent(
        self,
        func: F | None = None,
        *,
        resource: Any = None,
        resource_id: Any = None,
        case_field: str = "case_id",
    ) -> Any:
        """Honour `Idempotency-Key` on a POST (see referral_api.idempotency). The wrapped
        view flushes but does not commit: this wrapper commits the work together with the
        key's record.

        `resource(made_id, view_args)`: what a replay answers, what the first request made
        as it is now, read through the policy and audited as a GET of it is
        (`idempotency.ResourceView`). Only the id of what it made is kept
        (`resource_id(response, view_args)`, by default the response's `id`), never the
        response: it may hold personal data (kept past a correction or a restriction) or a
        secret shown once. Without `resource` the response is stored, encrypted with its
        case's key, and replayed as it was: only for responses of ids and codes (police
        intake). `case_field`: the response's field naming its case, when the URL names
        none (a replay of a request about an erased case answers 410)."""
        if func is None:
            return lambda view: self.idempotent(
                view, resource=resource, resource_id=resource_id, case_field=case_field
            )

        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from sqlalchemy.exc import IntegrityError

            from referral_api import idempotency
            from referral_api.extensions import db

            session = db.session
            key = idempotency.idempotency_key()
            if key is None:
                response = func(*args, **kwargs)
                if session.in_transaction():  # not when the view committed (POST /cases)
                    session.commit()
                return response
            actor = current_actor()
            existing = idempotency.find(session, actor, key)
            if existing is None:
                try:
                    record = idempotency.claim(session, actor, key)
                except IntegrityError:
                    # A concurrent twin committed first (we waited on its key): replay it.
                    session.rollback()
                    existing = idempotency.find(session, actor, key)
                    if existing is None:
                        raise
            if existing is not None:
                replayed = idempotency.replay(session, existing, kwargs, resource)
                session.commit()  # the current view's audit row
                return replayed
            response = func(*args, **kwargs)
            if response.status_code < 300:
                case_id = idempotency.case_of_response(session, response, kwargs, case_field)
                made = None
                if resource is not None:
                    made = (resource_id or idempotency.id_in_body)(response, kwargs)
                idempotency.store(session, record, response, case_id, made)
            session.commit()
            return response

        wrapper.__idempotency__ = "honoured"  # type: ignore[attr-defined]

        return self._documenting_key(
            wrapper,
            "Retry safely: the same key and body do nothing twice "
            "and answer with the first response's status (`Idempotent-Replayed: "
            "true`) and what it made as it is now (police intake: the first body); "
            "410 once the case is erased; the same key with another body is "
            "refused (422). A key is honoured for 7 days after its first use "
            "(the operator's REFERRAL_API_IDEMPOTENCY_KEY_SECONDS); past that it "
            "is a new request.",
            # 409 a twin still in progress, 410 its case erased, 422 the key reused
            (409, 410, 422),
        )

    def repeatable(self, reason: str) -> Callable[[F], F]:
        """Declare a POST whose repeat is harmless (`reason` says why): `Idempotency-Key` is
        accepted and ignored there, and the reason is in the endpoint's OpenAPI description.
        A POST that neither declares this nor is `idempotent` refuses the header (422)."""

        def decorator(func: F) -> F:
            note = f"`Idempotency-Key` is accepted and ignored: {reason}"
            func.__doc__ = _with_description_note(func.__doc__, note)
            func.__idempotency__ = "repeatable"  # type: ignore[attr-defined]
            func.__repeatable_reason__ = reason  # type: ignore[attr-defined]
            return self._documenting_key(func, f"Accepted and ignored: {reason}")

        return decorator

    @staticmethod
    def public(func: F) -> F:
        func.__public__ = True  # type: ignore[attr-defined]
        return func

    def add_url_rule(
        self, rule: str, endpoint: Any = None, view_func: Any = None, *a: Any, **kw: Any
    ) -> None:
        if not (
            hasattr(view_func, "__required_permission__") or getattr(view_func, "__public__", False)
        ):
            name = getattr(view_func, "__name__", repr(view_func))
            raise UndeclaredPermissionError(
                f"view {self.name}.{name} declares no permission; use @blp.requires or @blp.public"
            )
        if "POST" in kw.get("methods", ()) and getattr(view_func, "__idempotency__", None) is None:
            view_func = self._refusing_key(view_func)
        super().add_url_rule(rule, endpoint, view_func, *a, **kw)

    def _refusing_key(self, view_func: Any) -> Any:
        """A POST that decided nothing about `Idempotency-Key`: documented as refusing it.
        A view behind `requires` refuses it after the permission check (`requires`); a
        public one before anything, here."""
        if hasattr(view_func, "__required_permission__"):
            guarded = view_func
        else:
            from referral_api.idempotency import refuse_key

            @wraps(view_func)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                refuse_key()
                return view_func(*args, **kwargs)

        refused = (
            "Not honoured: a request carrying this header is refused (422) and nothing is "
            "done; send the request without it."
        )
        return self._documenting_key(guarded, refused, (422,))

    def _documenting_key(self, func: Any, description: str, answers: tuple[int, ...] = ()) -> Any:
        """`func` with the Idempotency-Key header among its documented parameters (added to
        any it documents already: a later `doc(parameters=…)` replaces the list), and the
        statuses the key can answer (`answers`) among its responses."""
        from referral_api.idempotency import KEY_PATTERN

        for status in answers:
            func = self.alt_response(status, response=HTTPStatus(status).name)(func)

        manual = getattr(func, "_apidoc", {}).get("manual_doc", {})
        header = {
            "in": "header",
            "name": "Idempotency-Key",
            "required": False,
            "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
            "description": description,
        }
        return self.doc(parameters=[*manual.get("parameters", []), header])(func)


def _undecided_post_with_key() -> bool:
    """A POST carrying Idempotency-Key to a view that neither honours it nor declared a
    repeat harmless (the registered view carries the decision: `wraps` copies it outward)."""
    if request.method != "POST" or "Idempotency-Key" not in request.headers:
        return False
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "__idempotency__", None) is None


def _with_description_note(docstring: str | None, note: str) -> str:
    """The docstring with `note` closing its OpenAPI description (before a `---` part)."""
    text = inspect.cleandoc(docstring or "")
    public, delimiter, internal = text.partition("\n---")
    return f"{public}\n\n{note}{delimiter}{internal}"


# ---- ETags and conditional requests -------------------------------------------------------


def etag_for(kind: str, resource_id: Any, version: int | str) -> str:
    digest = hashlib.sha256(f"{kind}:{resource_id}:{version}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def require_if_match(current_etag: str) -> None:
    """428 when If-Match is absent, 412 when it names another version."""
    header = request.headers.get("If-Match")
    if header is None:
        raise PreconditionRequired(
            "Send If-Match with the ETag you last read, so concurrent changes are not lost."
        )
    # "*" is not accepted: it would skip the lost-update check this header exists for.
    candidates = {tag.strip() for tag in header.split(",")}
    if current_etag not in candidates:
        raise PreconditionFailed(
            "The resource was changed since you read it. Reload it and try again."
        )
