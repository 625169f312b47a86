"""Keyset (cursor) pagination: opaque cursors, capped page size, `Link: <…>; rel="next"`."""

from __future__ import annotations

import base64
import functools
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import marshmallow as ma
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import current_app, request
from sqlalchemy import Select, bindparam, tuple_
from sqlalchemy.orm import Session

from referral_api.crypto.server_keys import derived_key
from referral_api.exceptions import ValidationFailed

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


class PageArgsSchema(ma.Schema):
    cursor = ma.fields.String(
        load_default=None, metadata={"description": "Opaque cursor from a `Link: rel=next` header"}
    )
    limit = ma.fields.Integer(
        load_default=DEFAULT_PAGE_SIZE, validate=ma.validate.Range(min=1, max=MAX_PAGE_SIZE)
    )


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


def _list_name() -> str:
    """The list a cursor belongs to: the endpoint serving it and the path's values (a case's
    notes, not another case's; its filters travel in the `Link` URL beside it)."""
    path = ",".join(f"{key}={value}" for key, value in sorted((request.view_args or {}).items()))
    return f"{request.endpoint or ''}:{path}" if path else request.endpoint or ""


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id), _list_name()]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def invalid_cursor() -> ValidationFailed:
    """The 422 for a `cursor` query parameter the server did not issue."""
    return ValidationFailed({"cursor": ["Not a valid cursor."]}, location="query")


def cursor_document(cursor: str) -> Any:
    """The JSON inside a cursor, or the 422. A cursor is the client's to forge: anything
    that is not base64 of JSON, or JSON nested past the parser's recursion limit, is
    refused here rather than failing later."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, RecursionError):  # binascii.Error and JSON's are ValueErrors
        raise invalid_cursor() from None


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position in a cursor of this list; 422 for a malformed one or one another list
    issued (it would start an unrelated page). A cursor of two parts, issued before cursors
    named their list, is still followed, so that a client paging through a deployment need
    not start again."""
    document = cursor_document(cursor)
    if not (
        isinstance(document, list)
        and len(document) in (2, 3)
        and all(isinstance(part, str) for part in document)
    ) or (len(document) == 3 and document[2] != _list_name()):
        raise invalid_cursor()
    try:
        return cursor_instant(document[0]), uuid.UUID(document[1])
    except ValueError:
        raise invalid_cursor() from None


def cursor_instant(text: str) -> datetime:
    """An instant read from a cursor; ValueError for one the server cannot have written: a
    naive timestamp, or one whose UTC time falls outside years 1-9999
    (`0001-01-01T00:00:00+14:00`), would fail only when bound (a 500, or a CSV export cut
    short)."""
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError("naive timestamp")
    try:
        instant.astimezone(UTC)
    except OverflowError:
        raise ValueError("instant outside UTC's calendar") from None
    return instant


# The largest id a BIGINT column holds: a cursor past it would fail only when bound.
MAX_ROW_ID = 2**63 - 1


# Sealed cursors: a row id the caller must not read (audit ids are numbered across the
# platform, so two of them would tell how much every other organisation did in between).
# AES-GCM under a key derived from the token-signing secret, the cursor's purpose as
# associated data; a new secret makes old cursors invalid (422), as it does old tokens.
_SEALED_NONCE = 12


@functools.lru_cache(maxsize=4)
def _cursor_aead(secret: str) -> AESGCM:
    return AESGCM(derived_key(secret, b"sealed cursor v1"))


