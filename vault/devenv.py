"""``python -m vault.devenv``: give a development checkout its own secrets, once.

Writes ``instance/.env`` with freshly generated ``SECRET_KEY`` and ``ENCRYPTION_SECRET``
when neither the environment nor a ``.env`` file provides them. Never overwrites a value:
losing ``ENCRYPTION_SECRET`` would make every stored token undecryptable.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from vault import PROJECT_ROOT
from vault.config import read_environment

GENERATED = ("SECRET_KEY", "ENCRYPTION_SECRET")


def ensure_dev_secrets(instance_path: Path, project_root: Path) -> list[str]:
    """Append any missing generated secret to ``instance/.env``; return the names written."""
    present = read_environment(str(instance_path), str(project_root))
    missing = [name for name in GENERATED if not present.get(name)]
    if not missing:
        return []
    instance_path.mkdir(parents=True, exist_ok=True)
    env_file = instance_path / ".env"
    existing = env_file.read_text(encoding="utf-8") if env_file.exists() else ""
    lines = [f"{name}={secrets.token_urlsafe(48)}" for name in missing]
    separator = "" if not existing or existing.endswith("\n") else "\n"
    # Created owner-readable only: it holds the key to every stored token.
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(separator + "\n".join(lines) + "\n")
    return missing


def main() -> int:
    root = Path(PROJECT_ROOT)
    written = ensure_dev_secrets(root / "instance", root)
    if written:
        print(
            f"Generated {' and '.join(written)} into instance/.env (kept private, mode 600). "
            "Back up ENCRYPTION_SECRET: without it stored tokens cannot be decrypted."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
