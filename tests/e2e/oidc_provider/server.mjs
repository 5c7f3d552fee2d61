// A real OpenID Connect provider (panva/node-oidc-provider, OpenID Certified) for the
// end-to-end tests. Listens on 127.0.0.1 only; prints one JSON line per request and per
// token event on stdout so the tests can check what the provider received.
//
//   PORT=... CLIENT_ID=... CLIENT_SECRET=... REDIRECT_URI=... node server.mjs
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const log = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

const configuration = {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
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
  ttl: { AccessToken: 3600, IdToken: 3600, RefreshToken: 14 * 24 * 3600 },
  cookies: { keys: ['token-vault-e2e-cookie-key-not-a-secret'] },
};

const provider = new Provider(issuer, configuration);
provider.use(async (ctx, next) => {
  await next();
  log({ request: `${ctx.method} ${ctx.path}`, status: ctx.status });
});
for (const event of ['refresh_token.destroyed', 'access_token.destroyed', 'refresh_token.consumed']) {
  provider.on(event, (token) => log({ event, jti: token.jti }));
}
provider.on('server_error', (_ctx, error) => log({ event: 'server_error', message: error.message }));

provider.listen(port, '127.0.0.1', () => log({ ready: issuer }));
