"""The providers file: presets, ${ENV} interpolation, and errors naming file, provider, key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.registry import load_registry
from vault import PROJECT_ROOT
from vault.config import ConfigError
from vault.providers.registry import PRESETS, ProviderRegistry


def test_example_file_loads_with_every_preset(tmp_path):
    example = Path(PROJECT_ROOT, "providers.example.toml").read_text()
    names = set(re.findall(r"\$\{([A-Z_]+)\}", example))
    environ = {name: f"value-of-{name}" for name in names}
    registry = load_registry(tmp_path, example, environ=environ)
    presets = {provider.preset for provider in registry if provider.preset}
    assert presets == set(PRESETS) - {"oidc", "oauth2"}
    assert {provider.type for provider in registry} == {
        "oidc", "oauth2", "api_key", "service_account"}
    assert registry.get("google").client_secret == "value-of-GOOGLE_CLIENT_SECRET"
    assert "value-of-GOOGLE_CLIENT_SECRET" not in repr(registry.get("google"))


def test_google_preset_fills_discovery_offline_access_and_revocation(tmp_path):
    google = load_registry(tmp_path, '[google]\npreset = "google"\nclient_id = "id"\nclient_secret = "s"\n').get("google")
    assert google.type == "oidc" and google.title == "Google"
    assert google.authorize_params == {
        "access_type": "offline", "prompt": "consent", "include_granted_scopes": "true"}
    assert google.revocation_endpoint == "https://oauth2.googleapis.com/revoke"


def test_microsoft_preset_uses_v2_endpoints_and_offline_access(tmp_path):
    microsoft = load_registry(tmp_path, '[ms]\npreset = "microsoft"\nclient_id = "i"\nclient_secret = "s"\n').get("ms")
    assert "/v2.0/" in microsoft.server_metadata_url
    assert "offline_access" in microsoft.scope.split()


def test_api_key_presets_describe_their_fields(tmp_path):
    registry = load_registry(tmp_path, '[v]\npreset = "voicenter"\n[g]\npreset = "greeninvoice"\n[w]\npreset = "whatsapp"\n')
    assert list(registry.get("v").fields) == ["api_key"]
    assert list(registry.get("g").fields) == ["api_key", "api_secret"]
    assert registry.get("g").token_url.startswith("https://")
    assert registry.get("w").expiry_field is True


def test_missing_optional_file_means_no_providers(tmp_path):
    assert len(ProviderRegistry.from_file(tmp_path / "absent.toml", required=False)) == 0


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ('[g]\npreset = "gogle"\n', {}, "[g] preset: unknown preset 'gogle'"),
        ('[g]\npreset = "google"\nclient_id = "x"\n', {}, "[g] client_secret: missing"),
        ('[g]\npreset = "google"\nclient_id = "x"\nclient_secret = "${NOPE}"\n', {},
         "[g] refers to ${NOPE}, but environment variable NOPE is not set"),
        ('[g]\npreset = "google"\nclient_id = "x"\nclient_secret = "y"\ncolour = "red"\n', {},
         "[g] unknown key 'colour'"),
        ('[a]\ntype = "oidc"\nclient_id = "x"\nclient_secret = "y"\nserver_metadata_url = "ftp://x"\n',
         {}, "[a] server_metadata_url: 'ftp://x' is not an http(s) URL"),
        ('[a]\ntype = "oidc"\nclient_id = "x"\nclient_secret = "y"\n', {}, "[a] server_metadata_url: missing"),
        ('[a]\ntype = "oauth2"\nclient_id = "x"\nclient_secret = "y"\nauthorize_url = "https://a/x"\n',
         {}, "[a] token_url: missing"),
        ('[a]\ntype = "carrier-pigeon"\n', {}, "[a] type: must be one of"),
        ('[a]\npreset = "google"\nclient_id = "x"\nclient_secret = "y"\ntoken_endpoint_auth_method = "none"\n',
         {}, "[a] token_endpoint_auth_method"),
        ('["Bad Key"]\npreset = "voicenter"\n', {}, "provider key must be"),
        ('[s]\npreset = "google"\nclient_id = "x"\nclient_secret = "y"\nstaff_login = true\n', {},
         "[s] allowed_domains"),
        ("top = 1\n", {}, "[top] must be a table"),
    ],
)
def test_errors_name_the_file_the_provider_and_the_key(tmp_path, text, environ, expected):
    with pytest.raises(ConfigError) as error:
        load_registry(tmp_path, text, environ)
    message = str(error.value)
    assert str(tmp_path / "providers.toml") in message
    assert expected in message
    assert "\n" not in message


def test_interpolation_substitutes_inside_strings_and_tables(tmp_path):
    registry = load_registry(
        tmp_path,
        '[a]\ntype = "oidc"\nserver_metadata_url = "https://${HOST}/.well-known/openid-configuration"\n'
        'client_id = "${ID}"\nclient_secret = "${SECRET}"\nauthorize_params = { hd = "${DOMAIN}" }\n',
        environ={"HOST": "idp.example", "ID": "cid", "SECRET": "s3cret", "DOMAIN": "example.com"},
    )
    acme = registry.get("a")
    assert acme.server_metadata_url == "https://idp.example/.well-known/openid-configuration"
    assert (acme.client_id, acme.client_secret) == ("cid", "s3cret")
    assert acme.authorize_params == {"hd": "example.com"}
