"""Exact-search normalisation, rules 2 (docs/search.md): the gaps a reviewer's probes found in
rules 1 — Cyrillic document series dropped (two people's documents matched), document numbers
in other digits unfindable, a phone with a note after it unfindable by its number, tatweel,
Persian yeh and invisible characters — and the rules version each index key records."""

from __future__ import annotations

from typing import Any

import pytest
from test_case_search import Team, new_case, person, search


@pytest.fixture
def ua_team(app_config: dict[str, Any], factory: Any) -> Team:
    app_config["PHONE_REGION"] = "UA"
    return Team(factory)


def _doc(number: str, country: str = "UA") -> dict[str, Any]:
    return person("A", "B", documents=[{"type": "passport", "country": country, "number": number}])


def test_cyrillic_document_letters_are_not_dropped(client: Any, ua_team: Team) -> None:
    # Old Ukrainian / Russian internal passports carry a Cyrillic series: "КВ 123456".
    # Two different people's documents: series КВ and АВ, same digits.
    kv = new_case(client, ua_team.headers, **_doc("КВ123456"))
    av = new_case(client, ua_team.headers, **_doc("АВ123456"))
    # Searching for one document must not return the other person (not a false positive
    # that is filtered: normalise_document drops every non-ASCII letter on both sides).
    assert search(client, ua_team.headers, document_number="КВ123456") == [kv]
    assert search(client, ua_team.headers, document_number="АВ123456") == [av]
    # And digits alone ("123456") are not the document number "КВ123456".
    assert search(client, ua_team.headers, document_number="123456") == []
    # The same series typed with the Latin letters it looks like is the same document.
    assert search(client, ua_team.headers, document_number="KB 123456") == [kv]


def test_document_number_in_arabic_indic_digits_is_findable(client: Any, ua_team: Team) -> None:
    # A document number recorded as written on the document (Arabic-Indic digits):
    # it normalises to "" and is never indexed, so the exact same value finds nothing.
    stored = new_case(client, ua_team.headers, **_doc("١٢٣٤٥٦٧٨", country="EG"))
    assert search(client, ua_team.headers, document_number="١٢٣٤٥٦٧٨") == [stored]
    assert search(client, ua_team.headers, document_number="12345678") == [stored]


def test_phone_with_a_word_of_annotation_is_findable(client: Any, ua_team: Team) -> None:
    # A phone field holding the number and who answers it (the field is free text up to
    # 40 characters; search.py already expects text such as "ask her sister").
    stored = new_case(client, ua_team.headers, **person("A", "B", phone="+380501234567 (sister)"))
    # libphonenumber reads 3+ letters as a vanity number: E.164 becomes +380501234567747837.
    assert search(client, ua_team.headers, phone="+380501234567") == [stored]


def test_arabic_tatweel_is_ignored(client: Any, ua_team: Team) -> None:
    muhammad = new_case(client, ua_team.headers, **person(None, "محمد"))
    # Tatweel (kashida, U+0640) is a purely typographic elongation.
    assert search(client, ua_team.headers, name="محـمد") == [muhammad]


def test_persian_yeh_matches_arabic_yeh(client: Any, ua_team: Team) -> None:
    ali = new_case(client, ua_team.headers, **person(None, "علي"))
    # Persian keyboard yeh (U+06CC) for Arabic yeh (U+064A), as alef maksura already is;
    # Persian keheh (U+06A9) for Arabic kaf (U+0643).
    assert search(client, ua_team.headers, name="علی") == [ali]
    kamal = new_case(client, ua_team.headers, **person(None, "كمال"))
    assert search(client, ua_team.headers, name="کمال") == [kamal]


def test_invisible_format_characters_do_not_split_a_name(client: Any, ua_team: Team) -> None:
    # A soft hyphen (U+00AD) or zero-width space (U+200B) pasted from a document is
    # invisible; normalise_name turns it into a word break.
    soft = new_case(client, ua_team.headers, **person(None, "Kowal\u00adski"))
    zwsp = new_case(client, ua_team.headers, **person(None, "Moham\u200bmed"))
    assert search(client, ua_team.headers, name="Kowalski") == [soft]
    assert search(client, ua_team.headers, name="Mohammed") == [zwsp]


def test_index_keys_record_their_rules_and_rotate_index_brings_old_ones_up(
    app: Any, client: Any, ua_team: Team, runner: Any
) -> None:
    """An index key made under rules 1 (no `rules` in its plan) is counted as such by
    `keys status`: its entries differ for the values the rules changed, until rotate-index
    recomputes them under the current rules."""
    import json

    from sqlalchemy import update

    from referral_api.crypto.blind_index import RULES
    from referral_api.crypto.models import IndexKey
    from referral_api.extensions import db

    stored = new_case(client, ua_team.headers, **_doc("КВ123456"))

    def by_rules() -> dict[str, int]:
        result = runner.invoke(args=["keys", "status", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["index_keys_by_rules"]  # type: ignore[no-any-return]

    assert by_rules() == {str(RULES): 1}
    with db.session_factory_for(app)() as s:
        plan = json.loads(s.get(IndexKey, (ua_team.org_id, 1)).plan)
        del plan["rules"]
        s.execute(update(IndexKey).values(plan=json.dumps(plan)))
        s.commit()
    assert by_rules() == {"1": 1}
    assert runner.invoke(args=["keys", "rotate-index"]).exit_code == 0
    assert by_rules() == {str(RULES): 1}
    assert search(client, ua_team.headers, document_number="КВ123456") == [stored]
