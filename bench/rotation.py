"""`vault rotate-key` over 100,000 values on PostgreSQL against a bare UPDATE, one run.

The reference writes precomputed ciphertexts to the same rows with the same statement, in
batches of the same size, one transaction per batch: what rotation costs beyond the writes
themselves is the locking read and the decrypt + encrypt. Target (issue 7): >= 25% of the
reference's rate.
"""

from __future__ import annotations

import os
import secrets
import time

from sqlalchemy import bindparam, insert, select, update

from tests.support.databases import bench_app, temporary_database
from bench.timing import verdict
from vault.crypto import TokenCipher
from vault.extensions import db
from vault.models import Connection, Token
from vault.tokens.rotation import rotate

VALUES = int(os.environ.get("BENCH_ROTATION_VALUES", 100_000))
KINDS = ("access", "refresh", "id", "api_key", "api_secret")
BATCH = 500


def _fill(old_secret: str) -> None:
    cipher = TokenCipher(old_secret)
    connections = VALUES // len(KINDS)
    db.session.execute(insert(Connection), [
        {"provider": "google", "account_subject": f"bench-{n}", "scopes_requested": "",
         "scopes_granted": "", "status": "active", "failure_count": 0}
        for n in range(connections)
    ])
    ids = db.session.scalars(select(Connection.id)).all()
    rows = [
        {"connection_id": cid, "kind": kind, "key_id": cipher.current_key_id, "is_valid": True,
         "ciphertext": cipher.encrypt("ya29." + secrets.token_urlsafe(120),
                                      aad=f"connection:{cid}:{kind}".encode())}
        for cid in ids for kind in KINDS
    ]
    for start in range(0, len(rows), 10_000):
        db.session.execute(insert(Token), rows[start:start + 10_000])
    db.session.commit()


def _bare_update(cipher: TokenCipher) -> float:
    statement = (
        update(Token.__table__)
        .where(Token.__table__.c.id == bindparam("token_id"))
        .values(ciphertext=bindparam("new_ciphertext"), key_id=bindparam("new_key_id"))
    )
    rows = db.session.execute(select(Token.id, Token.connection_id, Token.kind)).all()
    precomputed = [
        {"token_id": r.id, "new_key_id": cipher.current_key_id,
         "new_ciphertext": cipher.encrypt("ya29.precomputed-value",
                                          aad=f"connection:{r.connection_id}:{r.kind}".encode())}
        for r in rows
    ]
    db.session.commit()
    started = time.perf_counter()
    for start in range(0, len(precomputed), BATCH):
        db.session.execute(statement, precomputed[start:start + BATCH],
                           execution_options={"synchronize_session": False})
        db.session.commit()
    return time.perf_counter() - started


def main() -> bool:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with temporary_database() as url:
        bench_app(url, ENCRYPTION_SECRET=old)  # creates the schema
        app = bench_app(url, ENCRYPTION_SECRET=new, ENCRYPTION_SECRET_PREVIOUS=old)
        with app.app_context():
            _fill(old)
            started = time.perf_counter()
            result = rotate(batch_size=BATCH)
            rotation = time.perf_counter() - started
            assert result.reencrypted == VALUES, result
            bare = _bare_update(TokenCipher(new))
            db.session.remove()
            db.engine.dispose()
    share = bare / rotation
    print(f"rotate-key, {VALUES} values:      {rotation:7.2f} s  ({VALUES / rotation:9.0f} values/s)")
    print(f"bare UPDATE, same rows/batches:   {bare:7.2f} s  ({VALUES / bare:9.0f} values/s)")
    print(f"rotation rate / bare rate: {share:6.0%} (target >= 25%)  {verdict(share >= 0.25)}")
    return share >= 0.25
