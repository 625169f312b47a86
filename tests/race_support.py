"""Running a competing request while another is between two steps (PostgreSQL races)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest


def run_during(
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
    when: Callable[..., bool],
    racer: Callable[[], Any],
    *,
    before: bool = False,
) -> dict[str, Any]:
    """When owner.name is first called with arguments `when` accepts, start `racer` in a
    thread and give it 1.5 s (it should block on our locks), then go on. The racer starts
    after the real call returns, or before it with `before`."""
    real = getattr(owner, name)
    during: dict[str, Any] = {}

    def run() -> None:
        try:
            during["response"] = racer()
        except BaseException as error:  # noqa: BLE001
            during["error"] = error

    def race(*args: Any, **kwargs: Any) -> None:
        if "thread" not in during and when(*args, **kwargs):
            during["thread"] = threading.Thread(target=run, daemon=True)
            during["thread"].start()
            during["thread"].join(timeout=1.5)
            during["waited"] = during["thread"].is_alive()

    def patched(*args: Any, **kwargs: Any) -> Any:
        if before:
            race(*args, **kwargs)
        result = real(*args, **kwargs)
        if not before:
            race(*args, **kwargs)
        return result

    monkeypatch.setattr(owner, name, patched)
    return during
