// Manual end-to-end check of the TEST-ONLY authorization server in server.mjs (not run by
// scripts/test; see README.md). Talks to a running server with fetch and jose:
//
//   TOWER_BEARER_OIDC=http://127.0.0.1:PORT node smoke.mjs
//
// Exits non-zero on the first failed check. It flips the server's DPoP nonce toggle, so do not
// run it while the Rust tests run against the same server.

import { createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  SignJWT, calculateJwkThumbprint, createRemoteJWKSet, decodeJwt, decodeProtectedHeader,
  exportJWK, generateKeyPair, jwtVerify,
} from 'jose';

const BASE = process.env.TOWER_BEARER_OIDC;
if (!BASE) {
  console.error('set TOWER_BEARER_OIDC to the server\'s base URL');
  process.exit(2);
}
const KEYS_DIR = process.env.OIDC_KEYS_DIR
  ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'keys');
const API = 'http://127.0.0.1/api';
const OPAQUE_API = 'http://127.0.0.1/opaque-api';
const REDIRECT_URI = 'http://127.0.0.1/callback';

let checks = 0;
function check(condition, what, detail) {
  if (!condition) {
    console.error(`FAIL: ${what}`, detail === undefined ? '' : detail);
    process.exit(1);
  }
  checks += 1;
  console.log(`ok: ${what}`);
}

const discovery = await (await fetch(`${BASE}/.well-known/openid-configuration`)).json();
const ISSUER = discovery.issuer;
const TOKEN = discovery.token_endpoint;
const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri));

const key = (file) => createPrivateKey(readFileSync(path.join(KEYS_DIR, file)));
const KEYS = {
  'es-1': key('client-es256.pem'),
  'es-2': key('client-es256-2.pem'),
  'ed-1': key('client-ed25519.pem'),
  'rsa-1': key('client-rsa.pem'),
};

// RFC 7523 client assertion.
function assertion(clientId, kid, alg, { aud = ISSUER, exp = '60s', jti = randomBytes(16).toString('hex') } = {}) {
  const jwt = new SignJWT({})
    .setProtectedHeader({ alg, kid })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(aud)
    .setJti(jti)
    .setIssuedAt();
  if (exp !== null) jwt.setExpirationTime(exp);
  return jwt.sign(KEYS[kid]);
}
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

// DPoP (RFC 9449) proof key and proofs.
const dpopKey = await generateKeyPair('ES256');
const dpopJwk = await exportJWK(dpopKey.publicKey);
const JKT = await calculateJwkThumbprint(dpopJwk);
function proof(htm, htu, { nonce, ath } = {}) {
  return new SignJWT({ htm, htu, ...(nonce ? { nonce } : {}), ...(ath ? { ath } : {}) })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: dpopJwk })
    .setJti(randomBytes(16).toString('hex'))
    .setIssuedAt()
    .sign(dpopKey.privateKey);
}

const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

async function post(url, form, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', ...headers },
    body: new URLSearchParams(form).toString(),
  });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, headers: res.headers, body };
}

async function checkAccessToken(token, what, resource = API) {
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer: ISSUER, audience: resource, typ: 'at+jwt' });
  check(protectedHeader.alg === 'ES256', `${what}: JWT access token signed ES256`);
  check(payload.cnf?.jkt === JKT, `${what}: cnf.jkt is the proof key's thumbprint`, payload);
  return payload;
}

const stats0 = await (await fetch(`${BASE}/test/stats`)).json();

// (a) client_credentials with private_key_jwt, each key, with a DPoP proof.
for (const [clientId, kid, alg] of [
  ['pkjwt-es256', 'es-1', 'ES256'],
  ['pkjwt-es256', 'es-2', 'ES256'],
  ['pkjwt-ed25519', 'ed-1', 'EdDSA'],
  ['pkjwt-ed25519', 'ed-1', 'Ed25519'],
  ['pkjwt-rsa', 'rsa-1', 'RS256'],
  ['pkjwt-rsa', 'rsa-1', 'PS256'],
]) {
  const res = await post(TOKEN, {
    grant_type: 'client_credentials',
    scope: 'read write',
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: await assertion(clientId, kid, alg),
  }, { DPoP: await proof('POST', TOKEN) });
  check(res.status === 200 && res.body.token_type === 'DPoP', `${clientId} ${kid} ${alg}: 200 DPoP`, res.body);
  const claims = await checkAccessToken(res.body.access_token, `${clientId} ${kid} ${alg}`);
  if (kid === 'es-1') console.log('  JWT access token header', decodeProtectedHeader(res.body.access_token), 'claims', claims, 'response', { ...res.body, access_token: '...' });
}

