// TEST-ONLY OAuth 2.0 authorization server for tower-bearer's DPoP (RFC 9449), private_key_jwt
// (RFC 7523) and token exchange (RFC 8693) integration tests: panva's oidc-provider, configured with fixed
// test clients, an automatic "log in as alice and grant everything asked" interaction, a
// platform that signs workload JWTs (for the workload identity tests), and three test
// endpoints (/test/dpop-nonce, /test/stats, /test/platform-token). Never expose it: it listens on 127.0.0.1 only,
// keeps everything in memory, logs every authorization request in as `alice`, and its client
// keys are committed to the repository (tests/keys). See README.md beside this file.
//
//   PORT=8080 node server.mjs      (scripts/test starts it on a free port)
//
// Environment: PORT (required), OIDC_KEYS_DIR (default: ../keys next to this file; scripts/test
// sets it because it runs a copy of this file from target/oidc-provider/).

import {
  createPublicKey, generateKeyPairSync, randomBytes, randomUUID, sign, verify,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const PORT = Number.parseInt(process.env.PORT ?? '', 10);
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  console.error('oidc-provider test server: set PORT to a free TCP port');
  process.exit(2);
}
const HOST = '127.0.0.1';
const ISSUER = `http://${HOST}:${PORT}`;
const KEYS_DIR = process.env.OIDC_KEYS_DIR
  ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'keys');

// The resource server every access token is for (unless a request names another `resource`):
// its access tokens are ES256-signed JWTs (typ at+jwt). JWT access tokens cannot be
// introspected by oidc-provider (unsupported_token_type), so a second resource, OPAQUE_API,
// issues opaque access tokens for the tests that go through the introspection endpoint.
const API = 'http://127.0.0.1/api';
const OPAQUE_API = 'http://127.0.0.1/opaque-api';
const RESOURCE_SCOPES = ['read', 'write'];
const ACCOUNT = 'alice';

// ---------------------------------------------------------------------------------------------
// Keys.

// Public JWK (kid, use: sig) of one of the committed test keys in tests/keys.
function clientJwk(file, kid) {
  const pem = readFileSync(path.join(KEYS_DIR, file));
  return { ...createPublicKey(pem).export({ format: 'jwk' }), kid, use: 'sig' };
}
const ES1 = clientJwk('client-es256.pem', 'es-1');
const ES2 = clientJwk('client-es256-2.pem', 'es-2');
const ED1 = clientJwk('client-ed25519.pem', 'ed-1');
const RSA1 = clientJwk('client-rsa.pem', 'rsa-1');

