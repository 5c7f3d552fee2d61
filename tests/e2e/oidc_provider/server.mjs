// A real OpenID Connect provider (panva/node-oidc-provider, OpenID Certified) for the
// end-to-end tests. Listens on 127.0.0.1 only; prints one JSON line per request and per
// token and grant event on stdout so the tests can check what the provider received and did
// (a token event's jti is, for these opaque tokens, the token itself: a test provider only).
//
//   PORT=... CLIENT_ID=... CLIENT_SECRET=... REDIRECT_URI=... node server.mjs
//
// Optional, to make it behave like a given real provider:
//   REDIRECT_URIS            space-separated redirect URIs (instead of REDIRECT_URI)
//   ACCESS_TOKEN_TTL         seconds an access token lives (ttl.AccessToken; default 3600)
//   ROTATE_REFRESH_TOKEN     "true": a new refresh token on every use, the used one consumed;
//                            presenting a consumed one again revokes the whole grant
//                            (lib/actions/grants/refresh_token.js). "false": never rotate.
//                            Unset: the library's default policy (rotate after 70 % of the
//                            refresh token's lifetime, or for public clients).
//   CONFORM_ID_TOKEN_CLAIMS  "true" (the default, as the library's): the id_token of a
//                            response that also carries an access token holds only `sub`
//                            (and protocol claims); the e-mail comes from userinfo alone.
//                            "false": the id_token carries the scopes' claims too.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const log = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

const flag = (name, fallback) => {
  const value = process.env[name];
  if (value === undefined || value === '') return fallback;
  if (value === 'true' || value === 'false') return value === 'true';
  throw new Error(`${name} must be "true" or "false", not ${JSON.stringify(value)}`);
};
const seconds = (name, fallback) => {
  const value = process.env[name];
  if (value === undefined || value === '') return fallback;
  if (!/^[1-9][0-9]*$/.test(value)) throw new Error(`${name} must be a number of seconds`);
  return Number(value);
};
const redirectUris = (process.env.REDIRECT_URIS || process.env.REDIRECT_URI || '')
  .split(' ').filter(Boolean);
const rotateRefreshToken = flag('ROTATE_REFRESH_TOKEN', undefined);

const configuration = {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: process.env.TOKEN_AUTH_METHOD || 'client_secret_basic',
  }],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      email: `${id}@example.test`,
      email_verified: true,
      name: `E2E ${id}`,
    }),
  }),
  ttl: {
    AccessToken: seconds('ACCESS_TOKEN_TTL', 3600),
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
  },
  conformIdTokenClaims: flag('CONFORM_ID_TOKEN_CLAIMS', true),
  ...(rotateRefreshToken === undefined ? {} : { rotateRefreshToken }),
  cookies: { keys: ['token-vault-e2e-cookie-key-not-a-secret'] },
};

// The device authorization grant (RFC 8628, tests/e2e/test_device_grant_e2e.py): the
// /device/auth endpoint, the /device page where a person enters the user code, and a second
// client, CLIENT_ID + "-device" with the same secret, allowed the device-code grant.
configuration.features.deviceFlow = { enabled: true };
configuration.clients.push({
  client_id: `${process.env.CLIENT_ID}-device`,
  client_secret: process.env.CLIENT_SECRET,
  grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
});
// private_key_jwt (RFC 7523 section 2.2): with PRIVATE_KEY_JWT_CLIENT_ID set, a second client
// that authenticates to the token, revocation and introspection endpoints with a client
// assertion signed by its private key, checked against PRIVATE_KEY_JWT_JWKS (the public keys,
// a JSON Web Key Set). It has no client secret at all.
if (process.env.PRIVATE_KEY_JWT_CLIENT_ID) {
  configuration.clients.push({
    client_id: process.env.PRIVATE_KEY_JWT_CLIENT_ID,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: JSON.parse(process.env.PRIVATE_KEY_JWT_JWKS),
  });
}

const provider = new Provider(issuer, configuration);
provider.use(async (ctx, next) => {
  await next();
  log({ request: `${ctx.method} ${ctx.path}`, status: ctx.status });
});
for (const event of ['refresh_token.destroyed', 'access_token.destroyed', 'refresh_token.consumed']) {
  provider.on(event, (token) => log({ event, jti: token.jti }));
}
// Token endpoint outcomes: which grant succeeded, and why one was refused (error_detail is
// the provider's reason, e.g. "refresh token already used"); grant.revoked when a whole
// grant ends (revocation, or reuse of a consumed refresh token).
provider.on('grant.success', (ctx) => log({
  event: 'grant.success', grant_type: ctx.oidc.params.grant_type,
}));
provider.on('grant.error', (ctx, error) => log({
  event: 'grant.error',
  grant_type: ctx.oidc?.params?.grant_type,
  error: error.error,
  detail: error.error_detail,
}));
provider.on('grant.revoked', (ctx, grantId) => log({
  event: 'grant.revoked', grant_id: grantId, route: ctx.oidc?.route,
}));
provider.on('server_error', (_ctx, error) => log({ event: 'server_error', message: error.message }));

provider.listen(port, '127.0.0.1', () => log({
  ready: issuer,
  settings: {
    redirect_uris: redirectUris,
    access_token_ttl: configuration.ttl.AccessToken,
    rotate_refresh_token: rotateRefreshToken ?? 'default policy',
    conform_id_token_claims: configuration.conformIdTokenClaims,
  },
}));
