"""Private keys in the providers file, checked at start-up: ``private_key_jwt`` client
authentication and the ``jwt_bearer`` grant's assertion key.

A key is PEM text (usually ``${ENV}``) or a file (``*_file``); either way it is loaded with
``cryptography`` here, so a bad key stops start-up with a message that names the provider and
the key's setting, never a byte of the key. What signs with it is Authlib, in
:mod:`vault.oauth`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

PRIVATE_KEY_JWT = "private_key_jwt"
JWT_BEARER = "jwt_bearer"
# The providers-file settings of each key: (PEM text, file, key id).
CLIENT_KEY = ("client_private_key", "client_private_key_file", "client_key_id")
ASSERTION_KEY = ("assertion_private_key", "assertion_private_key_file", "assertion_key_id")
ASSERTION_CLAIMS = ("assertion_issuer", "assertion_subject", "assertion_audience")
KEY_SETTINGS = (*CLIENT_KEY, *ASSERTION_KEY, *ASSERTION_CLAIMS)
# RSA keys sign RS256; EC keys sign with the algorithm of their curve.
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# A PEM private key is a few kilobytes at most; anything larger is not one.
MAX_PEM_BYTES = 64 * 1024


class UnusableKey(ValueError):
    """A private key cannot be used; the message never quotes it."""


def signing_algorithm(pem: str) -> str:
    """The JWS algorithm a PEM private key signs with (RS256, ES256, ...).

    Raises :class:`UnusableKey` when it is not an unencrypted RSA (2048 bits or more) or EC
    private key.
    """
    if len(pem.encode()) > MAX_PEM_BYTES:
        raise UnusableKey("is larger than any PEM private key")
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise UnusableKey("is encrypted with a password; give it unencrypted") from None
    except (ValueError, UnicodeError):
        raise UnusableKey("is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise UnusableKey(f"is a {key.key_size}-bit RSA key; at least 2048 bits are needed")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHMS:
        return _EC_ALGORITHMS[key.curve.name]
    raise UnusableKey("must be an RSA or an EC (P-256, P-384, P-521) private key")


def check_signing_keys(merged: dict[str, Any], provider_type: str, fail: Callable) -> None:
    """Validate, load and normalise in place the key settings of one provider.

    ``private_key_jwt`` needs ``client_private_key`` or ``client_private_key_file``; the
    ``jwt_bearer`` grant its ``assertion_*`` key and issuer. A file's PEM text replaces its
    path, so the rest of the code sees one form.
    """
    uses_client_key = merged.get("token_endpoint_auth_method") == PRIVATE_KEY_JWT
    uses_assertion = merged.get("grant_type") == JWT_BEARER
    for (text_key, file_key, id_key), used, why in (
        (CLIENT_KEY, uses_client_key, 'token_endpoint_auth_method = "private_key_jwt"'),
        (ASSERTION_KEY, uses_assertion, 'grant_type = "jwt_bearer"'),
    ):
        given = [name for name in (text_key, file_key, id_key) if merged.get(name) is not None]
        if not used:
            if given:
                raise fail(f"{given[0]}: only used with {why}")
            continue
        merged[text_key] = _load(merged, text_key, file_key, fail)
        merged.pop(file_key, None)
        if merged.get(id_key) is not None and not _short_text(merged[id_key]):
            raise fail(f"{id_key}: must be a string of 1 to 200 characters")
    if not uses_assertion:
        for name in ASSERTION_CLAIMS:
            if merged.get(name) is not None:
                raise fail(f'{name}: only used with grant_type = "jwt_bearer"')
        return
    if provider_type != "oauth2":
        raise fail('grant_type: jwt_bearer is for plain OAuth 2.0 providers (type "oauth2")')
    if not merged.get("assertion_issuer") and not merged.get("client_id"):
        raise fail("assertion_issuer: missing; the jwt_bearer grant needs the assertion's issuer")
    for name in ASSERTION_CLAIMS:
        if merged.get(name) is not None and not _short_text(merged[name]):
            raise fail(f"{name}: must be a string of 1 to 200 characters")


def _load(merged: dict[str, Any], text_key: str, file_key: str, fail: Callable) -> str:
    text, path = merged.get(text_key), merged.get(file_key)
    if (text is None) == (path is None):
        raise fail(f"{text_key}: give either {text_key} (PEM text) or {file_key}")
    name = text_key
    if path is not None:
        name = file_key
        if not isinstance(path, str) or not path:
            raise fail(f"{file_key}: must be the path of a PEM file")
        try:
            with Path(path).open("rb") as handle:
                text = handle.read(MAX_PEM_BYTES + 1).decode()
        except OSError as error:
            raise fail(f"{file_key}: {path} cannot be read ({error.strerror})") from None
        except UnicodeError:
            raise fail(f"{file_key}: {path} is not a PEM private key") from None
    if not isinstance(text, str):
        raise fail(f"{name}: must be PEM text")
    try:
        signing_algorithm(text)
    except UnusableKey as error:
        raise fail(f"{name}: the key {error}") from None
    return text


def _short_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200
