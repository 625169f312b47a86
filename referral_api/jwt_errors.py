"""Every flask-jwt-extended failure becomes a 401 problem with a fixed, safe detail."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_jwt_extended import JWTManager

from referral_api.errors import problem_response

_TYPE = "/problems/invalid-token"


def register_jwt_callbacks(jwt: JWTManager) -> None:
    @jwt.unauthorized_loader
    def missing(_reason: str) -> Response:
        return problem_response(401, detail="A bearer token is required.", type_=_TYPE)

    @jwt.invalid_token_loader
    def invalid(_reason: str) -> Response:
        # The library's reason (e.g. a PyJWT message) is not echoed.
        return problem_response(401, detail="The token is not valid.", type_=_TYPE)

    @jwt.expired_token_loader
    def expired(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
        return problem_response(401, detail="The token has expired.", type_=_TYPE)

    @jwt.revoked_token_loader
    def revoked(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
        return problem_response(401, detail="The token has been revoked.", type_=_TYPE)

    @jwt.needs_fresh_token_loader
    def not_fresh(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
        return problem_response(401, detail="A fresh login is required.", type_=_TYPE)

    @jwt.token_verification_failed_loader
    def failed(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
        return problem_response(401, detail="The token is not valid.", type_=_TYPE)

    @jwt.user_lookup_error_loader
    def lookup_failed(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
        return problem_response(401, detail="The session is no longer valid.", type_=_TYPE)