// The provider's own signing keys: fresh at every start (ES256 for access tokens, RS256 for ID
// tokens). Resource servers fetch them from the jwks_uri.
function providerJwk(type, options, alg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const SIGNING_KEYS = [
  providerJwk('ec', { namedCurve: 'P-256' }, 'ES256', 'op-es256'),
  providerJwk('rsa', { modulusLength: 2048 }, 'RS256', 'op-rs256'),
];

// The platform a workload runs on (a Kubernetes cluster's service-account issuer, say), for the
// workload identity tests: a fresh ES256 key at every start; /test/platform-token hands out
// JWTs it signed, as kubelet would write them to a file.
const PLATFORM_ISSUER = `${ISSUER}/platform`;
const PLATFORM_KEY = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const PLATFORM_JWK = { ...PLATFORM_KEY.publicKey.export({ format: 'jwk' }), kid: 'platform-1', use: 'sig', alg: 'ES256' };
const b64url = (value) => Buffer.from(value).toString('base64url');
function platformToken({ iss, sub, aud, ttl }) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid: PLATFORM_JWK.kid }));
  const claims = b64url(JSON.stringify({ iss, sub, aud, iat: now, exp: now + ttl, jti: randomUUID() }));
  const signature = sign('sha256', Buffer.from(`${header}.${claims}`), { key: PLATFORM_KEY.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${header}.${claims}.${signature.toString('base64url')}`;
}
// The claims of a JWT the platform signed, or null: signature, issuer, audience and expiry
// checked, and each `jti` taken once (as servers that take platform JWTs as a grant do).
const spentJti = new Set();
function platformClaims(jwt, audience) {
  const [header, claims, signature, extra] = String(jwt ?? '').split('.');
  if (!header || !claims || !signature || extra !== undefined) return null;
  const signed = verify('sha256', Buffer.from(`${header}.${claims}`),
    { key: PLATFORM_KEY.publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(signature, 'base64url'));
  if (!signed) return null;
  let payload;
  try { payload = JSON.parse(Buffer.from(claims, 'base64url').toString('utf8')); } catch { return null; }
  if (payload.iss !== PLATFORM_ISSUER || payload.aud !== audience) return null;
  if (typeof payload.exp !== 'number' || payload.exp <= Math.floor(Date.now() / 1000)) return null;
  if (typeof payload.jti !== 'string' || spentJti.has(payload.jti)) return null;
  spentJti.add(payload.jti);
  return payload;
}

// ---------------------------------------------------------------------------------------------
// Clients.

const CODE_CLIENT = {
  grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
  redirect_uris: ['http://127.0.0.1/callback'],
  response_types: ['code'],
  scope: 'openid offline_access read write',
  dpop_bound_access_tokens: true,
};
const PKJWT_CLIENT = {
  token_endpoint_auth_method: 'private_key_jwt',
  grant_types: ['client_credentials'],
  response_types: [],
  scope: 'read write',
};
const clients = [
  { client_id: 'pkjwt-es256', ...PKJWT_CLIENT, jwks: { keys: [ES1, ES2] } },
  { client_id: 'pkjwt-ed25519', ...PKJWT_CLIENT, jwks: { keys: [ED1] } },
  // No token_endpoint_auth_signing_alg: RS256 and PS256 assertions are both accepted.
  { client_id: 'pkjwt-rsa', ...PKJWT_CLIENT, jwks: { keys: [RSA1] } },
  {
    client_id: 'dpop-secret',
    client_secret: 'dpop-secret-value',
    token_endpoint_auth_method: 'client_secret_basic',
    ...CODE_CLIENT,
  },
  {
    // For the nonce tests alone, so that turning nonces on for it touches no other test.
    client_id: 'dpop-nonce',
    client_secret: 'dpop-nonce-value',
    token_endpoint_auth_method: 'client_secret_basic',
    ...CODE_CLIENT,
  },
  {
    client_id: 'code-pkjwt',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [ES1] },
    ...CODE_CLIENT,
  },
  {
    // Not DPoP-bound: a DPoP proof is optional (with one, the token is bound all the same).
    client_id: 'bearer-secret',
    client_secret: 'bearer-secret-value',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    scope: 'read write',
  },
  {
    // A gateway: exchanges the access tokens of other clients for tokens of its own (RFC 8693).
    client_id: 'exchanger',
    client_secret: 'exchanger-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['urn:ietf:params:oauth:grant-type:token-exchange'],
    response_types: [],
    scope: 'read write',
  },
  {
    // A workload that authenticates with a JWT its platform signed (RFC 7523 §2.2): the
    // platform's key is the client's key, and its JWTs name the client as iss and sub.
    client_id: 'workload',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [PLATFORM_JWK] },
    grant_types: ['client_credentials'],
    response_types: [],
    scope: 'read write',
  },
  {
    // Trades a platform JWT for a token with the JWT bearer grant (RFC 7523 §2.1); a public
    // client: the assertion is its credential.
    client_id: 'jwt-bearer',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:jwt-bearer'],
    response_types: [],
    scope: 'read write',
  },
  {
    // Calls the introspection endpoint for a test resource server; no grants of its own.
    client_id: 'introspector',
    client_secret: 'introspector-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
  },
];

// ---------------------------------------------------------------------------------------------
// Test-only state: the DPoP nonce toggle and the counters of /test/stats.

const nonce = { all: false, clients: new Set() };

const stats = {
  token_requests: {}, // client_id -> grant_type -> count (answered 200 or not)
  token_errors: {}, // client_id -> OAuth error code -> count
  use_dpop_nonce: 0, // token requests answered 400 use_dpop_nonce
  invalid_client: 0, // token requests that failed client authentication
};
function bump(table, a, b) {
  table[a] ??= {};
  table[a][b] = (table[a][b] ?? 0) + 1;
}
function tokenRequestLabels(ctx) {
  const oidc = ctx.oidc;
  const clientId = oidc?.client?.clientId
    ?? (typeof oidc?.params?.client_id === 'string' ? oidc.params.client_id : undefined)
    ?? '(unknown)';
  const grantType = typeof oidc?.params?.grant_type === 'string' ? oidc.params.grant_type : '(none)';
  return { clientId, grantType };
}

// ---------------------------------------------------------------------------------------------
// The provider.

const epochTime = () => Math.floor(Date.now() / 1000);

function getResourceServerInfo(ctx, resource) {
  if (resource === API) {
    return {
      scope: RESOURCE_SCOPES.join(' '),
      audience: API,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: 'ES256' } },
    };
  }
  if (resource === OPAQUE_API) {
    return {
      scope: RESOURCE_SCOPES.join(' '),
      audience: OPAQUE_API,
      accessTokenFormat: 'opaque',
    };
  }
  throw new errors.InvalidTarget();
}

const provider = new Provider(ISSUER, {
  clients,
  jwks: { keys: SIGNING_KEYS },
  responseTypes: ['code'],
  // Client `scope` metadata may only name scopes listed here.
  scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES],
  clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post', 'none'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['ES256', 'ES384', 'Ed25519', 'EdDSA', 'RS256', 'PS256'],
    dPoPSigningAlgValues: ['ES256', 'ES384', 'Ed25519', 'EdDSA', 'RS256', 'PS256'],
  },
  features: {
    devInteractions: { enabled: false }, // replaced by the automatic interaction below
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: (ctx) => nonce.all || nonce.clients.has(ctx.oidc?.client?.clientId),
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? API,
      getResourceServerInfo,
      useGrantedResource: () => true,
    },
  },
  // Every code grant of a client allowed the refresh_token grant gets a refresh token (without
  // this, only requests with offline_access, which OpenID Connect drops unless prompt=consent).
  issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  pkce: { required: () => true },
  findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 3600,
    AuthorizationCode: 60,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    Grant: 14 * 24 * 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
  },
});

// Token exchange (RFC 8693), through oidc-provider's documented extension point for grant types
// (Provider#registerGrantType). The subject token must be an access token this server issued,
// found by the provider's own models and not expired, or a JWT the test platform signed for
// this server (type jwt); the issued token is an opaque access token of the requesting client,
// living no longer than the subject token, and the exchange is refused for any other subject
// token type.
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  let subject;
  if (params.subject_token_type === JWT_TOKEN_TYPE) {
    // A workload's platform JWT (see /test/platform-token?sub=): checked as the JWT bearer
    // grant checks it, each taken once.
    const claims = platformClaims(params.subject_token, ISSUER);
    if (!claims) throw new errors.InvalidGrant('subject_token is not a valid, unused platform JWT');
    subject = { exp: claims.exp, clientId: `platform:${claims.sub}` };
  } else if (params.subject_token_type === ACCESS_TOKEN_TYPE) {
    subject = await provider.ClientCredentials.find(params.subject_token)
      ?? await provider.AccessToken.find(params.subject_token);
    if (!subject || subject.isExpired) {
      throw new errors.InvalidGrant('subject_token is not an active access token of this server');
    }
  } else {
    throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE} or ${JWT_TOKEN_TYPE}`);
  }
  const requested = String(params.scope ?? '').split(' ').filter(Boolean);
  const allowed = new Set(String(client.scope ?? '').split(' '));
  if (requested.some((scope) => !allowed.has(scope))) throw new errors.InvalidScope('scope not allowed');
  const token = new provider.ClientCredentials({ client, scope: requested.join(' ') || undefined });
  const subjectLeft = subject.exp - epochTime();
  const value = await token.save();
  console.log(`token exchange client=${client.clientId}: subject of client ${subject.clientId} exchanged`);
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: Math.min(token.expiration, subjectLeft),
    scope: token.scope,
  };
}, ['scope', 'audience', 'resource', 'requested_token_type', 'subject_token', 'subject_token_type',
  'actor_token', 'actor_token_type'], ['audience', 'resource']);

