"""Docs generated from code are current."""

from pathlib import Path

from referral_api.access.table import render_role_table

ROOT = Path(__file__).resolve().parent.parent


def test_roles_doc_is_generated_from_the_role_table():
    committed = (ROOT / "docs" / "roles.md").read_text(encoding="utf-8")
    assert committed == render_role_table(), "docs/roles.md is stale: run `make docs`"
