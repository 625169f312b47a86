"""Inputs that could be read two ways are refused (422) and change nothing (found by review):
a query or form parameter given twice was read as its first value (`?status=open&status=closed`
listed the open cases; a token request naming `client_secret` twice was answered), a JSON
object naming a member twice was stored with the last, and a list's cursor was followed by
any other list (an unrelated page). Each test fails without its fix."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from conftest import assert_problem
from input_support import API, World, diff, ok, snapshot
from sqlalchemy import func, select

from referral_api.access.roles import OrgType, Role


def _next_cursor(response: Any) -> str:
    found = re.search(r"cursor=([^&>]+)", response.headers["Link"])
    assert found, response.headers.get("Link")
    return found.group(1)


def test_a_query_parameter_given_twice_is_refused(app, client, factory):
    w = World(app, client, factory)
    for query in ("status=open&status=closed", "status=open&status=open", "limit=1&limit=2"):
        body = assert_problem(client.get(f"{API}/cases?{query}", headers=w.h["worker"]), 422)
        name = query.split("=")[0]
        assert body["errors"]["query"] == {name: ["Given more than once: send it once."]}
    refused = client.get(f"{API}/referrals?box=outgoing&box=incoming", headers=w.h["worker"])
    assert assert_problem(refused, 422)["errors"]["query"] == {
        "box": ["Given more than once: send it once."]
    }
    # Each once, the same lists answer.
    assert ok(client.get(f"{API}/cases?status=open", headers=w.h["worker"]))
    ok(client.get(f"{API}/referrals?box=outgoing", headers=w.h["worker"]))


def test_a_token_request_naming_a_parameter_twice_is_refused(app, client, factory):
    from referral_api.auth.models import AuthSession, LoginThrottle
    from referral_api.extensions import db

    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, factory.org(OrgType.POLICE))
    form = f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}"
    for repeated in ("&client_secret=something-else", f"&client_secret={secret}"):
        response = client.post(
            f"{API}/auth/token",
            data=form + repeated,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        body = assert_problem(response, 422)  # RFC 6749 §3.2: at most once
        assert body["errors"]["json_or_form"] == {
            "client_secret": ["Given more than once: send it once."]
        }
    with db.session_factory_for(app)() as s:
        assert s.scalar(select(func.count()).select_from(AuthSession)) == 0
        assert s.scalar(select(func.count()).select_from(LoginThrottle)) == 0
    issued = client.post(
        f"{API}/auth/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert ok(issued)["access_token"]


def test_a_json_object_naming_a_member_twice_is_refused_and_changes_nothing(app, client, factory):
    w = World(app, client, factory)
    headers = {
        **w.h["worker"],
        "Content-Type": "application/json",
        "If-Match": w.etag(f"/cases/{w.case}", "worker"),
    }
    before = snapshot(app)
    for body, member in (
        ('{"risk_level": "low", "risk_level": "medium"}', "risk_level"),
        ('{"identity": {"given_name": "Ana", "given_name": "Olena"}}', "given_name"),
    ):
        refused = client.patch(f"{API}/cases/{w.case}", data=body, headers=headers)
        assert assert_problem(refused, 422)["errors"]["json"] == {
            "_schema": [f'"{member}" is given more than once in one object: send each member once.']
        }
    refused = client.post(
        f"{API}/cases",
        data=json.dumps(w.canary_case())[:-1] + ', "case_type": "gbv", "case_type": "thb"}',
        headers={**w.h["worker"], "Content-Type": "application/json"},
    )
    assert_problem(refused, 422)
    assert not diff(before, snapshot(app))
    # Members with the same name in different objects are not repeated.
    ok(client.patch(f"{API}/cases/{w.case}", json={"risk_level": "high"}, headers=headers))


def test_a_cursor_is_followed_only_by_the_list_that_issued_it(app, client, factory):
    w = World(app, client, factory)
    first = client.get(f"{API}/cases?limit=1", headers=w.h["worker"])
    cursor = _next_cursor(first)
    for path, who in (
        ("/referrals", "worker"),
        (f"/cases/{w.case}/notes", "worker"),
        (f"/orgs/{w.ngo}/users", "admin"),
        ("/services", "worker"),
        ("/notifications", "rworker"),
    ):
        refused = client.get(f"{API}{path}", query_string={"cursor": cursor}, headers=w.h[who])
        assert assert_problem(refused, 422)["errors"]["query"] == {
            "cursor": ["Not a valid cursor."]
        }, path
    second = ok(
        client.get(
            f"{API}/cases", query_string={"cursor": cursor, "limit": 1}, headers=w.h["worker"]
        )
    )
    assert second and second[0]["id"] != ok(first)[0]["id"]
    # A cursor of two parts, issued before cursors named their list, is still followed.
    padded = cursor + "=" * (-len(cursor) % 4)
    created, row_id, _list = json.loads(base64.urlsafe_b64decode(padded))
    legacy = base64.urlsafe_b64encode(json.dumps([created, row_id]).encode()).decode().rstrip("=")
    assert (
        ok(
            client.get(
                f"{API}/cases", query_string={"cursor": legacy, "limit": 1}, headers=w.h["worker"]
            )
        )
        == second
    )
    # A case's notes: another case's cursor would start that case's page at a moment of the
    # first case's notes (silently skipping some).
    for text in ("first note", "second note"):
        ok(
            client.post(
                f"{API}/cases/{w.case}/notes",
                json={"category": "needs", "text": text},
                headers=w.h["worker"],
            ),
            201,
        )
    notes = client.get(f"{API}/cases/{w.case}/notes?limit=1", headers=w.h["worker"])
    of_another_case = client.get(
        f"{API}/cases/{w.case2}/notes",
        query_string={"cursor": _next_cursor(notes)},
        headers=w.h["worker"],
    )
    assert_problem(of_another_case, 422)
    ok(
        client.get(
            f"{API}/cases/{w.case}/notes",
            query_string={"cursor": _next_cursor(notes)},
            headers=w.h["worker"],
        )
    )
