"""``python -m vault.devenv [--base-url URL]``: give a development checkout its own settings, once.

Writes ``instance/.env`` with freshly generated ``SECRET_KEY`` and ``ENCRYPTION_SECRET``
when neither the environment nor a ``.env`` file provides them. Never overwrites a value:
losing ``ENCRYPTION_SECRET`` would make every stored token undecryptable. On that first run
it also pins ``VAULT_BASE_URL`` to the address ``make run`` serves on (``--base-url``), so
redirect URIs never follow a request's Host header and other Host names are refused;
checkouts set up before keep what they had.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

from vault import PROJECT_ROOT
from vault.config import read_environment

GENERATED = ("SECRET_KEY", "ENCRYPTION_SECRET")
# Addresses that serve every interface: they name no host a browser could use.
WILDCARD_HOSTS = ("0.0.0.0", "::")


def ensure_dev_secrets(instance_path: Path, project_root: Path) -> list[str]:
    """Append any missing generated secret to ``instance/.env``; return the names written."""
    present = read_environment(str(instance_path), str(project_root))
    missing = [name for name in GENERATED if not present.get(name)]
    if not missing:
        return []
    _append(instance_path, [f"{name}={secrets.token_urlsafe(48)}" for name in missing])
    return missing


def ensure_dev_base_url(instance_path: Path, project_root: Path, base_url: str) -> bool:
    """Append ``VAULT_BASE_URL=base_url`` to ``instance/.env`` unless it is set; True if written.

    Not for a wildcard address (``HOST=0.0.0.0``): the URL browsers use is not known then.
    """
    present = read_environment(str(instance_path), str(project_root))
    if present.get("VAULT_BASE_URL") or urlsplit(base_url).hostname in WILDCARD_HOSTS:
        return False
    _append(instance_path, [f"VAULT_BASE_URL={base_url}"])
    return True


def _append(instance_path: Path, lines: list[str]) -> None:
    instance_path.mkdir(parents=True, exist_ok=True)
    env_file = instance_path / ".env"
    existing = env_file.read_text(encoding="utf-8") if env_file.exists() else ""
    separator = "" if not existing or existing.endswith("\n") else "\n"
    # Created owner-readable only: it holds the key to every stored token.
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(separator + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Write what a fresh checkout lacks into ``instance/.env`` and say what was written."""
    parser = argparse.ArgumentParser(prog="python -m vault.devenv")
    parser.add_argument("--base-url", help="the address make run serves on, pinned on first run")
    arguments = parser.parse_args(argv)
    root = Path(PROJECT_ROOT)
    written = ensure_dev_secrets(root / "instance", root)
    if written:
        print(
            f"Generated {' and '.join(written)} into instance/.env (kept private, mode 600). "
            "Back up ENCRYPTION_SECRET: without it stored tokens cannot be decrypted."
        )
    # Only on the first run: a checkout that has run before keeps answering as it did.
    first_run = bool(written)
    if first_run and arguments.base_url and ensure_dev_base_url(
        root / "instance", root, arguments.base_url
    ):
        print(
            f"Set VAULT_BASE_URL={arguments.base_url} in instance/.env: open the vault there, "
            "and register redirect URIs under it (change it to serve elsewhere)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
