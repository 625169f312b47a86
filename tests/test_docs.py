"""Docs generated from code are current."""

import re
from pathlib import Path

from referral_api.access.table import render_role_table

ROOT = Path(__file__).resolve().parent.parent


def test_roles_doc_is_generated_from_the_role_table():
    committed = (ROOT / "docs" / "roles.md").read_text(encoding="utf-8")
    assert committed == render_role_table(), "docs/roles.md is stale: run `make docs`"


def test_every_environment_variable_the_settings_read_is_documented():
    source = (ROOT / "referral_api" / "settings.py").read_text(encoding="utf-8")
    read = set(re.findall(r'"((?:REFERRAL_API_[A-Z0-9_]+)|DATABASE_URL)"', source))
    assert len(read) > 15  # the pattern still finds them
    documented = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = sorted(name for name in read if f"`{name}`" not in documented)
    assert missing == [], f"undocumented in docs/operations.md: {missing}"