// Assertion rules: which aud values are accepted, jti reuse, exp.
{
  const ccForm = async (opts) => ({
    grant_type: 'client_credentials',
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: await assertion('pkjwt-es256', 'es-1', 'ES256', opts),
  });
  for (const aud of [ISSUER, TOKEN, [ISSUER, 'https://elsewhere.example'], `${ISSUER}/`]) {
    const res = await post(TOKEN, await ccForm({ aud }), { DPoP: await proof('POST', TOKEN) });
    console.log(`  aud ${JSON.stringify(aud)}: ${res.status} ${res.body.error ?? ''} ${res.body.error_description ?? ''}`);
  }
  const jti = randomBytes(8).toString('hex');
  const first = await post(TOKEN, await ccForm({ jti }), { DPoP: await proof('POST', TOKEN) });
  const again = await post(TOKEN, await ccForm({ jti }), { DPoP: await proof('POST', TOKEN) });
  check(first.status === 200 && again.status === 401 && again.body.error === 'invalid_client', 'a reused assertion jti is invalid_client', again.body);
  const noExp = await post(TOKEN, await ccForm({ exp: null }), { DPoP: await proof('POST', TOKEN) });
  check(noExp.status === 401, 'an assertion without exp is invalid_client', noExp.body);
  const longExp = await post(TOKEN, await ccForm({ exp: '365d' }), { DPoP: await proof('POST', TOKEN) });
  console.log(`  exp in a year: ${longExp.status} ${longExp.body.error ?? ''}`);
  const unknownKid = await post(TOKEN, {
    grant_type: 'client_credentials',
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: await new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'es-9' }).setIssuer('pkjwt-es256').setSubject('pkjwt-es256').setAudience(ISSUER).setJti('x' + Date.now()).setExpirationTime('60s').sign(KEYS['es-1']),
  }, { DPoP: await proof('POST', TOKEN) });
  check(unknownKid.status === 401, 'an assertion with an unregistered kid is invalid_client', unknownKid.body);
  const noProof = await post(TOKEN, await ccForm({}));
  console.log(`  pkjwt-es256 without a DPoP proof: ${noProof.status} token_type=${noProof.body.token_type}`);
  // A DPoP-bound client must send a proof.
  const noProof2 = await post(TOKEN, { grant_type: 'client_credentials' }, { authorization: basic('dpop-secret', 'dpop-secret-value') });
  console.log(`  dpop-secret without a DPoP proof: ${noProof2.status} ${JSON.stringify(noProof2.body)}`);
}

// (b) The nonce toggle.
{
  let r = await fetch(`${BASE}/test/dpop-nonce?required=true`, { method: 'POST' });
  check(r.status === 200, 'nonce toggle on', await r.text());
  const form = async () => ({
    grant_type: 'client_credentials',
    scope: 'read',
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: await assertion('pkjwt-es256', 'es-1', 'ES256'),
  });
  const first = await post(TOKEN, await form(), { DPoP: await proof('POST', TOKEN) });
  const nonce = first.headers.get('dpop-nonce');
  console.log('  use_dpop_nonce answer:', first.status, JSON.stringify(first.body), Object.fromEntries(first.headers));
  check(first.status === 400 && first.body.error === 'use_dpop_nonce' && nonce, 'without a nonce: 400 use_dpop_nonce with DPoP-Nonce');
  const retry = await post(TOKEN, await form(), { DPoP: await proof('POST', TOKEN, { nonce }) });
  check(retry.status === 200 && retry.body.token_type === 'DPoP', 'the retry with the nonce: 200', retry.body);
  console.log('  DPoP-Nonce on the 200:', retry.headers.get('dpop-nonce'));
  const bad = await post(TOKEN, await form(), { DPoP: await proof('POST', TOKEN, { nonce: 'bogus' }) });
  console.log('  a bad nonce:', bad.status, JSON.stringify(bad.body), 'DPoP-Nonce', !!bad.headers.get('dpop-nonce'));
  r = await fetch(`${BASE}/test/dpop-nonce?required=false`, { method: 'POST' });
  check(r.status === 200, 'nonce toggle off', await r.text());
  // Per client.
  await fetch(`${BASE}/test/dpop-nonce?required=true&client_id=pkjwt-ed25519`, { method: 'POST' });
  const other = await post(TOKEN, await form(), { DPoP: await proof('POST', TOKEN) });
  check(other.status === 200, 'the per-client toggle leaves other clients alone', other.body);
  const ed = await post(TOKEN, {
    grant_type: 'client_credentials',
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: await assertion('pkjwt-ed25519', 'ed-1', 'EdDSA'),
  }, { DPoP: await proof('POST', TOKEN) });
  check(ed.status === 400 && ed.body.error === 'use_dpop_nonce', 'the per-client toggle applies to its client', ed.body);
  await fetch(`${BASE}/test/dpop-nonce?required=false&client_id=pkjwt-ed25519`, { method: 'POST' });
}

