"""Reconnect and connect links: the owner's pages (no vault account) and the admin's buttons.

``GET /reconnect/<token>`` shows which provider and account a link is for and one button;
its POST starts the usual OAuth flow, remembering the link in the flow's server-side state;
:func:`finish_flow` completes it on the Connect callback, without a staff session. These pages
use a layout of their own that shows nothing else of the vault, and are throttled per client
address. Admins create links on a connection's page and on the links page, and revoke them.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Response
from wtforms import EmailField, SelectField, SubmitField
from wtforms.validators import DataRequired, Length

from vault.extensions import db
from vault.models import AccessLink, Connection, LinkKind, utcnow
from vault.oauth import identity
from vault.oauth.clients import ProviderClient, connect_client, redirect_uri
from vault.providers.registry import Provider
from vault.services import reconnect_links, throttle
from vault.services.connections import ConnectError, account_from_claims
from vault.services.reconnect_links import LinkError
from vault.web.security import admin_required

bp = Blueprint("reconnect", __name__)

# The flow state's key for the link a flow was started from (see identity.start).
_LINK = "link"
TOO_MANY = "Too many requests came from this address. Wait a few minutes, then open the link again."


class BeginForm(FlaskForm):
    submit = SubmitField("Continue")


class ConnectLinkForm(FlaskForm):
    provider = SelectField("Provider", validators=[DataRequired()])
    email = EmailField("E-mail of the account to connect",
                       validators=[DataRequired(), Length(max=320)])
    submit = SubmitField("Create connect link")


# -- the owner's pages ------------------------------------------------------------------------


@bp.get(reconnect_links.LINK_PATH + "<token>")
def landing(token: str):
    """Which provider and account the link is for, and the one button that goes on."""
    link = _usable_link(token)
    if not isinstance(link, AccessLink):
        return link
    reconnect_links.record_opened(link)
    db.session.commit()
    return render_template("reconnect/landing.html", link=reconnect_links.describe(link),
                           form=BeginForm())


@bp.post(reconnect_links.LINK_PATH + "<token>")
def begin(token: str):
    """Start the provider's sign-in for the link's account (PKCE, state, nonce, ``iss``)."""
    link = _usable_link(token)
    if not isinstance(link, AccessLink):
        return link
    if not BeginForm().validate_on_submit():
        abort(400, "The form expired; open the link again.")
    provider = current_app.extensions["providers"].get(link.provider)
    callback_uri = redirect_uri("connect.callback", provider_key=provider.key)
    try:
        return identity.start(connect_client(provider), callback_uri, remember={_LINK: link.id})
    except identity.IdentityError as error:
        return _problem(str(error), error.status)


def link_of_flow(client: ProviderClient) -> int | None:
    """The link the flow answered on this request was started from (None: not from a link)."""
    remembered = identity.remembered(client) or {}
    link_id = remembered.get(_LINK)
    return link_id if isinstance(link_id, int) else None


def finish_flow(provider: Provider, client: ProviderClient, link_id: int):
    """The Connect callback of a flow started from link ``link_id``: no staff session needed.

    Stores the tokens only for the link's account, consuming the link in the same
    transaction; anything else stores nothing and says why.
    """
    refused = _throttled()
    if refused is not None:
        identity.discard_state(client)
        return refused
    try:
        authorization = identity.complete(client)
        account = account_from_claims(authorization.claims)
    except (identity.IdentityError, ConnectError) as error:
        status = error.status if isinstance(error, identity.IdentityError) else 400
        return _refused(link_id, f"{error} Nothing was stored.", status)
    try:
        connection = reconnect_links.complete(
            link_id, provider, authorization.token, authorization.claims, account, utcnow()
        )
        db.session.commit()
    except LinkError as error:
        db.session.rollback()
        return _refused(link_id, str(error), error.status)
    except IntegrityError:
        db.session.rollback()
        return _refused(link_id, "Another sign-in with this account finished at the same "
                        "moment. Nothing was stored by this one.", 409)
    shown = (reconnect_links.mask_email(connection.account_email)
             if connection.account_email else connection.account_name)
    # Off the callback URL (its code and state) at once; a reload then shows the same page
    # without running the callback again. The flash holds the masked account, no secret.
    flash(f"Your {provider.title} account{f' {shown}' if shown else ''} is connected.",
          "success")
    return redirect(url_for("reconnect.done"))


@bp.get(reconnect_links.LINK_PATH + "done")
def done():
    """The thank-you page after a link was used: nothing else of the vault."""
    return render_template("reconnect/done.html")


def _usable_link(token: str) -> AccessLink | ResponseReturnValue:
    """The link of this request's token, or the page that says why not (throttled first)."""
    refused = _throttled()
    if refused is not None:
        return refused
    try:
        return reconnect_links.open_link(token, utcnow())
    except LinkError as error:
        known = error.status != 404
        if known:  # only links that exist are worth a row; unknown tokens are noise
            link = reconnect_links.find(token)
            reconnect_links.record_refused(link, str(error))
            db.session.commit()
        return _problem(str(error), error.status)


