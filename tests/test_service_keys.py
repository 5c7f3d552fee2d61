"""``flask service-keys create|list|revoke`` and key authentication."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select, text

from tests.support.refresh_fixtures import both_backends, postgresql_only
from vault.models import AuditEvent, ServiceKey
from vault.services import service_keys

pytestmark = pytest.mark.shared_postgres_database  # one database for the module


@pytest.fixture
def providers(providers_file):
    providers_file.write_text(
        '[voicenter]\npreset = "voicenter"\n[whatsapp]\npreset = "whatsapp"\n', encoding="utf-8"
    )


def create(runner, *args):
    return runner.invoke(args=["service-keys", "create", *args])


@both_backends
def test_create_prints_the_key_once_as_the_last_line_and_stores_its_hash(providers, runner, db):
    result = create(runner, "billing", "--provider", "voicenter")
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("tvk_") and len(key) >= 40
    row = db.session.scalar(select(ServiceKey))
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(row.key_prefix) and len(row.key_prefix) < 16
    assert row.allowed_providers == ["voicenter"]
    # The key itself is in no column of any table.
    for table in ("service_keys", "audit_events"):
        for values in db.session.execute(text(f"SELECT * FROM {table}")):
            assert not any(key in str(value) for value in values)
    assert db.session.scalar(select(AuditEvent.action)) == "service_key.created"
    assert service_keys.authenticate(key).allowed_providers == ("voicenter",)


@postgresql_only
def test_list_shows_prefix_providers_and_state_never_the_key(providers, runner, db):
    key = create(runner, "billing").output.strip().splitlines()[-1]
    create(runner, "chat", "--provider", "whatsapp", "--provider", "voicenter")
    output = runner.invoke(args=["service-keys", "list"]).output
    assert key not in output
    lines = output.strip().splitlines()
    assert lines[0].startswith("billing\ttvk_") and "\t*\t" in lines[0]
    assert "last used never" in lines[0] and lines[0].endswith("active")
    assert lines[1].startswith("chat\t") and "voicenter,whatsapp" in lines[1]


@both_backends
def test_revoke_stops_the_key_at_once(providers, runner, db):
    key = create(runner, "billing").output.strip().splitlines()[-1]
    assert service_keys.authenticate(key) is not None
    result = runner.invoke(args=["service-keys", "revoke", "billing"])
    assert result.exit_code == 0 and "Revoked" in result.output
    assert service_keys.authenticate(key) is None
    assert "revoked" in runner.invoke(args=["service-keys", "list"]).output
    again = runner.invoke(args=["service-keys", "revoke", "billing"])
    assert again.exit_code == 1 and "revoked already" in again.output
    missing = runner.invoke(args=["service-keys", "revoke", "nobody"])
    assert missing.exit_code == 1 and "no service key" in missing.output


@postgresql_only
def test_create_refuses_duplicates_and_unknown_providers(providers, runner, db):
    assert create(runner, "billing").exit_code == 0
    duplicate = create(runner, "billing")
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    unknown = create(runner, "other", "--provider", "nope")
    assert unknown.exit_code == 1 and "unknown provider 'nope'" in unknown.output
    assert db.session.scalar(select(ServiceKey.name).where(ServiceKey.name == "other")) is None


@postgresql_only
def test_authenticate_rejects_malformed_and_unknown_keys(providers, runner, db):
    for presented in (None, "", "Bearer x", "tvk_unknown", "tvk_" + "a" * 300):
        assert service_keys.authenticate(presented) is None


@postgresql_only
def test_last_used_moves_at_most_once_a_minute(providers, runner, db):
    key = create(runner, "billing").output.strip().splitlines()[-1]
    service_keys.authenticate(key)
    first = db.session.scalar(select(ServiceKey.last_used_at))
    assert first is not None
    service_keys.authenticate(key)
    db.session.expire_all()
    assert db.session.scalar(select(ServiceKey.last_used_at)) == first
