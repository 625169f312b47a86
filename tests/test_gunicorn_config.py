"""The gunicorn settings the deployment runs with (docs/operations.md, `make run`)."""

from __future__ import annotations

import gc
import io
import json
import logging
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from gunicorn.config import Config
from gunicorn.glogging import Logger

from referral_api import gunicorn_config


def test_a_worker_freezes_what_start_up_allocated(app_config: dict[str, Any]) -> None:
    """After a worker has loaded the app, its start-up objects are out of the collector's
    sight (run in a process of its own: freezing is for the worker's whole life)."""
    script = (
        "import gc\n"
        "from referral_api import create_app\n"
        "from referral_api.gunicorn_config import post_worker_init\n"
        "import json, sys\n"
        "create_app(json.loads(sys.argv[1]))\n"
        "assert gc.get_freeze_count() == 0\n"
        "post_worker_init(None)\n"
        "print(gc.get_freeze_count())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(app_config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert int(completed.stdout.strip().splitlines()[-1]) > 50_000
    assert gc.get_freeze_count() == 0  # this process is left alone


def test_an_access_log_turned_on_never_prints_query_strings_or_referers() -> None:
    """Rendered by gunicorn's own logger with the shipped format, as `--access-logfile -`
    would print it: the search terms of the query and of the Referer are not there."""
    config = Config()
    config.set("accesslog", "-")
    config.set("access_log_format", gunicorn_config.access_log_format)
    logger = Logger(config)
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    logger.access_log.addHandler(handler)
    query = "name=Olena%20Kovalenko&phone=%2B380501234567"
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/api/v1/cases?{query}",
        "PATH_INFO": "/api/v1/cases",
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "HTTP_REFERER": f"https://caseworker.example/search?{query}",
        "HTTP_USER_AGENT": "Browser/1.0",
    }
    response = SimpleNamespace(status="200 OK", sent=512, headers=[])
    request = SimpleNamespace(headers=[("REFERER", environ["HTTP_REFERER"])])
    try:
        logger.access(response, request, environ, timedelta(milliseconds=7))
    finally:
        logger.access_log.removeHandler(handler)
    line = printed.getvalue()
    assert '"GET /api/v1/cases HTTP/1.1" 200 512 7ms' in line
    for secret in ("Olena", "Kovalenko", "380501234567", "name=", "203.0.113.7", "search?"):
        assert secret not in line
