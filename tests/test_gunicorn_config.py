"""The gunicorn settings the deployment runs with (docs/operations.md, `make run`)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from typing import Any


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
