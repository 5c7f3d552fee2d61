"""A person's page, ``/people/<email>``: what they connected or own, and offboarding them.

Any signed-in staff member can look; only admins act. Per connection: transfer it to
another owner, make a reconnect link for someone else to use, or disconnect it (revoking at
the provider); and "transfer all" of what the person owns. Each action goes through the
service that owns it (:mod:`vault.services.ownership`, :mod:`vault.services.reconnect_links`,
:func:`vault.services.connections.disconnect`), is audited there, and is committed once here.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import EmailField, SubmitField
from wtforms.validators import Length

from vault import audit
from vault.alerts import handover
from vault.extensions import db
from vault.models import Connection, User, utcnow
from vault.queries.people import person
from vault.services import ownership, reconnect_links
from vault.services.connections import disconnect
from vault.services.reconnect_links import LinkError
from vault.web.security import admin_required

bp = Blueprint("people", __name__, url_prefix="/people")


class TransferForm(FlaskForm):
    """One connection, or all a person owns, to a new owner."""

    new_owner = EmailField("New owner", validators=[Length(max=320)])
    submit = SubmitField("Transfer")


class LinkForm(FlaskForm):
    """A reconnect link for someone else to use."""

    recipient = EmailField("Send reconnect link to", validators=[Length(max=320)])
    submit = SubmitField("Create reconnect link")


class DisconnectForm(FlaskForm):
    submit = SubmitField("Disconnect")


@bp.get("/<email>")
def show(email: str):
    """What ``email`` connected or owns, who uses each, and (admins) the offboarding forms."""
    address = _address(email)
    if address != email:
        return redirect(url_for("people.show", email=address))
    return _person_page(address)


@bp.post("/<email>/transfer")
@admin_required
def transfer_all(email: str):
    """Give everything the person owns to one new owner."""
    address = _address(email)
    form = TransferForm()
    if not form.validate_on_submit():
        return _person_page(address, {"all": "The form expired; try again."}, 400)
    try:
        moved = ownership.transfer_all(address, form.new_owner.data,
                                       actor=current_user._get_current_object())
    except ownership.OwnershipError as error:
        db.session.rollback()
        return _person_page(address, {"all": str(error)}, 400)
    db.session.commit()
    flash(f"Transferred {moved} connection{'' if moved == 1 else 's'} to "
          f"{ownership.owner_of(form.new_owner.data)}.", "success")
    return redirect(url_for("people.show", email=address))


@bp.post("/<email>/connections/<int:connection_id>/transfer")
@admin_required
def transfer(email: str, connection_id: int):
    """Give one of the person's connections to a new owner."""
    address = _address(email)
    connection = _theirs(address, connection_id)
    form = TransferForm()
    if not form.validate_on_submit():
        return _person_page(address, {connection.id: "The form expired; try again."}, 400)
    try:
        ownership.transfer(connection, form.new_owner.data,
                           actor=current_user._get_current_object())
    except ownership.OwnershipError as error:
        db.session.rollback()
        return _person_page(address, {connection.id: str(error)}, 400)
    db.session.commit()
    flash(f"{_account(connection)} now belongs to {connection.owner_email}.", "success")
    return redirect(url_for("people.show", email=address))


@bp.post("/<email>/connections/<int:connection_id>/reconnect-link")
@admin_required
def reconnect_link(email: str, connection_id: int):
    """A reconnect link for someone else to use: shown this once, and e-mailed to them when
    alert e-mail is configured."""
    address = _address(email)
    connection = _theirs(address, connection_id)
    form = LinkForm()
    if not form.validate_on_submit():
        return _person_page(address, {connection.id: "The form expired; try again."}, 400)
    admin = current_user._get_current_object()
    try:
        recipient = ownership.owner_of(form.recipient.data)
        if recipient is None:
            raise ownership.OwnershipError("Name who the link is for.")
        url = reconnect_links.issue_reconnect_link(connection, created_by=admin.email,
                                                   now=utcnow())
    except (ownership.OwnershipError, LinkError) as error:
        db.session.rollback()
        return _person_page(address, {connection.id: str(error)}, 400)
    audit.record("connection.reconnect_link_sent", target=_target(connection),
                 connection=connection, actor=admin,
                 detail=f"for {recipient}, offboarding {address}")
    db.session.commit()
    mailed = problem = None
    if handover.can_email():
        # After the commit: the link exists whatever the mail server does, and no
        # transaction waits on it.
        problem = handover.email_reconnect_link(connection, url, recipient,
                                                asked_by=admin.email, leaver=address)
        mailed = problem is None
        audit.record("connection.reconnect_link_emailed", target=_target(connection),
                     connection=connection, actor=admin,
                     outcome="success" if mailed else "failure",
                     detail=f"to {recipient}" + (f": {problem}" if problem else ""))
        db.session.commit()
    return render_template(
        "reconnect/created.html", url=url, kind="reconnect",
        back=url_for("people.show", email=address),
        hours=current_app.config["VAULT_RECONNECT_LINK_HOURS"], recipient=recipient,
        mailed=mailed, mail_problem=problem,
    ), 201


@bp.route("/<email>/connections/<int:connection_id>/disconnect", methods=["GET", "POST"])
@admin_required
def disconnect_connection(email: str, connection_id: int):
    """Confirm, then revoke at the provider when it can and delete the tokens."""
    address = _address(email)
    connection = _theirs(address, connection_id)
    provider = current_app.extensions["providers"].get(connection.provider)
    form = DisconnectForm()
    if not form.validate_on_submit():
        return render_template("people/disconnect.html", connection=connection,
                               provider=provider, form=form, email=address)
    result = disconnect(connection, provider, current_user._get_current_object())
    db.session.commit()
    if result.problem:
        flash(f"{_account(connection)} is disconnected and its tokens deleted here, but "
              f"{result.problem}. Revoke the access at the provider by hand.", "warning")
    else:
        flash(f"{_account(connection)} is disconnected and its tokens deleted"
              f"{' (access revoked at the provider)' if result.revoked else ''}.", "success")
    return redirect(url_for("people.show", email=address))


def _person_page(address: str, errors: dict | None = None, status: int = 200):
    """The page, with ``errors`` by the form they belong to (a connection id, or "all")."""
    return render_template(
        "people/show.html", person=person(address, utcnow()), errors=errors or {},
        providers=current_app.extensions["providers"], can_link=reconnect_links.can_issue,
        transfer_form=TransferForm(), link_form=LinkForm(),
    ), status


def _address(email: str) -> str:
    """The person's e-mail as stored (lower-cased); 404 for anything that is not one."""
    try:
        address = ownership.owner_of(email)
    except ownership.OwnershipError:
        abort(404)
    if address is None:
        abort(404)
    return address


def _theirs(address: str, connection_id: int) -> Connection:
    """The connection, when ``address`` owns or connected it (404 otherwise)."""
    connection = db.get_or_404(Connection, connection_id)
    creator = db.session.get(User, connection.created_by_id) if connection.created_by_id else None
    if connection.owner_email != address and (creator is None or creator.email != address):
        abort(404)
    return connection


def _account(connection: Connection) -> str:
    return connection.account_email or connection.account_name or connection.account_subject


def _target(connection: Connection) -> str:
    return f"{connection.provider}:{connection.account_email or connection.account_subject}"
