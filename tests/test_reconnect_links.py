"""Reconnect and connect links, the service: issuing, hashing, expiry, revocation, consuming."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from vault.models import AccessLink, AuditEvent, Connection, ConnectionStatus, utcnow
from vault.services import reconnect_links
from vault.services.connections import Account
from vault.services.reconnect_links import LinkError

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

NOW = utcnow().replace(microsecond=0)


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(
        '[stub]\ntitle = "Stub IdP"\ntype = "oidc"\n'
        'server_metadata_url = "https://idp.example.com/.well-known/openid-configuration"\n'
        'client_id = "vault"\nclient_secret = "vault-client-secret-value"\n'
        'scope = "openid email"\n\n[voicenter]\npreset = "voicenter"\n'
    )
    return {**app_config, "VAULT_BASE_URL": "https://vault.example.com"}


@pytest.fixture
def broken(db):
    connection = Connection(
        provider="stub", account_subject="sub-1", account_email="jane@example.com",
        status=ConnectionStatus.NEEDS_RECONNECT.value,
    )
    db.session.add(connection)
    db.session.commit()
    return connection


def token_of(url: str) -> str:
    assert url.startswith("https://vault.example.com/reconnect/")
    return url.rsplit("/", 1)[1]


def test_a_link_is_random_stored_as_a_hash_and_audited_without_the_token(app, db, broken):
    url = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    other = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.commit()
    token = token_of(url)
    assert len(token) >= 43 and url != other
    link = db.session.scalars(select(AccessLink).order_by(AccessLink.id)).first()
    assert link.token_hash != token and token not in link.token_hash
    assert (link.kind, link.provider, link.connection_id) == ("reconnect", "stub", broken.id)
    assert link.created_by == "alerts" and link.created_by_id is None
    assert link.expires_at == NOW + timedelta(hours=72)
    events = db.session.scalars(select(AuditEvent)).all()
    assert [e.action for e in events] == ["reconnect_link.created"] * 2
    assert all(token not in f"{e.target} {e.detail} {e.actor}" for e in events)
    assert events[0].actor == "alerts" and events[0].connection_id == broken.id
    assert reconnect_links.open_link(token, NOW).id == link.id


def test_the_caller_commits_the_link_with_its_own_transaction(app, db, broken):
    url = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.rollback()
    with pytest.raises(LinkError) as refused:
        reconnect_links.open_link(token_of(url), NOW)
    assert refused.value.status == 404


def test_lifetime_comes_from_the_setting(make_app, app, broken):
    other = make_app(VAULT_RECONNECT_LINK_HOURS=2)
    with other.app_context():
        from vault.extensions import db

        connection = db.session.get(Connection, broken.id)
        url = reconnect_links.issue_reconnect_link(connection, created_by=None, now=NOW)
        db.session.commit()
        link = reconnect_links.open_link(token_of(url), NOW)
        assert link.expires_at == NOW + timedelta(hours=2)
        with pytest.raises(LinkError, match="expired"):
            reconnect_links.open_link(token_of(url), NOW + timedelta(hours=2))
        db.session.remove()


def test_refused_for_active_connections_and_providers_without_a_browser_flow(app, db, broken):
    broken.status = ConnectionStatus.ACTIVE.value
    with pytest.raises(LinkError, match="is active"):
        reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    pasted = Connection(provider="voicenter", account_subject="main", status="needs_reconnect")
    db.session.add(pasted)
    db.session.flush()
    with pytest.raises(LinkError):
        reconnect_links.issue_reconnect_link(pasted, created_by=None, now=NOW)


def test_used_expired_revoked_and_reconnected_links_say_why(app, db, broken):
    from vault.services.accounts import create_user

    admin = create_user("admin@example.com", "admin", "correct horse battery")
    tokens = [
        token_of(reconnect_links.issue_reconnect_link(broken, created_by=admin.email, now=NOW))
        for _ in range(3)
    ]
    db.session.commit()
    assert db.session.scalars(select(AccessLink)).first().created_by_id == admin.id
    with pytest.raises(LinkError, match="expired"):
        reconnect_links.open_link(tokens[0], NOW + timedelta(hours=72))
    reconnect_links.revoke(reconnect_links.open_link(tokens[1], NOW), actor=admin, now=NOW)
    with pytest.raises(LinkError, match="withdrawn"):
        reconnect_links.open_link(tokens[1], NOW)
    with pytest.raises(LinkError):
        reconnect_links.open_link("x" * 43, NOW)
    with pytest.raises(LinkError):
        reconnect_links.open_link("../etc", NOW)
    broken.status = ConnectionStatus.ACTIVE.value
    with pytest.raises(LinkError, match="connected again"):
        reconnect_links.open_link(tokens[2], NOW)


def test_mask_email(database_url):
    assert reconnect_links.mask_email("jane.doe@example.com") == "j***@example.com"
    assert reconnect_links.mask_email("x") == "x***"


def _complete(db, link, provider, subject, *, now=NOW, claims=None):
    account = Account(subject, "jane@example.com", "Jane")
    token = {"access_token": "at-" + "a" * 30, "refresh_token": "rt-" + "r" * 30,
             "expires_in": 3600}
    return reconnect_links.complete(
        link.id, provider, token, claims or {"sub": subject, "email_verified": True},
        account, now,
    )


def test_completing_consumes_the_link_once_for_the_same_account_only(app, db, broken):
    provider = app.extensions["providers"].get("stub")
    url = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.commit()
    link = reconnect_links.open_link(token_of(url), NOW)
    with pytest.raises(LinkError, match="another account") as refused:
        _complete(db, link, provider, "someone-else")
    assert refused.value.status == 403
    db.session.rollback()
    connection = _complete(db, link, provider, "sub-1")
    db.session.commit()
    assert connection.id == broken.id and connection.status == "active"
    assert db.session.get(AccessLink, link.id).used_at is not None
    # The connection is active again, and the link used: a second completion is refused.
    connection.status = ConnectionStatus.NEEDS_RECONNECT.value
    db.session.commit()
    with pytest.raises(LinkError, match="already used"):
        _complete(db, link, provider, "sub-1")


def test_a_link_revoked_or_expired_after_opening_is_not_consumed(app, db, broken):
    from vault.services.accounts import create_user

    admin = create_user("admin@example.com", "admin", "correct horse battery")
    provider = app.extensions["providers"].get("stub")
    first = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    second = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.commit()
    link = reconnect_links.open_link(token_of(first), NOW)
    reconnect_links.revoke(link, actor=admin, now=NOW)
    db.session.commit()
    with pytest.raises(LinkError, match="withdrawn"):
        _complete(db, link, provider, "sub-1")
    db.session.rollback()
    late = reconnect_links.open_link(token_of(second), NOW)
    with pytest.raises(LinkError, match="expired"):
        _complete(db, late, provider, "sub-1", now=NOW + timedelta(hours=73))


def test_connect_links_want_the_expected_verified_email(app, db):
    from vault.services.accounts import create_user

    admin = create_user("admin@example.com", "admin", "correct horse battery")
    db.session.commit()
    provider = app.extensions["providers"].get("stub")
    with pytest.raises(LinkError):
        reconnect_links.issue_connect_link("stub", "not an address", created_by=admin.email,
                                           now=NOW)
    url = reconnect_links.issue_connect_link("stub", "Jane@Example.com", created_by=admin.email,
                                             now=NOW)
    db.session.commit()
    link = reconnect_links.open_link(token_of(url), NOW)
    assert link.expected_email == "jane@example.com"
    with pytest.raises(LinkError, match="verified"):
        _complete(db, link, provider, "new-sub", claims={"sub": "new-sub"})
    db.session.rollback()
    connection = _complete(db, link, provider, "new-sub")
    db.session.commit()
    assert connection.account_subject == "new-sub" and connection.created_by_id == admin.id
    assert db.session.get(AccessLink, link.id).connection_id == connection.id
    actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["connect_link.created", "connection.created", "connect_link.used"]


def test_two_completions_at_once_consume_the_link_once(app, db, broken):
    import threading

    provider = app.extensions["providers"].get("stub")
    url = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.commit()
    link_id = reconnect_links.open_link(token_of(url), NOW).id
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt():
        with app.app_context():
            link = db.session.get(AccessLink, link_id)
            start.wait()
            try:
                _complete(db, link, provider, "sub-1")
                db.session.commit()
                outcomes.append("stored")
            except LinkError as error:
                db.session.rollback()
                outcomes.append(f"refused {error.status}")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused 410", "stored"]
    db.session.expire_all()
    used = db.session.scalars(select(AuditEvent.action).where(
        AuditEvent.action == "reconnect_link.used")).all()
    assert len(used) == 1


def test_a_reconnect_by_other_means_kills_open_links_for_good(app, db, broken):
    """A link is for one breakage: reconnected meanwhile, it stays dead when the connection
    breaks again (it does not come back to life with the needs-reconnect status)."""
    from vault.services.connections import record_grant

    provider = app.extensions["providers"].get("stub")
    urls = [reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
            for _ in range(2)]
    db.session.commit()
    used = reconnect_links.open_link(token_of(urls[0]), NOW)
    _complete(db, used, provider, "sub-1")  # through one link: the other dies with it
    db.session.commit()
    other = reconnect_links.find(token_of(urls[1]))
    assert other.revoked_at is not None and db.session.get(AccessLink, used.id).used_at
    assert reconnect_links.state_of(other, NOW) == "revoked"

    broken.status = ConnectionStatus.NEEDS_RECONNECT.value
    url = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.commit()
    record_grant(provider, {"access_token": "at-" + "b" * 30}, Account("sub-1", None, None),
                 None)  # reconnected by an admin in the dashboard, not through the link
    broken.status = ConnectionStatus.NEEDS_RECONNECT.value  # and broken again later
    db.session.commit()
    for token in (token_of(url), token_of(urls[1])):
        with pytest.raises(LinkError, match="reconnected or switched off"):
            reconnect_links.open_link(token, NOW)
    events = db.session.scalars(select(AuditEvent.detail).where(
        AuditEvent.action == "reconnect_link.revoked")).all()
    assert any("reconnected" in (e or "") for e in events)


def test_disconnecting_kills_open_links(app, db, broken):
    from vault.services.accounts import create_user
    from vault.services.connections import disconnect

    admin = create_user("admin@example.com", "admin", "correct horse battery")
    url = reconnect_links.issue_reconnect_link(broken, created_by=None, now=NOW)
    db.session.commit()
    disconnect(broken, None, admin)
    broken.status = ConnectionStatus.NEEDS_RECONNECT.value  # even if it were broken again
    db.session.commit()
    with pytest.raises(LinkError, match="reconnected or switched off"):
        reconnect_links.open_link(token_of(url), NOW)
