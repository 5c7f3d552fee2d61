"""The one door: every request to a provider that carries or obtains a token.

* :mod:`~vault.oauth.clients`: one Authlib registry per app (connect and staff sign-in),
  built at start-up, and the one redirect-URI builder;
* :mod:`~vault.oauth.identity`: the authorization-code flow's start and callback, with the
  one issuer/``aud``/nonce check and the one identity step (id_token claims completed from
  userinfo);
* :mod:`~vault.oauth.tokens`: the token endpoint (refresh and client-credentials grants, a
  key exchange), userinfo and revocation, and the one reading of ``expires_in``;
* :mod:`~vault.oauth.discovery`: provider metadata, cached;
* :mod:`~vault.oauth.session`: the HTTP client under all of them, which never refreshes a
  token on its own.

Nothing outside this package talks to a provider.
"""