def _refused(link_id: int, message: str, status: int):
    link = db.session.get(AccessLink, link_id)
    reconnect_links.record_refused(link, message)
    db.session.commit()
    return _problem(message, status)


def _problem(message: str, status: int) -> ResponseReturnValue:
    return render_template("reconnect/problem.html", message=message), status


def _throttled() -> Response | None:
    reservation = throttle.reserve(
        (throttle.LINK_PAGES_PER_ADDRESS, request.remote_addr or "unknown")
    )
    if reservation.granted:
        return None
    response = make_response(_problem(TOO_MANY, 429))
    response.headers["Retry-After"] = str(reservation.retry_after)
    return response


# -- the admin's side -------------------------------------------------------------------------


@bp.post("/connections/<int:connection_id>/reconnect-link")
@admin_required
def create_reconnect_link(connection_id: int):
    """Make a reconnect link for a connection that needs one; its URL is shown this once."""
    connection = db.get_or_404(Connection, connection_id)
    if not BeginForm().validate_on_submit():
        abort(400, "The form expired; reload the page and try again.")
    try:
        url = reconnect_links.issue_reconnect_link(
            connection, created_by=current_user.email, now=utcnow()
        )
        db.session.commit()
    except LinkError as error:
        db.session.rollback()
        abort(error.status, str(error))
    return render_template(
        "reconnect/created.html", url=url, kind=LinkKind.RECONNECT.value,
        back=url_for("connections.detail", connection_id=connection.id),
        hours=current_app.config["VAULT_RECONNECT_LINK_HOURS"],
    ), 201


@bp.route("/links", methods=["GET", "POST"])
def links():
    """Connect links: the list (staff), and a form that makes one (admins)."""
    form = ConnectLinkForm()
    form.provider.choices = [
        (provider.key, provider.title) for provider in current_app.extensions["providers"]
        if provider.is_oauth and not provider.uses_client_credentials
        and not provider.uses_device_flow  # no redirect flow for a link to start
    ]
    if request.method == "GET" and request.args.get("provider"):
        form.provider.data = request.args["provider"]  # from a provider's "Connect link"
    if request.method == "POST":
        if not current_user.is_admin:
            abort(403, "Only an administrator may do this.")
        if form.validate_on_submit():
            try:
                url = reconnect_links.issue_connect_link(
                    form.provider.data, form.email.data, created_by=current_user.email,
                    now=utcnow(),
                )
                db.session.commit()
            except LinkError as error:
                db.session.rollback()
                form.email.errors = [str(error)]
            else:
                return render_template(
                    "reconnect/created.html", url=url, kind=LinkKind.CONNECT.value,
                    back=url_for("reconnect.links"),
                    hours=current_app.config["VAULT_RECONNECT_LINK_HOURS"],
                ), 201
    now = utcnow()
    rows = [(link, reconnect_links.state_of(link, now))
            for link in reconnect_links.connect_links()]
    status = 400 if form.errors else 200
    return render_template("reconnect/links.html", form=form, rows=rows,
                           revoke_form=BeginForm()), status


@bp.post("/links/<int:link_id>/revoke")
@admin_required
def revoke(link_id: int):
    """Withdraw a link that has not been used; back to where it is listed."""
    link = db.get_or_404(AccessLink, link_id)
    if not BeginForm().validate_on_submit():
        abort(400, "The form expired; reload the page and try again.")
    try:
        reconnect_links.revoke(link, actor=current_user._get_current_object(), now=utcnow())
        db.session.commit()
    except LinkError as error:
        db.session.rollback()
        abort(error.status, str(error))
    if link.kind == LinkKind.RECONNECT.value and link.connection_id is not None:
        return redirect(url_for("connections.detail", connection_id=link.connection_id))
    return redirect(url_for("reconnect.links"))
