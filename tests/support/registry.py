"""Loading a providers file written by the test (tests/test_providers.py and others)."""

from __future__ import annotations

from vault.providers.registry import ProviderRegistry


def load_registry(tmp_path, text, environ=None, required=True):
    """The registry read from ``text``, written as ``tmp_path/providers.toml``."""
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return ProviderRegistry.from_file(path, required=required, environ=environ or {})
