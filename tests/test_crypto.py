"""TokenCipher: the ciphertext contract of docs/architecture.md ("Ciphertext format"), as properties."""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault import crypto as crypto_module
from vault.crypto import (
    _SUBKEY_INFO,
    FORMAT_VERSION,
    DecryptionError,
    TokenCipher,
    _Key,
    _stretch_secret,
)

CURRENT = "current-secret-for-tests-0123456789abcdef"
OLD = "retired-secret-for-tests-0123456789abcdef"
OTHER = "unrelated-secret-for-tests-0123456789abcd"
AAD = b"connection:42:access"
HEADER = 1 + 4 + 16 + 12


@pytest.fixture(scope="module")
def cipher() -> TokenCipher:
    return TokenCipher(CURRENT, previous=[OLD])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plaintext=st.text(max_size=64 * 1024), aad=st.binary(max_size=64))
def test_round_trip_of_any_unicode_text(cipher, plaintext, aad):
    blob = cipher.encrypt(plaintext, aad=aad)
    assert cipher.decrypt(blob, aad=aad) == plaintext
    assert cipher.key_id(blob) == cipher.current_key_id


@settings(max_examples=30, deadline=None)
@given(plaintext=st.text(min_size=1, max_size=64), change=st.integers(1, 255))
def test_every_single_byte_change_is_detected(cipher, plaintext, change):
    blob = cipher.encrypt(plaintext, aad=AAD)
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= change
        with pytest.raises(DecryptionError):
            cipher.decrypt(bytes(tampered), aad=AAD)


@settings(max_examples=20, deadline=None)
@given(plaintext=st.text(max_size=64))
def test_every_truncation_is_detected(cipher, plaintext):
    blob = cipher.encrypt(plaintext, aad=AAD)
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            cipher.decrypt(blob[:length], aad=AAD)


@settings(max_examples=50, deadline=None)
@given(aad=st.binary(max_size=32), other=st.binary(max_size=32))
def test_wrong_aad_is_detected(cipher, aad, other):
    if aad == other:
        return
    with pytest.raises(DecryptionError):
        cipher.decrypt(cipher.encrypt("ya29.secret", aad=aad), aad=other)


def test_a_value_moved_to_another_row_fails(cipher):
    blob = cipher.encrypt("refresh-token", aad=b"connection:1:refresh")
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, aad=b"connection:2:refresh")
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, aad=b"connection:1:access")


@given(version=st.integers(0, 255).filter(lambda v: v != FORMAT_VERSION))
def test_unknown_version_is_rejected(cipher, version):
    blob = bytearray(cipher.encrypt("x", aad=AAD))
    blob[0] = version
    with pytest.raises(DecryptionError):
        cipher.decrypt(bytes(blob), aad=AAD)


def test_unknown_key_id_is_rejected(cipher):
    stranger = TokenCipher(OTHER)
    with pytest.raises(DecryptionError):
        cipher.decrypt(stranger.encrypt("x", aad=AAD), aad=AAD)
    blob = bytearray(cipher.encrypt("x", aad=AAD))
    blob[1:5] = bytes(4)
    with pytest.raises(DecryptionError):
        cipher.decrypt(bytes(blob), aad=AAD)


def test_salts_and_nonces_never_repeat_over_100k_encryptions(cipher):
    salts, nonces = set(), set()
    count = 100_000
    for _ in range(count):
        blob = cipher.encrypt("same plaintext", aad=AAD)
        salts.add(blob[5:21])
        nonces.add(blob[21:33])
    assert len(salts) == count
    assert len(nonces) == count


def test_equal_plaintexts_encrypt_differently(cipher):
    assert cipher.encrypt("same", aad=AAD) != cipher.encrypt("same", aad=AAD)


def test_value_written_under_previous_secret_decrypts():
    old = TokenCipher(OLD)
    blob = old.encrypt("written long ago", aad=AAD)
    rotated = TokenCipher(CURRENT, previous=[OLD])
    assert rotated.decrypt(blob, aad=AAD) == "written long ago"
    assert rotated.key_id(blob) == old.current_key_id != rotated.current_key_id
    assert rotated.needs_reencryption(blob)
    assert not rotated.needs_reencryption(rotated.encrypt("new", aad=AAD))
    with pytest.raises(DecryptionError):
        TokenCipher(CURRENT).decrypt(blob, aad=AAD)


def test_key_ring_is_newest_first_and_ids_are_derived_from_keys():
    ring = TokenCipher(CURRENT, previous=[OLD, OTHER])
    assert ring.key_ids == [
        TokenCipher(CURRENT).current_key_id,
        TokenCipher(OLD).current_key_id,
        TokenCipher(OTHER).current_key_id,
    ]
    assert len(set(ring.key_ids)) == 3
    assert all(len(key_id) == 8 for key_id in ring.key_ids)


def test_blob_layout_matches_the_contract(cipher):
    blob = cipher.encrypt("abc", aad=AAD)
    assert blob[0] == FORMAT_VERSION
    assert blob[1:5].hex() == cipher.current_key_id
    assert len(blob) == HEADER + len(b"abc") + 16