// (c) Authorization code with PKCE S256 and dpop_jkt, following redirects.
async function authorize(clientId, { jar } = {}) {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const state = randomBytes(8).toString('hex');
  const url = new URL(discovery.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: REDIRECT_URI,
    scope: 'openid offline_access read write',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    dpop_jkt: JKT,
  }).toString();
  let location = url.href;
  const hops = [];
  for (let i = 0; i < 10 && !location.startsWith(REDIRECT_URI); i += 1) {
    const headers = jar && jar.size ? { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } : {};
    const res = await fetch(location, { redirect: 'manual', headers });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const [k, v] = pair.split('=');
      if (jar) jar.set(k, v);
    }
    hops.push(`${res.status} ${new URL(location).pathname}`);
    if (res.status < 300 || res.status >= 400) {
      check(false, `redirects from the authorization URL (${hops.join(' -> ')})`, await res.text());
    }
    location = new URL(res.headers.get('location'), location).href;
  }
  const back = new URL(location);
  console.log(`  ${clientId}${jar ? ' (cookie jar)' : ''}: ${hops.join(' -> ')} -> ${back.origin}${back.pathname}?${[...back.searchParams.keys()].join('&')}`);
  check(back.searchParams.get('state') === state && back.searchParams.get('code'), `${clientId}: back at redirect_uri with code and state`, location);
  return { code: back.searchParams.get('code'), verifier, iss: back.searchParams.get('iss') };
}

for (const [clientId, auth] of [
  ['dpop-secret', async () => ({ headers: { authorization: basic('dpop-secret', 'dpop-secret-value') }, form: {} })],
  ['code-pkjwt', async () => ({ headers: {}, form: { client_assertion_type: ASSERTION_TYPE, client_assertion: await assertion('code-pkjwt', 'es-1', 'ES256') } })],
]) {
  for (const jar of [undefined, new Map()]) {
    const { code, verifier, iss } = await authorize(clientId, { jar });
    check(iss === ISSUER, `${clientId}: iss on the redirect`);
    let a = await auth();
    const exchanged = await post(TOKEN, {
      grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: REDIRECT_URI, ...a.form,
    }, { ...a.headers, DPoP: await proof('POST', TOKEN) });
    check(exchanged.status === 200 && exchanged.body.token_type === 'DPoP' && exchanged.body.refresh_token, `${clientId}: code exchange -> DPoP access token + refresh token`, exchanged.body);
    const claims = await checkAccessToken(exchanged.body.access_token, `${clientId} code`);
    if (!jar && clientId === 'dpop-secret') console.log('  code grant: response', { ...exchanged.body, access_token: '...', refresh_token: '...', id_token: exchanged.body.id_token ? '...' : undefined }, 'access token claims', claims, 'id_token claims', exchanged.body.id_token && decodeJwt(exchanged.body.id_token));
    a = await auth();
    const refreshed = await post(TOKEN, { grant_type: 'refresh_token', refresh_token: exchanged.body.refresh_token, ...a.form }, { ...a.headers, DPoP: await proof('POST', TOKEN) });
    check(refreshed.status === 200 && refreshed.body.refresh_token && refreshed.body.refresh_token !== exchanged.body.refresh_token, `${clientId}: refresh -> rotated refresh token`, refreshed.body);
    await checkAccessToken(refreshed.body.access_token, `${clientId} refresh`);
    a = await auth();
    const reused = await post(TOKEN, { grant_type: 'refresh_token', refresh_token: exchanged.body.refresh_token, ...a.form }, { ...a.headers, DPoP: await proof('POST', TOKEN) });
    check(reused.status === 400 && reused.body.error === 'invalid_grant', `${clientId}: the old refresh token is invalid_grant`, reused.body);
    a = await auth();
    const revoked = await post(TOKEN, { grant_type: 'refresh_token', refresh_token: refreshed.body.refresh_token, ...a.form }, { ...a.headers, DPoP: await proof('POST', TOKEN) });
    check(revoked.status === 400 && revoked.body.error === 'invalid_grant', `${clientId}: reusing the old one revoked the grant: the rotated one is invalid_grant too`, revoked.body);
    if (!jar && clientId === 'dpop-secret') {
      // dpop_jkt: the code is bound to JKT; another key is refused.
      const other = await generateKeyPair('ES256');
      const otherJwk = await exportJWK(other.publicKey);
      const { code: code2, verifier: verifier2 } = await authorize(clientId);
      const wrong = await post(TOKEN, { grant_type: 'authorization_code', code: code2, code_verifier: verifier2, redirect_uri: REDIRECT_URI }, {
        ...a.headers,
        DPoP: await new SignJWT({ htm: 'POST', htu: TOKEN }).setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: otherJwk }).setJti('j' + Date.now()).setIssuedAt().sign(other.privateKey),
      });
      check(wrong.status === 400, 'dpop_jkt honoured: a proof with another key is refused', wrong.body);
      console.log('  another key than dpop_jkt:', JSON.stringify(wrong.body));
      const noPkce = await fetch(`${discovery.authorization_endpoint}?response_type=code&client_id=dpop-secret&redirect_uri=${encodeURIComponent(REDIRECT_URI)}&scope=read&state=s`, { redirect: 'manual' });
      console.log('  without PKCE:', noPkce.status, noPkce.headers.get('location'));
      check(noPkce.status === 303 && /error=invalid_request/.test(noPkce.headers.get('location')), 'PKCE is required');
    }
  }
}

