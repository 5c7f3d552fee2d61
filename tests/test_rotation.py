"""Key rotation, `vault verify`, and the start-up check of ENCRYPTION_SECRET."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from tests.conftest import TEST_ENCRYPTION_SECRET
from vault.extensions import db as _db
from vault.models import Connection, Token
from vault.tokens.store import token_vault

NEW_SECRET = "the-new-encryption-secret-after-rotation-42"
STRANGER = "a-secret-that-never-encrypted-anything-here"


def fill(db, connections=7):
    """Connections with access and refresh tokens under the test (old) secret."""
    values = {}
    for number in range(connections):
        connection = Connection(provider="google", account_subject=f"sub-{number}")
        db.session.add(connection)
        db.session.flush()
        for kind in ("access", "refresh"):
            values[(connection.id, kind)] = f"{kind}-token-{number}-plaintext"
            token_vault.store(connection, kind, values[(connection.id, kind)])
    db.session.commit()
    return values


@pytest.fixture
def rotated_app(app, make_app):
    """``rotated_app(secret=NEW_SECRET, previous=old)``: the app after an operator's switch."""

    def build(secret=NEW_SECRET, previous=TEST_ENCRYPTION_SECRET):
        return make_app(ENCRYPTION_SECRET=secret, ENCRYPTION_SECRET_PREVIOUS=previous)

    return build


def invoke(app, *args):
    """Run a CLI command in ``app`` (its own context: the CLI would reuse an outer one)."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def decrypt_all(app):
    with app.app_context():
        return {
            (token.connection_id, token.kind): token_vault.decrypt(token)
            for token in _db.session.scalars(select(Token))
        }


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_rotate_key_reencrypts_everything_in_batches_and_reruns_cleanly(app, db, rotated_app):
    values = fill(db)
    new = rotated_app()
    result = invoke(new, "vault", "rotate-key", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 14 value(s)" in result.output
    with new.app_context():
        current = token_vault.cipher.current_key_id
        assert set(_db.session.scalars(select(Token.key_id))) == {current}
    assert decrypt_all(new) == values
    again = invoke(new, "vault", "rotate-key")
    assert again.exit_code == 0 and "already under key" in again.output
    # The retired secret is no longer needed.
    assert decrypt_all(rotated_app(previous="")) == values


def test_an_interrupted_rotation_resumes(app, db, rotated_app):
    values = fill(db)
    new = rotated_app()
    from vault.tokens.rotation import rotate

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(_count):
        raise Interrupted

    with new.app_context():
        with pytest.raises(Interrupted):
            rotate(batch_size=4, progress=stop_after_first_batch)
        current = token_vault.cipher.current_key_id
        assert _db.session.scalar(text("SELECT count(*) FROM tokens WHERE key_id = :k"), {"k": current}) == 4
    result = invoke(new, "vault", "rotate-key", "--batch-size", "4")
    assert "Re-encrypted 10 value(s)" in result.output
    assert decrypt_all(new) == values


def test_rotation_leaves_undecryptable_values_and_says_so(app, db, rotated_app):
    fill(db, connections=2)
    db.session.execute(text("UPDATE tokens SET ciphertext = :junk WHERE id = 1"), {"junk": b"\x01" + b"\0" * 60})
    db.session.commit()
    result = invoke(rotated_app(), "vault", "rotate-key")
    assert result.exit_code == 1
    assert "Re-encrypted 3 value(s)" in result.output
    assert "1 value(s) could not be decrypted" in result.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_refreshes_during_rotation_lose_nothing(app, db, rotated_app):
    fill(db, connections=40)
    new = rotated_app()
    latest = {}
    stop = threading.Event()

    def keep_refreshing():
        with new.app_context():
            round_number = 0
            while not stop.is_set():
                round_number += 1
                for connection in _db.session.scalars(select(Connection).limit(10)).all():
                    value = f"refreshed-{connection.id}-{round_number}"
                    token_vault.store(connection, "access", value)
                    _db.session.commit()
                    latest[(connection.id, "access")] = value

    refresher = threading.Thread(target=keep_refreshing)
    refresher.start()
    try:
        result = invoke(new, "vault", "rotate-key", "--batch-size", "5")
    finally:
        stop.set()
        refresher.join()
    assert result.exit_code == 0, result.output
    stored = decrypt_all(new)
    for place, value in latest.items():
        assert stored[place] == value
    with new.app_context():
        current = token_vault.cipher.current_key_id
        assert set(_db.session.scalars(select(Token.key_id))) == {current}


def test_verify_reports_undecryptable_values_and_writes_nothing(app, db, rotated_app):
    fill(db, connections=3)
    clean = invoke(app, "vault", "verify")
    assert clean.exit_code == 0 and "Checked 6 value(s): 6 decrypt, 0 undecryptable" in clean.output
    # A value moved to another row fails its AAD check, like tampering would.
    moved = db.session.scalar(select(Token).where(Token.connection_id == 1, Token.kind == "refresh"))
    other = db.session.scalar(select(Token).where(Token.connection_id == 2, Token.kind == "refresh"))
    other.ciphertext = moved.ciphertext
    db.session.commit()
    before = db.session.execute(text("SELECT id, ciphertext, key_id, updated_at FROM tokens ORDER BY id")).all()
    broken = invoke(app, "vault", "verify")
    assert broken.exit_code == 1
    assert "undecryptable: connection 2 refresh" in broken.output
    assert "5 decrypt, 1 undecryptable" in broken.output
    after = db.session.execute(text("SELECT id, ciphertext, key_id, updated_at FROM tokens ORDER BY id")).all()
    assert before == after


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_wrong_secret_refuses_to_start(app, db, rotated_app):
    fill(db, connections=1)
    with pytest.raises(SystemExit) as stopped:
        rotated_app(secret=STRANGER, previous="")
    message = str(stopped.value.code)
    assert "the secret is wrong" in message and "\n" not in message
    assert STRANGER not in message
    rotated_app()  # the right secret as a previous one is fine


def test_empty_or_unmigrated_database_starts(make_app):
    make_app(ENCRYPTION_SECRET=STRANGER)
