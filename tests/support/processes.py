"""Running ``flask --app app ...`` as a real process on a test's database and providers file."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.conftest import TEST_ENCRYPTION_SECRET, TEST_SECRET_KEY
from vault import PROJECT_ROOT


def process_environment(app_config: dict) -> dict[str, str]:
    """The environment of a process sharing ``app_config``'s database and providers file."""
    passed = {
        name: str(app_config[name])
        for name in ("VAULT_PROVIDER_TIMEOUT_SECONDS", "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS")
        if name in app_config
    }
    return {
        **os.environ,
        "SECRET_KEY": TEST_SECRET_KEY,
        "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
        "DATABASE_URL": app_config["DATABASE_URL"],
        "VAULT_PROVIDERS_FILE": str(app_config["VAULT_PROVIDERS_FILE"]),
        **passed,
    }


def flask_process(app_config: dict, *args: str, **popen: Any) -> subprocess.Popen:
    """``flask --app app ARGS`` on the test's database; output in ``.stdout`` unless redirected."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=PROJECT_ROOT,
        env=process_environment(app_config),
        **(options | popen),
    )