def seal_id_cursor(row_id: int, purpose: str) -> str:
    nonce = os.urandom(_SEALED_NONCE)
    sealed = _cursor_aead(current_app.config["JWT_SECRET_KEY"]).encrypt(
        nonce, row_id.to_bytes(8, "big"), purpose.encode()
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")


def open_id_cursor(cursor: str, purpose: str) -> int:
    """The row id inside a cursor from `seal_id_cursor` for the same purpose, or the 422."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode())
        opened = _cursor_aead(current_app.config["JWT_SECRET_KEY"]).decrypt(
            raw[:_SEALED_NONCE], raw[_SEALED_NONCE:], purpose.encode()
        )
    except (ValueError, InvalidTag):  # binascii.Error is a ValueError
        raise invalid_cursor() from None
    row_id = int.from_bytes(opened, "big")
    if len(opened) != 8 or not 0 < row_id <= MAX_ROW_ID:
        raise invalid_cursor()
    return row_id


def decode_id_cursor(cursor: str) -> int:
    """A cursor that is a row id (the DPO reports' newest-first pages of audit rows)."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19):
        raise invalid_cursor()
    if not 0 < int(cursor) <= MAX_ROW_ID:
        raise invalid_cursor()
    return int(cursor)


def paginate(
    session: Session,
    stmt: Select[Any],
    *,
    created_col: Any,
    id_col: Any,
    cursor: str | None,
    limit: int,
    whole_rows: bool = False,
    oldest_first: bool = False,
) -> Page:
    """Newest first (or `oldest_first`); the cursor is the (created_at, id) of the last row
    returned. Items are the statement's first column, or with `whole_rows` its rows (the
    entity first)."""
    parameters = page_parameters(cursor, limit)
    if cursor:
        stmt = after_cursor(stmt, created_col, id_col, oldest_first=oldest_first)
    ordered = (oldest_first_order if oldest_first else newest_first)(stmt, created_col, id_col)
    return fetch_page(
        session,
        ordered,
        parameters,
        created_col=created_col,
        id_col=id_col,
        limit=limit,
        whole_rows=whole_rows,
    )


# The pieces of `paginate`, for a statement built once (its values as parameters):
# `after_cursor` and `newest_first` shape it, `page_parameters` binds a request's cursor and
# limit, `fetch_page` runs it.
def after_cursor(
    stmt: Select[Any], created_col: Any, id_col: Any, *, oldest_first: bool = False
) -> Select[Any]:
    # A row comparison, (created, id) < (cursor's): the same rows as "created before, or at
    # the same instant with a smaller id", but an index on (…, created, id) starts its scan
    # at the cursor, where the OR was a filter on every row before it (page N read the N-1
    # pages before it).
    after = tuple_(
        bindparam("cursor_created", type_=created_col.type),
        bindparam("cursor_id", type_=id_col.type),
    )
    position = tuple_(created_col, id_col)
    return stmt.where(position > after if oldest_first else position < after)


def newest_first(stmt: Select[Any], created_col: Any, id_col: Any) -> Select[Any]:
    return stmt.order_by(created_col.desc(), id_col.desc()).limit(bindparam("page_rows"))


def oldest_first_order(stmt: Select[Any], created_col: Any, id_col: Any) -> Select[Any]:
    return stmt.order_by(created_col, id_col).limit(bindparam("page_rows"))


def page_parameters(cursor: str | None, limit: int) -> dict[str, Any]:
    parameters: dict[str, Any] = {"page_rows": limit + 1}
    if cursor:
        parameters["cursor_created"], parameters["cursor_id"] = decode_cursor(cursor)
    return parameters


def fetch_page(
    session: Session,
    stmt: Select[Any],
    parameters: dict[str, Any],
    *,
    created_col: Any,
    id_col: Any,
    limit: int,
    whole_rows: bool = False,
) -> Page:
    """A page of a statement shaped by `newest_first` or `oldest_first_order` (and
    `after_cursor` for a cursor)."""
    result = session.execute(stmt, parameters)
    rows: list[Any] = list(result if whole_rows else result.scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1][0] if whole_rows else rows[-1]
        next_cursor = encode_cursor(getattr(last, created_col.key), getattr(last, id_col.key))
    return Page(rows, next_cursor)


def link_header(page: Page, limit: int) -> dict[str, str]:
    if page.next_cursor is None:
        return {}
    args = {key: value for key, value in request.args.items() if key not in ("cursor", "limit")}
    args.update({"cursor": page.next_cursor, "limit": str(limit)})
    query = urlencode(args)
    return {"Link": f'<{request.path}?{query}>; rel="next"'}
