"""The connection page's Refresh button: POST /connections/<id>/refresh, over real HTTP to
tests/support/provider_stub.py, each outcome told as a flash message on the detail page."""

from __future__ import annotations

import re

from sqlalchemy import select

from tests.support.builders import post_form
from tests.support.refresh_fixtures import load, make_connection
from vault.extensions import db
from vault.models import AuditEvent, Connection


def refresh(client, connection_id: int):
    return post_form(client, f"/connections/{connection_id}/refresh",
                     token_from=f"/connections/{connection_id}", follow_redirects=True)


def flash(response) -> str:
    html = response.get_data(as_text=True)
    match = re.search(r'<p class="flash flash-(\w+)" role="\w+">([^<]*)</p>', html)
    assert match, "no flash message"
    return f"{match.group(1)}: {match.group(2)}"


def test_refresh_stores_a_new_token_and_says_so(vault_app, admin_client, admin_user, stub):
    connection_id = make_connection(stub, expires_in=3000)
    response = refresh(admin_client, connection_id)
    assert response.request.path == f"/connections/{connection_id}"
    assert flash(response) == "success: Refreshed: a new access token is stored."
    assert stub.count() == 1  # forced, although the token was still fresh
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "token.refreshed"))
    assert (event.actor, event.connection_id) == (admin_user.email, connection_id)
    assert "token.refreshed" in response.get_data(as_text=True)  # the history shows it


def test_a_refused_grant_says_needs_reconnect_with_the_reason(vault_app, admin_client, stub):
    connection_id = make_connection(stub)
    stub.fail_next(400, {"error": "invalid_grant", "error_description": "Token has been revoked."})
    message = flash(refresh(admin_client, connection_id))
    assert message.startswith("error: Needs reconnect: the provider refused the grant")
    assert "Token has been revoked" in message
    assert load(connection_id).status == "needs_reconnect"


def test_a_provider_outage_keeps_the_tokens_and_says_when_it_retries(vault_app, admin_client, stub):
    connection_id = make_connection(stub, expires_in=3000)
    stub.fail_next(503, "<html>down for maintenance</html>")
    message = flash(refresh(admin_client, connection_id))
    assert message.startswith("warning: The provider is unavailable:")
    assert "The current token is still valid." in message and "Next try after" in message
    assert load(connection_id).status == "active"


def test_an_api_key_with_nothing_to_refresh_gets_a_clear_message(vault_app, admin_client):
    response = post_form(admin_client, "/connect/voicenter/credentials",
                         {"label": "Main line", "api_key": "vc-0123456789-abcdef-WXYZ"},
                         token_from="/connect/voicenter/credentials")
    assert response.status_code == 302
    connection = db.session.scalars(select(Connection)).one()
    page = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    assert "Refresh now" not in page and "its API key is used as it is" in page
    message = flash(refresh(admin_client, connection.id))
    assert message == ("info: Nothing was refreshed: its API key is used as it is; replace "
                       "the credentials when they change.")


def test_a_disconnected_connection_is_not_refreshed(vault_app, admin_client, stub):
    connection_id = make_connection(stub, status="disconnected")
    assert flash(refresh(admin_client, connection_id)).startswith(
        "info: This connection is disconnected")
    assert stub.count() == 0


def test_only_admins_may_refresh_and_only_with_a_csrf_token(
    vault_app, admin_client, viewer_client, stub
):
    connection_id = make_connection(stub)
    denied = post_form(viewer_client, f"/connections/{connection_id}/refresh",
                       token_from=f"/connections/{connection_id}")
    assert denied.status_code == 403
    assert admin_client.post(f"/connections/{connection_id}/refresh").status_code == 400
    assert admin_client.post("/connections/999999/refresh").status_code in (400, 404)
    assert stub.count() == 0


def test_manual_refreshes_are_rate_limited_per_user(vault_app, admin_client, stub):
    connection_id = make_connection(stub)
    path = f"/connections/{connection_id}"
    answers = [post_form(admin_client, f"{path}/refresh", token_from=path).status_code
               for _ in range(11)]
    assert answers == [302] * 10 + [429]
    assert stub.count() == 10


def test_refresh_all_expiring_audits_the_admin_who_ran_it(vault_app, admin_client, admin_user,
                                                          stub):
    due = [make_connection(stub, subject=f"due-{n}", expires_in=60) for n in range(3)]
    response = post_form(admin_client, "/health/refresh-due", {"within": "3600"},
                         token_from="/health", follow_redirects=True)
    assert flash(response).startswith("success: Refresh of everything expiring within 1 hour: "
                                      "Refreshed 3, failed 0")
    events = db.session.execute(
        select(AuditEvent.connection_id, AuditEvent.actor, AuditEvent.actor_user_id)
        .where(AuditEvent.action == "token.refreshed")
    ).all()
    assert sorted(events) == [(c, admin_user.email, admin_user.id) for c in sorted(due)]
