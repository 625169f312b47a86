"""The OpenAPI document as committed in openapi/openapi.json (sorted keys, stable bytes)."""

from __future__ import annotations

import json

from flask import Flask


def spec_json(app: Flask) -> str:
    from referral_api.extensions import api

    with app.app_context():
        document = api.spec.to_dict()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