@pytest.mark.parametrize("secret", [None, "", "short", "x" * 31, b"x" * 40])
def test_weak_secrets_are_refused_in_the_constructor(secret):
    with pytest.raises(ValueError, match="at least 32 characters"):
        TokenCipher(secret)
    with pytest.raises(ValueError, match="previous secret #1"):
        TokenCipher(CURRENT, previous=[secret])


def test_scrypt_runs_once_per_secret_per_process():
    _stretch_secret.cache_clear()
    for _ in range(5):
        TokenCipher(CURRENT, previous=[OLD])
    info = _stretch_secret.cache_info()
    assert info.misses == 2 and info.hits == 8


def _reference_subkey(master: bytes, salt: bytes) -> bytes:
    return HKDFExpand(hashes.SHA256(), 32, _SUBKEY_INFO + salt).derive(master)


@settings(max_examples=50, deadline=None)
@given(salt=st.binary(min_size=16, max_size=16))
def test_subkey_derivation_is_hkdf_sha256_expand(salt):
    master = _stretch_secret(CURRENT)
    key = _Key(master)
    assert isinstance(key._prefix, HMAC)  # a library HMAC, no hand-made pads
    nonce = bytes(12)
    expected = AESGCM(_reference_subkey(master, salt)).encrypt(nonce, b"probe", b"aad")
    # Same key <=> same ciphertext and tag under the same nonce; asked twice, so the shared
    # keyed prefix state must not be consumed or altered by a derivation.
    for _ in range(2):
        assert key.subkey(salt).encrypt(nonce, b"probe", b"aad") == expected
        assert key.subkey(salt).decrypt(nonce, expected, b"aad") == b"probe"
    assert key.key_id == hmac.digest(master, b"token-vault/v1/key-id", "sha256")[:4]


def test_subkeys_match_reference_for_several_random_salts_and_keys():
    for secret in (CURRENT, OLD, OTHER):
        master = _stretch_secret(secret)
        key = _Key(master)
        for salt in [bytes(16), b"\xff" * 16] + [os.urandom(16) for _ in range(20)]:
            nonce = os.urandom(12)
            expected = AESGCM(_reference_subkey(master, salt)).encrypt(nonce, b"probe", None)
            assert key.subkey(salt).encrypt(nonce, b"probe", None) == expected


# Known-answer vector produced by the original hand-built HMAC pad implementation (before the
# switch to hmac.new(...).copy()), with os.urandom patched so salt = 10..1f, nonce = 20..2b.
# Every stored ciphertext must keep decrypting, so this must never change.
KAT_SECRET = "known-answer-secret-for-tests-0123456789abc"
KAT_AAD = b"connection:7:refresh"
KAT_PLAINTEXT = "1//0g-old-refresh-token-\u20ac"
KAT_KEY_ID = "1f77df6f"
KAT_BLOB = bytes.fromhex(
    "011f77df6f101112131415161718191a1b1c1d1e1f202122232425262728292a2b"
    "be7e16a33b779a2ec62755f9bd2694f5770ba7a66038e3b7a91dd4f93e53a4bf2fba3a134c0253c29e20ec"
)


def test_ciphertext_from_the_previous_implementation_still_decrypts(monkeypatch):
    cipher = TokenCipher(KAT_SECRET)
    assert cipher.current_key_id == KAT_KEY_ID
    assert cipher.decrypt(KAT_BLOB, aad=KAT_AAD) == KAT_PLAINTEXT
    rotated = TokenCipher(CURRENT, previous=[KAT_SECRET])
    assert rotated.decrypt(KAT_BLOB, aad=KAT_AAD) == KAT_PLAINTEXT
    with pytest.raises(DecryptionError):
        cipher.decrypt(KAT_BLOB, aad=b"connection:7:access")
    # With the same salt and nonce the new code reproduces the old bytes exactly.
    fixed = bytes(range(0x10, 0x10 + 28))
    monkeypatch.setattr(crypto_module.os, "urandom", lambda n: fixed[:n])
    assert cipher.encrypt(KAT_PLAINTEXT, aad=KAT_AAD) == KAT_BLOB


@settings(max_examples=25, deadline=None)
@given(plaintext=st.text(min_size=16, max_size=200))
def test_errors_never_carry_plaintext_or_key_material(cipher, plaintext):
    blob = bytearray(cipher.encrypt(plaintext, aad=AAD))
    blob[-1] ^= 1
    with pytest.raises(DecryptionError) as caught:
        cipher.decrypt(bytes(blob), aad=AAD)
    error = caught.value
    rendered = str(error) + repr(error) + repr(error.args)
    master = _stretch_secret(CURRENT)
    for secret_text in (plaintext, CURRENT, OLD, master.hex(), repr(master)):
        assert secret_text not in rendered
    assert error.__cause__ is None and error.__suppress_context__
    assert CURRENT not in repr(cipher) and OLD not in repr(cipher)
