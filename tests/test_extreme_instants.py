"""Instants at the ends of the calendar: a 422 or an answer, never a 500.

An aware date-time whose UTC time falls outside years 1 to 9999 (`0001-01-01T00:00:00+14:00`
is in year 0 in UTC) overflowed when it was converted to be compared or stored: every filter
and every body taking an instant answered 500. Such an instant is now refused where it is
parsed (`schema_fields.AwareDateTime`); the first and last representable instants in UTC
are accepted wherever an instant is.
"""

from __future__ import annotations

from typing import Any

from conftest import assert_problem
from referral_support import consent_body, create_case, provision

from referral_api.access.roles import OrgType, Role

API = "/api/v1"
OUT_OF_RANGE = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
EDGES = ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+00:00")


def _consent(valid_until: str) -> dict[str, Any]:
    legal_aid = provision(
        "legal_assistance", ["identity"], org_type="legal_aid", valid_until=valid_until
    )
    return consent_body(legal_aid)


def test_instants_outside_the_utc_calendar_are_refused_where_they_are_sent(
    client: Any, factory: Any
) -> None:
    org = factory.org(OrgType.NGO)
    caseworker = factory.headers(factory.user(Role.CASEWORKER, org))
    dpo = factory.headers(factory.user(Role.DPO, org))
    case_id = create_case(client, caseworker, {"case_type": "thb"})

    def requests(value: str) -> dict[tuple[str, str, tuple[str, ...]], Any]:
        return {
            ("cases", "query", ("updated_since",)): client.get(
                f"{API}/cases", query_string={"updated_since": value}, headers=caseworker
            ),
            ("referrals", "query", ("updated_since",)): client.get(
                f"{API}/referrals", query_string={"updated_since": value}, headers=caseworker
            ),
            ("dpo report", "query", ("from",)): client.get(
                f"{API}/dpo/reports/disclosures", query_string={"from": value}, headers=dpo
            ),
            ("hsds", "query", ("modified_after",)): client.get(
                f"{API}/hsds/services", query_string={"modified_after": value}, headers=caseworker
            ),
            ("consent", "json", ("provisions", "0", "valid_until")): client.post(
                f"{API}/cases/{case_id}/consents",
                json=_consent(value),
                headers=caseworker,
            ),
        }

    for value in OUT_OF_RANGE:
        for (_, location, path), response in requests(value).items():
            node = assert_problem(response, 422)["errors"][location]
            for part in path:
                node = node[part]
            assert node == ["Must be within years 0001 to 9999 in UTC."], (value, path)
    for value in EDGES:
        for key, response in requests(value).items():
            assert response.status_code < 500, (value, key, response.get_data(as_text=True))
            if response.status_code >= 400:
                assert response.mimetype == "application/problem+json", (value, key)
