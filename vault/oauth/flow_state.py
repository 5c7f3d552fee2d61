"""Authlib's flow-state cache, kept in the ``oauth_states`` table, encrypted.

Authlib keeps each flow's PKCE verifier, nonce and redirect URI in a "cache"; ours is the
``oauth_states`` table (encrypted, shared by every instance), so the session cookie only
holds the state's expiry marker, never the verifier.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from sqlalchemy import delete, insert, select

from vault.extensions import db
from vault.models import OAuthState, utcnow
from vault.tokens.store import token_vault


class FlowStateStore:
    """Authlib's cache interface (get/set/delete) over the ``oauth_states`` table.

    Reading a state consumes it (``DELETE ... RETURNING``), so even two simultaneous
    callbacks carrying the same state cannot both use it. Each call runs in its own short
    transaction, independent of the request's session, so a consumed state stays consumed
    even when the rest of the callback fails and rolls back.
    """

    def __init__(self, app: Flask):
        self.app = app

    @staticmethod
    def _aad(key: str) -> bytes:
        return f"oauth-state:{key}".encode()

    def get(self, key: str) -> str | None:
        now = utcnow()
        statement = (
            delete(OAuthState).where(OAuthState.key == key).returning(
                OAuthState.ciphertext, OAuthState.expires_at
            )
        )
        with db.engine.begin() as connection:
            row = connection.execute(statement).first()
        if row is None or row.expires_at <= now:
            return None
        return token_vault.cipher.decrypt(row.ciphertext, aad=self._aad(key))

    def peek(self, key: str) -> str | None:
        """The state's value without consuming it (None: unknown or expired).

        Only to decide how a callback is to be finished; the flow itself still consumes the
        state with :meth:`get`, once.
        """
        statement = select(OAuthState.ciphertext, OAuthState.expires_at).where(
            OAuthState.key == key
        )
        with db.engine.connect() as connection:
            row = connection.execute(statement).first()
        if row is None or row.expires_at <= utcnow():
            return None
        return token_vault.cipher.decrypt(row.ciphertext, aad=self._aad(key))

    def set(self, key: str, value: str, expires_in: int) -> None:
        now = utcnow()
        with db.engine.begin() as connection:
            connection.execute(delete(OAuthState).where(OAuthState.expires_at <= now))
            connection.execute(
                insert(OAuthState).values(
                    key=key,
                    ciphertext=token_vault.cipher.encrypt(value, aad=self._aad(key)),
                    expires_at=now + timedelta(seconds=expires_in),
                )
            )

    def delete(self, key: str) -> None:
        with db.engine.begin() as connection:
            connection.execute(delete(OAuthState).where(OAuthState.key == key))
