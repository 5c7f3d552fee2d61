"""``flask vault seed-demo --connections N``: fake connections with really encrypted tokens."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from vault.cli.demo import BUILT_IN_PROVIDERS, seed_demo
from vault.extensions import db
from vault.models import AuditEvent, Connection, Token
from vault.tokens.store import token_vault


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_seed_demo_uses_built_in_providers_when_none_is_configured(runner, app):
    result = runner.invoke(args=["vault", "seed-demo", "--connections", "200", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "No providers are configured" in result.output
    assert "google, microsoft, voicenter, greeninvoice, whatsapp" in result.output
    assert "Created 200 demo connections" in result.output
    assert count(Connection) == 200
    providers = set(db.session.scalars(select(Connection.provider).distinct()))
    assert providers == set(BUILT_IN_PROVIDERS)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_spread_is_realistic(app):
    seed_demo(600, seed=5)
    statuses = Counter(db.session.scalars(select(Connection.status)))
    assert statuses["active"] > 400
    assert statuses["needs_reconnect"] and statuses["error"] and statuses["disconnected"]
    failing = db.session.scalars(select(Connection).where(Connection.failure_count > 0)).all()
    assert failing and all(c.last_error and c.next_refresh_at for c in failing)
    reconnect = db.session.scalars(select(Connection).where(Connection.status == "needs_reconnect"))
    assert all(c.last_error for c in reconnect)
    disconnected = select(Connection.id).where(Connection.status == "disconnected")
    assert count(select(Token).where(Token.connection_id.in_(disconnected)).subquery()) == 0
    expiries = db.session.scalars(select(Token.expires_at).where(Token.kind == "access")).all()
    now = token_vault.clock()
    assert any(e and e < now for e in expiries) and any(e and e > now for e in expiries)
    assert any(e is None for e in expiries)
    assert db.session.scalar(select(func.count()).where(Token.kind == "refresh",
                                                        Token.expires_at.is_not(None)))
    assert count(AuditEvent) > 600


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_tokens_are_encrypted_in_place_under_the_current_key(app):
    seed_demo(60, seed=6)
    tokens = db.session.scalars(select(Token)).all()
    assert {token.key_id for token in tokens} == {token_vault.cipher.current_key_id}
    for token in tokens:
        value = token_vault.decrypt(token)  # the AAD binds it to its connection and kind
        assert "demo" in value and value.encode() not in bytes(token.ciphertext)


def test_running_again_adds_connections_with_their_own_subjects(runner, app):
    for _ in range(2):
        assert runner.invoke(args=["vault", "seed-demo", "--connections", "30"]).exit_code == 0
    subjects = db.session.scalars(select(Connection.account_subject)).all()
    assert len(subjects) == len(set(subjects)) == 60
    assert len({subject.split("-")[1] for subject in subjects}) == 2  # two run ids
    help_text = runner.invoke(args=["vault", "seed-demo", "--help"]).output
    assert "Running it again ADDS" in help_text


def test_configured_providers_are_used(app_config, providers_file, make_app):
    providers_file.write_text('[voicenter]\npreset = "voicenter"\n[support]\npreset = "whatsapp"\n',
                              encoding="utf-8")
    configured = make_app()
    with configured.app_context():
        db.create_all()
        try:
            output = configured.test_cli_runner().invoke(
                args=["vault", "seed-demo", "--connections", "40"]).output
            assert "No providers are configured" not in output
            assert set(db.session.scalars(select(Connection.provider).distinct())) == {
                "voicenter", "support"}
        finally:
            db.session.remove()
            db.drop_all()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_ten_thousand_connections_take_well_under_a_minute(app):
    started = time.perf_counter()
    report = seed_demo(10_000, seed=7)
    seconds = time.perf_counter() - started
    assert report.connections == count(Connection) == 10_000
    assert seconds < 30, f"{seconds:.1f} s"
