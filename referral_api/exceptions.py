"""The project's own exceptions: services raise these, routes map them to HTTP.

Messages are written for the caller and must never contain personal data, key material,
SQL or another exception's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ReferralApiError(Exception):
    """Root of every domain error. `status` and `problem_type` drive the HTTP mapping."""

    status: int = 400
    problem_type: str = "about:blank"
    title: str = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra
        # A denied access to record in the audit log although the request fails: the HTTP
        # layer writes it in its own transaction (the request's is rolled back).
        self.audit: dict[str, Any] | None = None


class ConfigurationError(ReferralApiError):
    status = 500
    title = "Configuration error"


class NotFound(ReferralApiError):
    """Also used for anything outside the actor's scope: existence is never confirmed."""

    status = 404
    title = "Not Found"


class Forbidden(ReferralApiError):
    status = 403
    title = "Forbidden"


class PasswordChangeRequired(ReferralApiError):
    """The right password, which an administrator set: the sign-in must carry a new one."""

    status = 403
    title = "Forbidden"
    problem_type = "/problems/password-change-required"


class AuthenticationFailed(ReferralApiError):
    status = 401
    title = "Unauthorized"
    problem_type = "/problems/authentication-failed"
    # The WWW-Authenticate challenge when it is not the default Bearer one (RFC 6749 §5.2:
    # a client that authenticated with HTTP Basic is answered with a Basic challenge).
    challenge: str | None = None


class Conflict(ReferralApiError):
    status = 409
    title = "Conflict"
    problem_type = "/problems/conflict"


class ValidationFailed(ReferralApiError):
    """A rule that a schema cannot express. `errors` maps field names to messages and is
    reported under its request location, like webargs' own errors:
    {"json": {"role": ["…"]}}."""

    status = 422
    title = "Unprocessable Content"
    problem_type = "/problems/validation"

    def __init__(
        self, errors: dict[str, list[str]], detail: str | None = None, location: str = "json"
    ) -> None:
        super().__init__(
            detail or "The request did not pass validation.",
            errors={location: nest_field_paths(errors)},
        )

    def within(self, part: str) -> ValidationFailed:
        """The same refusal for a body that holds the checked object under `part` (police
        intake's `case`, `consent` and `referral`): the body's field paths gain the prefix,
        so the client reads them as it reads a schema's errors for that body."""
        errors = self.extra["errors"]
        moved = ValidationFailed({}, self.detail)
        moved.extra = {
            **self.extra,
            "errors": {
                location: {part: fields} if location == "json" else fields
                for location, fields in errors.items()
            },
        }
        moved.audit = self.audit
        return moved


def nest_field_paths(errors: Mapping[str, list[str]]) -> dict[str, Any]:
    """Dotted paths (`provisions.0.valid_until`) in the nested shape the schemas report, so a
    client reads every 422 the same way: {"provisions": {"0": {"valid_until": ["…"]}}}."""
    nested: dict[str, Any] = {}
    for path, messages in errors.items():
        *parents, leaf = path.split(".")
        node: Any = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        if isinstance(node, dict) and isinstance(node.get(leaf, []), list):
            node.setdefault(leaf, []).extend(messages)
        else:  # a message list already stands on the way: keep the path as it was
            nested[path] = list(messages)
    return nested


class TooManyAttempts(ReferralApiError):
    status = 429
    title = "Too Many Requests"
    problem_type = "/problems/too-many-attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed attempts. Try again later.")
        self.retry_after = max(1, int(retry_after))


class PreconditionRequired(ReferralApiError):
    status = 428
    title = "Precondition Required"
    problem_type = "/problems/if-match-required"


class PreconditionFailed(ReferralApiError):
    status = 412
    title = "Precondition Failed"
    problem_type = "/problems/stale-etag"


class Gone(ReferralApiError):
    """The case was erased (crypto-shredded): answered to those who could see it.
    `case_id`: the erased case, when the code raising it knows no more of the request (a
    write that found the case's keys gone): the route's permission check audits it."""

    status = 410
    title = "Gone"
    problem_type = "/problems/erased"
    case_id: Any = None

    @classmethod
    def case_erased(cls, case_id: Any) -> Gone:
        gone = cls("This case was erased.")
        gone.case_id = case_id
        return gone


class ProcessingRestricted(ReferralApiError):
    """GDPR Art. 18: the case is stored but may not be processed. `case_id` as for Gone: a
    write that found the case restricted under it."""

    status = 403
    title = "Processing restricted"
    problem_type = "/problems/processing-restricted"
    case_id: Any = None

    @classmethod
    def case_restricted(cls, case_id: Any) -> ProcessingRestricted:
        restricted = cls(
            "Processing of this case is restricted (GDPR Art. 18): it is stored but not used."
        )
        restricted.case_id = case_id
        return restricted