// (d) Introspection by `introspector`: an opaque DPoP-bound token (resource OPAQUE_API) shows cnf.jkt.
{
  const opaque = await post(TOKEN, { grant_type: 'client_credentials', scope: 'read', resource: OPAQUE_API }, {
    authorization: basic('dpop-secret', 'dpop-secret-value'), DPoP: await proof('POST', TOKEN),
  });
  check(opaque.status === 200 && opaque.body.token_type === 'DPoP' && !opaque.body.access_token.includes('.'), 'resource=opaque-api: an opaque DPoP access token', opaque.body);
  const intro = await post(discovery.introspection_endpoint, { token: opaque.body.access_token }, { authorization: basic('introspector', 'introspector-secret') });
  console.log('  introspection of the opaque token:', JSON.stringify(intro.body));
  check(intro.status === 200 && intro.body.active === true && intro.body.cnf?.jkt === JKT && intro.body.token_type === 'DPoP', 'introspection shows active, token_type DPoP, cnf.jkt');
  const jwt = await post(TOKEN, { grant_type: 'client_credentials', scope: 'read' }, {
    authorization: basic('dpop-secret', 'dpop-secret-value'), DPoP: await proof('POST', TOKEN),
  });
  const introJwt = await post(discovery.introspection_endpoint, { token: jwt.body.access_token }, { authorization: basic('introspector', 'introspector-secret') });
  console.log('  introspection of a JWT access token:', introJwt.status, JSON.stringify(introJwt.body));
  const bad = await post(discovery.introspection_endpoint, { token: 'nope' }, { authorization: basic('introspector', 'introspector-secret') });
  check(bad.status === 200 && bad.body.active === false, 'introspection of an unknown token: active false', bad.body);
  // Revocation of the opaque token, then introspection says inactive.
  const rev = await post(discovery.revocation_endpoint, { token: opaque.body.access_token }, { authorization: basic('dpop-secret', 'dpop-secret-value') });
  const after = await post(discovery.introspection_endpoint, { token: opaque.body.access_token }, { authorization: basic('introspector', 'introspector-secret') });
  check(rev.status === 200 && after.body.active === false, 'revoked opaque token: inactive', { rev: rev.body, after: after.body });
}

// (e) bearer-secret without DPoP.
{
  const res = await post(TOKEN, { grant_type: 'client_credentials', scope: 'read write' }, { authorization: basic('bearer-secret', 'bearer-secret-value') });
  check(res.status === 200 && res.body.token_type === 'Bearer', 'bearer-secret without a proof: Bearer', res.body);
  check(decodeJwt(res.body.access_token).cnf === undefined, 'bearer token: no cnf');
  const wrong = await post(TOKEN, { grant_type: 'client_credentials' }, { authorization: basic('bearer-secret', 'wrong') });
  console.log('  wrong secret:', wrong.status, JSON.stringify(wrong.body), 'WWW-Authenticate:', wrong.headers.get('www-authenticate'));
  check(wrong.status === 401 && wrong.body.error === 'invalid_client', 'wrong secret: 401 invalid_client');
}

// (f) Stats.
{
  const stats = await (await fetch(`${BASE}/test/stats`)).json();
  console.log('  /test/stats:', JSON.stringify(stats, null, 2));
  const delta = (s, c, g) => (s.token_requests[c]?.[g] ?? 0);
  check(delta(stats, 'pkjwt-es256', 'client_credentials') - delta(stats0, 'pkjwt-es256', 'client_credentials') >= 10, 'stats count pkjwt-es256 client_credentials');
  check(stats.use_dpop_nonce - stats0.use_dpop_nonce === 3, 'stats count use_dpop_nonce', stats.use_dpop_nonce);
  check(stats.invalid_client - stats0.invalid_client >= 4, 'stats count invalid_client', stats.invalid_client);
  check(delta(stats, 'dpop-secret', 'refresh_token') - delta(stats0, 'dpop-secret', 'refresh_token') === 6, 'stats count dpop-secret refresh_token');
}

console.log(`smoke: ${checks} checks passed`);
