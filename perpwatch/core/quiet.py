"""Keep Prefect quiet and offline-friendly for a CLI user (see docs/stack.md)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_TASKS_DEFAULT_NO_CACHE": "true",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def configure() -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    for name in ("great_expectations", "prefect", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
