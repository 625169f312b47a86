"""Gunicorn settings for serving the API: `gunicorn -c python:referral_api.gunicorn_config …`.

Only what the application itself needs; binding, workers and the rest stay on the command
line of the deployment (docs/operations.md).
"""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Freeze what start-up allocated (~190,000 objects: the app, SQLAlchemy's mappers,
    marshmallow schemas, the OpenAPI document, ...), which lives as long as the worker.

    Python's full collections walk every tracked object; with these in view one took ~100 ms
    under load (bench/README.md, run Z), a stall of every request on the worker about every
    30 s. Frozen, they are never walked again (the same collections: ~4 ms) and never freed,
    which they would not be anyway.
    """
    gc.freeze()
