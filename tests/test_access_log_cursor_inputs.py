"""The case access log's sealed cursor: anything the server did not issue is a 422."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from referral_support import API, World


def _log(client: Any, world: World, case_id: str, cursor: str | None, limit: int = 1) -> Any:
    query: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        query["cursor"] = cursor
    return client.get(
        f"{API}/cases/{case_id}/access-log", query_string=query, headers=world.h["sender"]
    )


def _next_cursor(response: Any) -> str | None:
    body = response.get_json()
    if isinstance(body, dict):
        for key in ("next_cursor", "next"):
            if body.get(key):
                value = body[key]
                if "cursor=" in str(value):
                    return parse_qs(urlparse(value).query)["cursor"][0]
                return str(value)
    link = response.headers.get("Link")
    if link:
        url = link.split(";")[0].strip("<> ")
        return parse_qs(urlparse(url).query)["cursor"][0]
    return None


@pytest.mark.parametrize(
    "cursor",
    [
        "A",
        "AB",
        "ABC",
        "ABCDE",
        "!!!!",
        "====",
        "é",
        "ééééééééééééééééééééééééééééééééééé",
        "\u202e\u0000x",
        "-_-_",
        "1234",
        "0",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "A" * 16,
        "A" * 11,
        "A" * 2000,
        "%%",
        " ",
        "AAAA AAAA",
        base64.urlsafe_b64encode(b"x" * 12).decode(),
        base64.urlsafe_b64encode(b"x" * 10).decode(),
    ],
)
def test_bad_cursors_are_422(app: Any, client: Any, factory: Any, cursor: str) -> None:
    world = World(factory, client)
    response = _log(client, world, world.case_id, cursor)
    assert response.status_code == 422, (response.status_code, response.get_data(as_text=True))


def test_truncated_and_altered_real_cursor_is_422(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client)
    for _ in range(3):
        client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"])
    first = _log(client, world, world.case_id, None)
    assert first.status_code == 200, first.get_data(as_text=True)
    cursor = _next_cursor(first)
    assert cursor, (first.headers, first.get_json())
    assert _log(client, world, world.case_id, cursor).status_code == 200
    for bad in (cursor[:-1], cursor[:-2], cursor[:-3], cursor[1:], cursor + "A", cursor + "=="):
        response = _log(client, world, world.case_id, bad)
        # cursor + "==" decodes to the same bytes (padding is ignored): 200 is fine there
        if bad == cursor + "==":
            assert response.status_code in (200, 422)
            continue
        assert response.status_code == 422, (bad, response.status_code)


def test_cursor_of_case_a_on_case_b(app: Any, client: Any, factory: Any) -> None:
    """A cursor is sealed for the log of the case it was issued for: on another case's log
    (the same caller may read both) it is a 422, not a page of that case."""
    world = World(factory, client)
    other = client.post(f"{API}/cases", json={"case_type": "thb"}, headers=world.h["sender"])
    other_id = other.get_json()["id"]
    for _ in range(3):
        client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"])
        client.get(f"{API}/cases/{other_id}", headers=world.h["sender"])
    first = _log(client, world, world.case_id, None)
    cursor = _next_cursor(first)
    assert cursor
    crossed = _log(client, world, other_id, cursor, limit=50)
    assert crossed.status_code == 422
    assert crossed.get_json()["errors"] == {"query": {"cursor": ["Not a valid cursor."]}}
