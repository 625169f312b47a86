"""Gunicorn settings for serving the API: `gunicorn -c python:referral_api.gunicorn_config …`.

Only what the application itself needs; binding, workers and the rest stay on the command
line of the deployment (docs/operations.md).
"""

from __future__ import annotations

import gc
from typing import Any

# Gunicorn writes no access log unless told to (`--access-logfile`). If an operator turns it
# on, its lines carry the path alone: gunicorn's default format has the request line with its
# query string (search terms: names, phone numbers, birth dates) and the Referer (a front
# end's search page, with its own). No client address or user agent either: the app's own
# request log (request id, route, status, time) is the record to use.
access_log_format = '%(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms'


def post_worker_init(worker: Any) -> None:
    """Freeze what start-up allocated (~190,000 objects: the app, SQLAlchemy's mappers,
    marshmallow schemas, the OpenAPI document, ...), which lives as long as the worker.

    Python's full collections walk every tracked object; with these in view one took ~100 ms
    under load (bench/README.md, run Z), a stall of every request on the worker about every
    30 s. Frozen, they are never walked again (the same collections: ~4 ms) and never freed,
    which they would not be anyway.
    """
    gc.freeze()