// The JWT bearer grant (RFC 7523 §2.1), through the same extension point: the assertion must
// be a JWT the platform signed for this server (its audience is the issuer), unexpired, its
// `jti` never seen; the issued token is an opaque access token of the requesting client whose
// subject is the assertion's.
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
provider.registerGrantType(JWT_BEARER, async (ctx) => {
  const { params, client } = ctx.oidc;
  const claims = platformClaims(params.assertion, ISSUER);
  if (!claims) throw new errors.InvalidGrant('assertion is not a valid, unused platform JWT for this server');
  const requested = String(params.scope ?? '').split(' ').filter(Boolean);
  const allowed = new Set(String(client.scope ?? '').split(' '));
  if (requested.some((scope) => !allowed.has(scope))) throw new errors.InvalidScope('scope not allowed');
  const token = new provider.ClientCredentials({ client, scope: requested.join(' ') || undefined });
  const value = await token.save();
  console.log(`token jwt-bearer client=${client.clientId}: platform subject ${claims.sub}`);
  ctx.body = {
    access_token: value,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}, ['scope', 'assertion']);

provider.on('grant.success', (ctx) => {
  const { clientId, grantType } = tokenRequestLabels(ctx);
  bump(stats.token_requests, clientId, grantType);
  const bound = ctx.body?.token_type === 'DPoP' ? ' (DPoP)' : '';
  console.log(`token ${grantType} client=${clientId}: 200${bound}`);
});
provider.on('grant.error', (ctx, err) => {
  const { clientId, grantType } = tokenRequestLabels(ctx);
  bump(stats.token_requests, clientId, grantType);
  bump(stats.token_errors, clientId, err.error ?? 'unknown');
  if (err.error === 'use_dpop_nonce') stats.use_dpop_nonce += 1;
  if (err.error === 'invalid_client') stats.invalid_client += 1;
  // error_detail says why client authentication failed (never the assertion or the secret).
  const detail = err.error_detail ? ` [${err.error_detail}]` : '';
  console.log(`token ${grantType} client=${clientId}: ${err.statusCode} ${err.error}: ${err.error_description}${detail}`);
});
for (const event of ['introspection.error', 'revocation.error', 'authorization.error']) {
  provider.on(event, (ctx, err) => console.log(`${event}: ${err.error}: ${err.error_description}`));
}
provider.on('server_error', (ctx, err) => {
  if (ctx.oidc?.route === 'token') {
    const { clientId, grantType } = tokenRequestLabels(ctx);
    bump(stats.token_requests, clientId, grantType);
    bump(stats.token_errors, clientId, 'server_error');
  }
  console.error('server_error:', err);
});

// ---------------------------------------------------------------------------------------------
// Test-only routes, in front of the provider's own.

function isLoopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

// The automatic interaction: whatever the authorization request asked for is granted to `alice`
// at once. The interaction is found by the uid in the path (not by its cookie) so that clients
// without a cookie jar get through too.
async function autoInteraction(ctx, uid) {
  const interaction = await provider.Interaction.find(uid);
  if (!interaction) {
    ctx.status = 404;
    ctx.body = { error: 'interaction not found or expired' };
    return;
  }
  const { params } = interaction;
  const requested = new Set(String(params.scope ?? '').split(' ').filter(Boolean));

  let grant;
  if (interaction.grantId) grant = await provider.Grant.find(interaction.grantId);
  grant ??= new provider.Grant({ accountId: ACCOUNT, clientId: params.client_id });

  // `scopes` below lists read and write too, so they are OIDC scopes as well as the resource
  // server's: grant every requested one both ways.
  const details = interaction.prompt?.details ?? {};
  const oidcScopes = new Set([...requested, ...(details.missingOIDCScope ?? [])]);
  if (oidcScopes.size) grant.addOIDCScope([...oidcScopes].join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);

  const resourceScopes = RESOURCE_SCOPES.filter((s) => requested.has(s));
  let resources = params.resource === undefined ? [API] : params.resource;
  if (!Array.isArray(resources)) resources = [resources];
  if (resourceScopes.length) {
    for (const resource of resources) grant.addResourceScope(resource, resourceScopes.join(' '));
  }
  for (const [resource, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  const grantId = await grant.save();

  interaction.result = { login: { accountId: ACCOUNT }, consent: { grantId } };
  // Forget the session the interaction started from: a client without a cookie jar comes back
  // without its session cookie, and the provider would refuse the resume as a session mismatch.
  delete interaction.session;
  await interaction.save(Math.max(interaction.exp - epochTime(), 1));
  console.log(`interaction ${uid}: client=${params.client_id} logged in as ${ACCOUNT}, granted "${[...requested].join(' ')}"`);
  ctx.status = 303;
  ctx.redirect(interaction.returnTo);
}

provider.use(async (ctx, next) => {
  const { method } = ctx;
  const interaction = /^\/interaction\/([A-Za-z0-9_-]+)$/.exec(ctx.path);
  if (interaction && (method === 'GET' || method === 'POST')) {
    await autoInteraction(ctx, interaction[1]);
    return;
  }

  // Resuming an authorization request at /auth/<uid> needs the _interaction_resume cookie set
  // by the first redirect; supply it for clients without a cookie jar (test-only).
  const resume = /^\/auth\/([A-Za-z0-9_-]+)$/.exec(ctx.path);
  if (resume && method === 'GET') {
    const name = provider.cookieName('resume');
    const cookie = ctx.req.headers.cookie;
    if (!cookie || !cookie.split(/;\s*/).some((c) => c.startsWith(`${name}=`))) {
      ctx.req.headers.cookie = `${cookie ? `${cookie}; ` : ''}${name}=${resume[1]}`;
    }
  }

  if (ctx.path.startsWith('/test/')) {
    if (!isLoopback(ctx.req.socket.remoteAddress)) {
      ctx.status = 403;
      return;
    }
    if (ctx.path === '/test/dpop-nonce' && method === 'POST') {
      const { required, client_id: clientId } = ctx.query;
      if (required !== 'true' && required !== 'false') {
        ctx.status = 400;
        ctx.body = { error: 'required must be true or false' };
        return;
      }
      if (typeof clientId === 'string') {
        if (required === 'true') nonce.clients.add(clientId);
        else nonce.clients.delete(clientId);
      } else {
        nonce.all = required === 'true';
      }
      console.log(`test: DPoP nonce required=${required}${typeof clientId === 'string' ? ` for ${clientId}` : ''}`);
      ctx.body = { required: nonce.all, clients: [...nonce.clients].sort() };
      return;
    }
    if (ctx.path === '/test/platform-token' && method === 'GET') {
      // A JWT the platform signed: for client authentication, iss and sub are the client id
      // and aud the issuer (?client=workload); for the JWT bearer grant, the platform is the
      // issuer and ?sub= names the workload.
      const ttl = Number.parseInt(ctx.query.ttl ?? '600', 10);
      const client = ctx.query.client;
      ctx.type = 'application/jwt';
      ctx.body = typeof client === 'string'
        ? platformToken({ iss: client, sub: client, aud: ISSUER, ttl })
        : platformToken({ iss: PLATFORM_ISSUER, sub: String(ctx.query.sub ?? 'workload'), aud: ISSUER, ttl });
      return;
    }
    if (ctx.path === '/test/stats' && method === 'GET') {
      ctx.body = { ...stats, dpop_nonce_required: nonce.all, dpop_nonce_required_clients: [...nonce.clients].sort() };
      return;
    }
    ctx.status = 404;
    ctx.body = { error: 'no such test endpoint' };
    return;
  }

  await next();
});

const server = provider.listen(PORT, HOST, () => {
  console.log(`oidc-provider test server: issuer ${ISSUER}, clients ${clients.map((c) => c.client_id).join(', ')}`);
});
server.on('error', (err) => {
  console.error(`oidc-provider test server: ${err.message}`);
  process.exit(1);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
