"""TokenCipher encrypt+decrypt of a 200-byte token against two references, one run.

(a) the seed's design: an scrypt derivation (N=16384, r=8, p=1) per value, so once to
    encrypt and once more to decrypt; (b) bare AES-256-GCM with one cached key and a fresh
    nonce. Targets (issue 2): >= 2,000x faster than (a), within 4x of (b).
"""

from __future__ import annotations

import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from bench.timing import best_per_call, verdict
from vault.crypto import TokenCipher

TOKEN = "ya29." + secrets.token_urlsafe(146)[:195]  # 200 characters, like a Google token
AAD = b"connection:42:access"


def main() -> bool:
    secret = secrets.token_urlsafe(48)
    cipher = TokenCipher(secret)
    plaintext = TOKEN.encode()

    def token_cipher() -> None:
        cipher.decrypt(cipher.encrypt(TOKEN, aad=AAD), aad=AAD)

    cached = AESGCM(os.urandom(32))

    def bare_aes_gcm() -> None:
        nonce = os.urandom(12)
        cached.decrypt(nonce, cached.encrypt(nonce, plaintext, AAD), AAD).decode()

    def scrypt_key(salt: bytes) -> AESGCM:
        return AESGCM(Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(secret.encode()))

    def scrypt_per_value() -> None:
        salt, nonce = os.urandom(16), os.urandom(12)
        sealed = scrypt_key(salt).encrypt(nonce, plaintext, AAD)
        scrypt_key(salt).decrypt(nonce, sealed, AAD).decode()

    fast = best_per_call({"ours": token_cipher, "bare": bare_aes_gcm}, calls=5_000, rounds=15)
    ours, bare = fast["ours"], fast["bare"]
    seed = best_per_call({"seed": scrypt_per_value}, calls=5, rounds=3)["seed"]
    faster_than_seed = seed / ours
    slower_than_bare = ours / bare
    print(f"TokenCipher encrypt+decrypt (200 B):  {ours * 1e6:9.2f} us")
    print(f"bare AES-GCM, cached key:             {bare * 1e6:9.2f} us")
    print(f"scrypt per value (seed design):       {seed * 1e6:9.0f} us")
    print(f"vs scrypt per value: {faster_than_seed:8.0f}x faster (target >= 2000x)  "
          f"{verdict(faster_than_seed >= 2000)}")
    print(f"vs bare AES-GCM:     {slower_than_bare:8.2f}x slower (target <= 4x)     "
          f"{verdict(slower_than_bare <= 4)}")
    return faster_than_seed >= 2000 and slower_than_bare <= 4
