"""Small HTTP helpers the service tests share: a GET that never raises, a bounded wait."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def get(url: str) -> tuple[int, str]:
    """(status, body); (0, "") when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def wait_for(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``cond`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")
