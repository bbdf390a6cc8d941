// The built-in authorization server, seen from confidential clients (docs/oauth.md):
// client_credentials with private_key_jwt / client_secret_basic / tls_client_auth,
// sender-constrained tokens (mTLS and DPoP), revocation, introspection, PAR,
// signing-key rotation and token endpoint hygiene.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { execFileSync } from 'node:child_process';
import {
  startServer, stopAndClean, diagnose, request, runCli, sleep, mintToken, forgeJwt, sqlite,
  assertOutcome, assertStatus, describeRes, b64u,
} from './lib.mjs';

const OAUTH_CONFIG = '[oauth]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// Servers

/**
 * A server with the OAuth config. With clientCa, it is started once to create the
 * data dir (and DATA/tls/ca.pem), then restarted with [tls] client_ca_file = that CA.
 */
async function startOAuthServer(name, { clientCa = false } = {}) {
  let srv = await startServer({ name, config: OAUTH_CONFIG });
  if (clientCa) {
    const { root, dataDir } = srv;
    const e = await srv.stop();
    assert.deepEqual(e, { code: 0, signal: null }, `${name}: first start did not exit cleanly`);
    srv = await startServer({
      name, root, dataDir,
      config: `${OAUTH_CONFIG}jwks_ca_file = "${dataDir}/tls/ca.pem"\n[tls]\nclient_ca_file = "${dataDir}/tls/ca.pem"\n`,
    });
  }
  const d = await request(srv, 'GET', '/.well-known/openid-configuration', { accept: 'application/json' });
  assertStatus(d, 200, 'discovery');
  srv.issuer = d.json.issuer;
  assert.match(srv.issuer, /^https:\/\/(127\.0\.0\.1|localhost):\d+$/, `issuer ${srv.issuer}`);
  assert.equal(d.json.token_endpoint, `${srv.issuer}/token`);
  srv.tokenUrl = `${srv.issuer}/token`;
  srv.allSecrets = [];
  return srv;
}

// ---------------------------------------------------------------------------
// CLI

function cli(srv, args, what = '') {
  const r = runCli(args);
  assert.equal(r.code, 0, `${what} fhirward ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Registers a client; returns its secret when one is printed. */
function addClient(srv, clientId, args) {
  const out = cli(srv, ['clients', 'add', '--data-dir', srv.dataDir, '--client-id', clientId, ...args]);
  const m = /client_secret: (\S+)/.exec(out);
  if (m) (srv.allSecrets ||= []).push(m[1]);
  return m ? m[1] : undefined;
}

// ---------------------------------------------------------------------------
// Keys and JWTs

const HASH = { ES256: 'sha256', ES384: 'sha384', RS256: 'sha256', RS384: 'sha384', PS256: 'sha256' };

function newKey(alg, kid = `${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}`) {
  let pair;
  if (alg === 'ES256') pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  else if (alg === 'ES384') pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  else pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...pair.publicKey.export({ format: 'jwk' }), alg, kid, use: 'sig' };
  return { alg, kid, privateKey: pair.privateKey, publicKey: pair.publicKey, jwk };
}

function signInput(input, key, alg) {
  const data = Buffer.from(input);
  if (alg === 'EdDSA') return crypto.sign(null, data, key);
  if (alg.startsWith('ES')) return crypto.sign(HASH[alg], data, { key, dsaEncoding: 'ieee-p1363' });
  if (alg.startsWith('PS')) {
    return crypto.sign(HASH[alg], data, { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  }
  return crypto.sign(HASH[alg], data, key);
}

/** Compact JWS. alg 'none' -> empty signature; 'HS256' -> HMAC with hmacSecret. */
function signJwt(header, claims, { key, hmacSecret } = {}) {
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
  let sig;
  if (header.alg === 'none') sig = Buffer.alloc(0);
  else if (header.alg === 'HS256') sig = crypto.createHmac('sha256', hmacSecret).update(input).digest();
  else sig = signInput(input, key, header.alg);
  return `${input}.${b64u(sig)}`;
}

function decodeJwt(tok) {
  const [h, p] = tok.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), claims: JSON.parse(Buffer.from(p, 'base64url')) };
}

/**
 * An RFC 7523 client assertion by `key` for `clientId`. opts: header (merged),
 * claims (merged; undefined deletes), signKey (another private key), hmacSecret.
 */
function clientAssertion(srv, clientId, key, opts = {}) {
  const t = now();
  const header = { alg: key.alg, kid: key.kid, typ: 'JWT', ...(opts.header || {}) };
  const claims = { iss: clientId, sub: clientId, aud: srv.tokenUrl, iat: t, exp: t + 60, jti: crypto.randomUUID() };
  for (const [k, v] of Object.entries(opts.claims || {})) {
    if (v === undefined) delete claims[k]; else claims[k] = v;
  }
  return signJwt(header, claims, { key: opts.signKey || key.privateKey, hmacSecret: opts.hmacSecret });
}

/** Writes the public JWKS of `keys` and registers a private_key_jwt client. */
function addJwtClient(srv, clientId, keys, { scope = 'system/Patient.rs', extra = [] } = {}) {
  const file = `${srv.root}/${clientId}.jwks.json`;
  fs.writeFileSync(file, JSON.stringify({ keys: keys.map((k) => k.jwk) }));
  addClient(srv, clientId, ['--auth', 'private_key_jwt', '--jwks-file', file,
    '--grant-type', 'client_credentials', '--scope', scope, ...extra]);
}

// ---------------------------------------------------------------------------
// Token endpoint requests

const formBody = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined)).toString();

const basicAuth = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

/** POST a form to an OAuth endpoint. opts: basic [id, secret], headers, agent. */
function postForm(srv, path, params, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (opts.basic) headers.Authorization = basicAuth(...opts.basic);
  return request(srv, 'POST', path, {
    body: typeof params === 'string' ? params : formBody(params),
    contentType: 'application/x-www-form-urlencoded',
    accept: 'application/json',
    headers,
    agent: opts.agent,
  });
}

/** client_credentials with a fresh assertion by `key`. */
function jwtToken(srv, clientId, key, { scope, assertionOpts, headers, agent } = {}) {
  return postForm(srv, '/token', {
    grant_type: 'client_credentials',
    scope,
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: clientAssertion(srv, clientId, key, assertionOpts),
  }, { headers, agent });
}

function basicToken(srv, clientId, secret, { scope, headers, agent } = {}) {
  return postForm(srv, '/token', { grant_type: 'client_credentials', scope }, { basic: [clientId, secret], headers, agent });
}

/** An OAuth error response: status, `error`, no-store, and a challenge on 401. */
function assertOAuthError(res, status, error, what = '') {
  const d = `${what}: ${describeRes(res)}`;
  const statuses = Array.isArray(status) ? status : [status];
  const errors = Array.isArray(error) ? error : [error];
  assert.ok(statuses.includes(res.status), `expected HTTP ${statuses}; ${d}`);
  assert.ok(res.json && typeof res.json === 'object', `body is not JSON; ${d}`);
  assert.ok(errors.includes(res.json.error), `error ${JSON.stringify(res.json.error)} not in ${JSON.stringify(errors)}; ${d}`);
  assert.equal(res.json.access_token, undefined, `an error response carries a token; ${d}`);
  assert.match(res.headers['cache-control'] || '', /no-store/, `Cache-Control; ${d}`);
  if (res.status === 401) {
    assert.ok((res.headers['www-authenticate'] || '').length > 0, `401 without WWW-Authenticate; ${d}`);
  }
}

/** A successful token response; returns {token, header, claims}. */
function assertTokenResponse(res, { tokenType = 'Bearer', scope } = {}, what = '') {
  const d = `${what}: ${describeRes(res)}`;
  assert.equal(res.status, 200, `token request failed; ${d}`);
  const j = res.json;
  assert.ok(j && typeof j.access_token === 'string', `no access_token; ${d}`);
  assert.equal(j.token_type, tokenType, `token_type; ${d}`);
  assert.ok(Number.isInteger(j.expires_in) && j.expires_in > 0 && j.expires_in <= 300, `expires_in ${j.expires_in}; ${d}`);
  assert.equal(j.refresh_token, undefined, `client_credentials must not issue a refresh token; ${d}`);
  if (scope !== undefined) {
    assert.deepEqual(String(j.scope).split(' ').sort(), scope.split(' ').sort(), `scope; ${d}`);
  }
  assert.match(res.headers['cache-control'] || '', /no-store/, `Cache-Control: no-store; ${d}`);
  assert.equal(res.headers.pragma, 'no-cache', `Pragma: no-cache; ${d}`);
  return { token: j.access_token, ...decodeJwt(j.access_token) };
}

// ---------------------------------------------------------------------------
// FHIR API

function fhir(srv, method, path, { token, scheme = 'Bearer', dpop, agent, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `${scheme} ${token}`;
  if (dpop !== undefined) headers.DPoP = dpop;
  return request(srv, method, path, { headers, agent, body });
}

function assertInvalidToken(res, what, { dpopChallenge = false } = {}) {
  assertOutcome(res, 401, 'login', 'invalid_token', what);
  const wa = res.headers['www-authenticate'] || '';
  if (dpopChallenge) {
    assert.match(wa, /^DPoP /, `${what}: WWW-Authenticate should start with DPoP: ${wa}`);
  } else {
    assert.ok(wa.length > 0, `${what}: no WWW-Authenticate`);
  }
  assert.ok(wa.includes('error="invalid_token"'), `${what}: WWW-Authenticate lacks error="invalid_token": ${wa}`);
}

// ---------------------------------------------------------------------------
// Audit trail (DATA/audit/audit.db, one JSON record per row)

async function auditRecords(srv, where, { wantAtLeast = 1, timeoutMs = 3000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const out = sqlite(`${srv.dataDir}/audit/audit.db`, `SELECT record FROM audit_records WHERE ${where}`);
    const recs = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    if (recs.length >= wantAtLeast || Date.now() > deadline) return recs;
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------
// Client certificates (signed by DATA/tls/ca with openssl)

function issueClientCert(srv, cn, { subj = `/CN=${cn}`, selfSigned = false, server = false } = {}) {
  const dir = `${srv.root}/certs-${cn}${selfSigned ? '-self' : ''}`;
  fs.mkdirSync(dir, { recursive: true });
  const ext = `${dir}/ext.cnf`;
  fs.writeFileSync(ext, server
    ? 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n'
    : 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  const run = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', `${dir}/key.pem`, '-subj', subj, '-out', `${dir}/csr.pem`]);
  const signer = selfSigned ? ['-signkey', `${dir}/key.pem`]
    : ['-CA', `${srv.dataDir}/tls/ca.pem`, '-CAkey', `${srv.dataDir}/tls/ca.key`];
  run(['x509', '-req', '-in', `${dir}/csr.pem`, ...signer,
    '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`, '-days', '2', '-sha256', '-extfile', ext, '-out', `${dir}/cert.pem`]);
  const cert = fs.readFileSync(`${dir}/cert.pem`);
  const key = fs.readFileSync(`${dir}/key.pem`);
  const x509 = new crypto.X509Certificate(cert);
  const der = x509.raw;
  return {
    cn, cert, key, der,
    x5t: crypto.createHash('sha256').update(der).digest('base64url'),
    agent: new https.Agent({ keepAlive: true, ca: srv.ca, servername: 'localhost', cert, key }),
  };
}

/** An HTTPS server on 127.0.0.1 serving `state.jwks` at /jwks.json; counts fetches. */
async function jwksServer(tlsCert) {
  const state = { jwks: { keys: [] }, fetches: 0 };
  const server = https.createServer({ cert: tlsCert.cert, key: tlsCert.key }, (req, res) => {
    if (req.url !== '/jwks.json') { res.writeHead(404); res.end(); return; }
    state.fetches += 1;
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(state.jwks));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `https://127.0.0.1:${server.address().port}/jwks.json`;
  state.close = () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); });
  return state;
}

// ---------------------------------------------------------------------------
// DPoP

function dpopKey(alg = 'ES256') {
  let pair;
  if (alg === 'ES256') pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  else if (alg === 'ES384') pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  else if (alg === 'EdDSA') pair = crypto.generateKeyPairSync('ed25519');
  else pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const j = pair.publicKey.export({ format: 'jwk' });
  const jwk = j.kty === 'EC' ? { kty: j.kty, crv: j.crv, x: j.x, y: j.y }
    : j.kty === 'OKP' ? { kty: j.kty, crv: j.crv, x: j.x } : { kty: j.kty, n: j.n, e: j.e };
  return { alg, privateKey: pair.privateKey, jwk };
}

/** RFC 7638 thumbprint of a public JWK (required members, lexicographic order). */
function thumbprint(jwk) {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }
    : jwk.kty === 'OKP' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x } : { e: jwk.e, kty: jwk.kty, n: jwk.n };
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

const ath = (token) => crypto.createHash('sha256').update(token).digest('base64url');

/** A DPoP proof. opts: htm, htu, nonce, ath, iat, jti, header (merged), claims (merged; undefined deletes), signKey. */
function dpopProof(key, opts = {}) {
  const header = { typ: 'dpop+jwt', alg: key.alg || 'ES256', jwk: key.jwk, ...(opts.header || {}) };
  const claims = { jti: opts.jti || crypto.randomUUID(), htm: opts.htm || 'GET', htu: opts.htu, iat: opts.iat ?? now() };
  if (opts.nonce !== undefined) claims.nonce = opts.nonce;
  if (opts.ath !== undefined) claims.ath = opts.ath;
  for (const [k, v] of Object.entries(opts.claims || {})) {
    if (v === undefined) delete claims[k]; else claims[k] = v;
  }
  return signJwt(header, claims, { key: opts.signKey || key.privateKey });
}

// ===========================================================================

describe('OAuth confidential clients', { timeout: 300000 }, () => {
  let srv;
  let certs; // backend-app, other-app
  before(async () => {
    srv = await startOAuthServer('oauth-clients', { clientCa: true });
    const admin = mintToken(srv, { sub: 'fixture-admin', scope: 'system/*.cruds' });
    const r = await request(srv, 'PUT', '/Patient/cc-p1', { token: admin, body: { resourceType: 'Patient', id: 'cc-p1', name: [{ family: 'Backend' }] } });
    assertStatus(r, 201, 'fixture Patient/cc-p1');
    certs = { backend: issueClientCert(srv, 'backend-app'), other: issueClientCert(srv, 'other-app') };
  });
  after(async () => {
    if (certs) for (const c of Object.values(certs)) c.agent.destroy();
    await stopAndClean(srv);
  });
  afterEach(diagnose(() => [srv]));

  // -------------------------------------------------------------------------
  describe('client_credentials with private_key_jwt', () => {
    for (const alg of ['ES384', 'RS384', 'ES256', 'RS256', 'PS256']) {
      it(`${alg} client key: 200 Bearer, expires_in <= 300, no refresh_token; the token reads and may not write`, async () => {
        const key = newKey(alg);
        const id = `backend-${alg.toLowerCase()}`;
        addJwtClient(srv, id, [key], { scope: 'system/Patient.rs' });
        const res = await jwtToken(srv, id, key, { scope: 'system/Patient.rs' });
        const t = assertTokenResponse(res, { scope: 'system/Patient.rs' }, `${alg} client_credentials`);
        assert.equal(t.header.typ, 'at+jwt', JSON.stringify(t.header));
        assert.equal(t.header.alg, 'ES256', JSON.stringify(t.header));
        assert.equal(t.claims.iss, srv.issuer);
        assert.equal(t.claims.aud, srv.issuer);
        assert.equal(t.claims.sub, id);
        assert.equal(t.claims.client_id, id);
        assert.equal(t.claims.scope, 'system/Patient.rs');
        assert.ok(t.claims.exp - t.claims.iat <= 300, `lifetime ${t.claims.exp - t.claims.iat}`);
        assert.ok(typeof t.claims.jti === 'string' && t.claims.jti.length > 0);
        srv.allSecrets.push(t.token);

        const read = await fhir(srv, 'GET', '/Patient', { token: t.token });
        assertStatus(read, 200, 'GET /Patient with system/Patient.rs');
        assert.ok(read.text.includes('cc-p1'), 'search result lacks the fixture patient');
        assertStatus(await fhir(srv, 'GET', '/Patient/cc-p1', { token: t.token }), 200, 'read Patient/cc-p1');
        const write = await fhir(srv, 'POST', '/Patient', { token: t.token, body: { resourceType: 'Patient', name: [{ family: 'X' }] } });
        assertOutcome(write, 403, 'forbidden', 'insufficient_scope', 'create with system/Patient.rs');
        const other = await fhir(srv, 'GET', '/Observation', { token: t.token });
        assertOutcome(other, 403, 'forbidden', 'insufficient_scope', 'Observation with system/Patient.rs');
      });
    }

    describe('a bad client assertion -> 401 invalid_client with WWW-Authenticate', () => {
      const id = 'assert-app';
      let key;
      let other;
      before(() => {
        key = newKey('ES256', 'assert-key-1');
        other = newKey('ES256', 'assert-key-1'); // same kid, different key
        addJwtClient(srv, id, [key], { scope: 'system/Patient.rs' });
      });

      it('(sanity) a good assertion works', async () => {
        assertTokenResponse(await jwtToken(srv, id, key), { scope: 'system/Patient.rs' }, 'good assertion');
      });

      const t0 = now();
      const cases = {
        'signed by another key (same kid)': () => ({ signKey: other.privateKey }),
        'unknown kid': () => ({ header: { kid: 'no-such-kid' } }),
        'alg none': () => ({ header: { alg: 'none' } }),
        'HS256 signed with some secret': () => ({ header: { alg: 'HS256' }, hmacSecret: 'some-shared-secret-0123456789abcdef' }),
        'HS256 keyed with the registered public JWK': () => ({ header: { alg: 'HS256' }, hmacSecret: JSON.stringify(key.jwk) }),
        'iss differs from sub': () => ({ claims: { iss: 'someone-else' } }),
        'sub differs from the client': () => ({ claims: { sub: 'someone-else' } }),
        'wrong aud': () => ({ claims: { aud: 'https://elsewhere.example/token' } }),
        'expired (exp 5 minutes ago)': () => ({ claims: { iat: t0 - 600, exp: t0 - 300 } }),
        'exp 6 minutes ahead (more than 5)': () => ({ claims: { exp: now() + 360 } }),
        'exp an hour ahead': () => ({ claims: { exp: now() + 3600 } }),
        'no jti': () => ({ claims: { jti: undefined } }),
        'no exp': () => ({ claims: { exp: undefined } }),
      };
      for (const [what, make] of Object.entries(cases)) {
        it(what, async () => {
          const res = await postForm(srv, '/token', {
            grant_type: 'client_credentials',
            client_id: id,
            client_assertion_type: ASSERTION_TYPE,
            client_assertion: clientAssertion(srv, id, key, make()),
          });
          assertOAuthError(res, 401, 'invalid_client', what);
        });
      }

      it('a fractional exp an hour ahead (3600.5 s) -> 401 (exp at most 5 minutes ahead)', async () => {
        const res = await postForm(srv, '/token', {
          grant_type: 'client_credentials',
          client_assertion_type: ASSERTION_TYPE,
          client_assertion: clientAssertion(srv, id, key, { claims: { exp: now() + 3600.5 } }),
        });
        assertOAuthError(res, 401, 'invalid_client', 'exp = now + 3600.5');
      });

      it('jti replay with a fractional exp (now + 60.5): the second use is 401', async () => {
        const a = clientAssertion(srv, id, key, { claims: { exp: now() + 60.5 } });
        const body = { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: a };
        assertTokenResponse(await postForm(srv, '/token', body), {}, 'first use');
        assertOAuthError(await postForm(srv, '/token', body), 401, 'invalid_client', 'replayed assertion with a fractional exp');
      });

      it('jti replay: the same assertion twice -> the second is 401', async () => {
        const a = clientAssertion(srv, id, key);
        const body = { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: a };
        assertTokenResponse(await postForm(srv, '/token', body), {}, 'first use');
        assertOAuthError(await postForm(srv, '/token', body), 401, 'invalid_client', 'replayed assertion');
      });

      it('wrong client_assertion_type', async () => {
        const res = await postForm(srv, '/token', {
          grant_type: 'client_credentials',
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:saml2-bearer',
          client_assertion: clientAssertion(srv, id, key),
        });
        assertOAuthError(res, 401, 'invalid_client', 'saml2-bearer assertion type');
      });

      it('unknown client', async () => {
        const ghost = 'no-such-client';
        const res = await postForm(srv, '/token', {
          grant_type: 'client_credentials',
          client_id: ghost,
          client_assertion_type: ASSERTION_TYPE,
          client_assertion: clientAssertion(srv, ghost, key),
        });
        assertOAuthError(res, 401, 'invalid_client', 'unknown client');
      });

      it('a disabled client (clients disable); enabled again it works', async () => {
        const did = 'disabled-app';
        const k = newKey('ES256');
        addJwtClient(srv, did, [k]);
        assertTokenResponse(await jwtToken(srv, did, k), {}, 'before disable');
        cli(srv, ['clients', 'disable', '--data-dir', srv.dataDir, '--client-id', did]);
        assertOAuthError(await jwtToken(srv, did, k), 401, 'invalid_client', 'disabled client');
        cli(srv, ['clients', 'enable', '--data-dir', srv.dataDir, '--client-id', did]);
        assertTokenResponse(await jwtToken(srv, did, k), {}, 'enabled again');
      });

      it('signed by an attacker key embedded in the header (jwk) -> 401', async () => {
        const evil = newKey('ES256', 'evil');
        const res = await postForm(srv, '/token', {
          grant_type: 'client_credentials',
          client_assertion_type: ASSERTION_TYPE,
          client_assertion: clientAssertion(srv, id, key, { signKey: evil.privateKey, header: { kid: undefined, jwk: evil.jwk } }),
        });
        assertOAuthError(res, 401, 'invalid_client', 'embedded jwk');
      });

      it('algorithms are pinned per key: ES384 over the ES256 key, RS256/PS256 over an RS384 key -> 401', async () => {
        const rsa = newKey('RS384', 'pinned-rs384');
        addJwtClient(srv, 'pinned-rsa-app', [rsa]);
        assertTokenResponse(await jwtToken(srv, 'pinned-rsa-app', rsa), {}, '(sanity) RS384 as registered');
        for (const alg of ['RS256', 'PS256']) {
          const a = clientAssertion(srv, 'pinned-rsa-app', { ...rsa, alg }, {});
          const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: a });
          assertOAuthError(res, 401, 'invalid_client', `${alg} with a key registered for RS384`);
        }
        const a = clientAssertion(srv, id, { ...key, alg: 'ES384' }, {}); // SHA-384 over P-256
        const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: a });
        assertOAuthError(res, 401, 'invalid_client', 'ES384 with a key registered for ES256');
      });

      it('the assertion of one client for another client_id -> 401', async () => {
        const k2 = newKey('ES256');
        addJwtClient(srv, 'assert-app-2', [k2]);
        const res = await postForm(srv, '/token', {
          grant_type: 'client_credentials',
          client_id: id,
          client_assertion_type: ASSERTION_TYPE,
          client_assertion: clientAssertion(srv, 'assert-app-2', k2),
        });
        assertOAuthError(res, [400, 401], ['invalid_client', 'invalid_request'], "assert-app-2's assertion with client_id assert-app");
      });

      it('a private_key_jwt client may not authenticate with a secret', async () => {
        const res = await postForm(srv, '/token', { grant_type: 'client_credentials' }, { basic: [id, 'guess'] });
        assertOAuthError(res, 401, 'invalid_client', 'Basic for a private_key_jwt client');
      });
    });
  });

  // -------------------------------------------------------------------------
  describe('private_key_jwt with --jwks-uri (https, [oauth] jwks_ca_file)', () => {
    let js; // trusted JWKS server
    let untrusted; // self-signed JWKS server
    let k1;
    let k2;
    before(async () => {
      js = await jwksServer(issueClientCert(srv, 'jwks-host', { server: true }));
      untrusted = await jwksServer(issueClientCert(srv, 'jwks-host', { server: true, selfSigned: true }));
      k1 = newKey('ES256', 'uri-key-1');
      k2 = newKey('ES256', 'uri-key-2');
      js.jwks = { keys: [k1.jwk] };
      untrusted.jwks = { keys: [k1.jwk] };
    });
    after(async () => {
      if (js) await js.close();
      if (untrusted) await untrusted.close();
    });

    it('clients add refuses a jwks_uri that is not https', () => {
      const r = runCli(['clients', 'add', '--data-dir', srv.dataDir, '--client-id', 'jwks-http', '--auth', 'private_key_jwt',
        '--jwks-uri', js.url.replace('https:', 'http:'), '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assert.notEqual(r.code, 0, `an http jwks_uri was accepted: ${r.stdout}`);
    });

    it('keys are fetched from the jwks_uri and cached; an unknown kid is refetched at most every 30 s', async () => {
      addClient(srv, 'jwks-uri-app', ['--auth', 'private_key_jwt', '--jwks-uri', js.url,
        '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assertTokenResponse(await jwtToken(srv, 'jwks-uri-app', k1), {}, 'key 1 from the jwks_uri');
      assert.equal(js.fetches, 1, 'the JWKS should have been fetched once');
      const firstFetch = Date.now();
      assertTokenResponse(await jwtToken(srv, 'jwks-uri-app', k1), {}, 'key 1 again');
      assert.equal(js.fetches, 1, 'the JWKS should be cached');

      // The client rotates: key 2 is published. Right after the first fetch, the
      // unknown kid does not trigger a refetch (at most every 30 s).
      js.jwks = { keys: [k1.jwk, k2.jwk] };
      assertOAuthError(await jwtToken(srv, 'jwks-uri-app', k2), 401, 'invalid_client', 'key 2 within 30 s of the last fetch');
      assert.equal(js.fetches, 1, 'an unknown kid refetched the JWKS less than 30 s after the last fetch');

      // Another client with the same URI fetches afresh and sees key 2.
      addClient(srv, 'jwks-uri-app-2', ['--auth', 'private_key_jwt', '--jwks-uri', js.url,
        '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assertTokenResponse(await jwtToken(srv, 'jwks-uri-app-2', k2), {}, 'key 2 for a client fetching now');

      // 30 s after the first fetch, the unknown kid triggers a refetch.
      await sleep(Math.max(0, firstFetch + 31000 - Date.now()));
      const before2 = js.fetches;
      assertTokenResponse(await jwtToken(srv, 'jwks-uri-app', k2), {}, 'key 2 after 30 s (refetched on unknown kid)');
      assert.equal(js.fetches, before2 + 1, 'the JWKS was not refetched');
    });

    it('a jwks_uri whose certificate is not trusted -> 401 invalid_client', async () => {
      addClient(srv, 'jwks-untrusted-app', ['--auth', 'private_key_jwt', '--jwks-uri', untrusted.url,
        '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assertOAuthError(await jwtToken(srv, 'jwks-untrusted-app', k1), 401, 'invalid_client', 'self-signed jwks host');
      assert.equal(untrusted.fetches, 0, 'the JWKS was read over an untrusted connection');
    });
  });

  // -------------------------------------------------------------------------
  describe('client_credentials scope rules', () => {
    const id = 'scoped-app';
    let key;
    before(() => {
      key = newKey('ES256');
      addJwtClient(srv, id, [key], { scope: 'system/Patient.rs system/Observation.rs patient/*.rs' });
    });

    it('a scope not registered -> 400 invalid_scope', async () => {
      assertOAuthError(await jwtToken(srv, id, key, { scope: 'system/Encounter.rs' }), 400, 'invalid_scope', 'system/Encounter.rs');
      assertOAuthError(await jwtToken(srv, id, key, { scope: 'system/Patient.cruds' }), 400, 'invalid_scope', 'more permissions than registered');
      assertOAuthError(await jwtToken(srv, id, key, { scope: 'system/Patient.rs system/*.rs' }), 400, 'invalid_scope', 'one good, one not registered');
    });

    it('a patient/ scope (even registered) -> 400 invalid_scope', async () => {
      assertOAuthError(await jwtToken(srv, id, key, { scope: 'patient/*.rs' }), 400, 'invalid_scope', 'patient/*.rs');
      assertOAuthError(await jwtToken(srv, id, key, { scope: 'user/Patient.rs' }), 400, 'invalid_scope', 'user/Patient.rs');
    });

    it('no scope -> all registered system/ scopes', async () => {
      const t = assertTokenResponse(await jwtToken(srv, id, key), { scope: 'system/Patient.rs system/Observation.rs' }, 'omitted scope');
      assert.deepEqual(t.claims.scope.split(' ').sort(), ['system/Observation.rs', 'system/Patient.rs']);
    });

    it('a narrower scope is granted as asked', async () => {
      const t = assertTokenResponse(await jwtToken(srv, id, key, { scope: 'system/Patient.r' }), { scope: 'system/Patient.r' }, 'system/Patient.r');
      assertStatus(await fhir(srv, 'GET', '/Patient/cc-p1', { token: t.token }), 200);
    });

    it('a public client -> unauthorized_client or invalid_client', async () => {
      addClient(srv, 'public-app', ['--auth', 'none', '--redirect-uri', 'https://app.example/cb', '--scope', 'user/*.rs']);
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: 'public-app' });
      assertOAuthError(res, [400, 401], ['unauthorized_client', 'invalid_client'], 'client_credentials by a public client');
    });

    it('a confidential client without the client_credentials grant -> unauthorized_client', async () => {
      const secret = addClient(srv, 'code-only-app', ['--auth', 'client_secret_basic', '--redirect-uri', 'https://app.example/cb',
        '--grant-type', 'authorization_code', '--scope', 'user/*.rs system/*.rs']);
      assert.ok(secret, 'no secret printed');
      const res = await basicToken(srv, 'code-only-app', secret);
      assertOAuthError(res, 400, 'unauthorized_client', 'client_credentials without the grant');
    });
  });

  // -------------------------------------------------------------------------
  describe('client_secret_basic', () => {
    const id = 'basic-app';
    let secret;
    before(() => {
      secret = addClient(srv, id, ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assert.ok(secret && secret.length >= 43, `secret of 256 bits expected: ${secret}`);
    });

    it('a refused client authentication is audited', async () => {
      const res = await basicToken(srv, id, 'definitely-wrong');
      assertOAuthError(res, 401, 'invalid_client', 'wrong secret');
      const recs = await auditRecords(srv, `record LIKE '%"action":"token-client-auth"%' AND record LIKE '%invalid_client%'`);
      assert.ok(recs.length >= 1, 'no audit record for a refused client authentication');
      assert.ok(recs.every((r) => r.outcome !== 'success'), JSON.stringify(recs));
      assert.ok(!JSON.stringify(recs).includes('definitely-wrong'), 'the wrong secret is in the audit trail');
    });

    it('a client id with @ and . is percent-decoded from Basic credentials', async () => {
      const odd = 'svc@hospital.example';
      const s2 = addClient(srv, odd, ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      const t = assertTokenResponse(await basicToken(srv, odd, s2), {}, 'client id with @');
      assert.equal(t.claims.client_id, odd);
    });

    it('the right secret -> 200', async () => {
      const t = assertTokenResponse(await basicToken(srv, id, secret), { scope: 'system/Patient.rs' }, 'basic');
      assert.equal(t.claims.client_id, id);
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token }), 200);
    });

    it('a wrong secret -> 401 invalid_client, WWW-Authenticate: Basic', async () => {
      const res = await basicToken(srv, id, `${secret.slice(0, -1)}${secret.endsWith('A') ? 'B' : 'A'}`);
      assertOAuthError(res, 401, 'invalid_client', 'wrong secret');
      assert.match(res.headers['www-authenticate'] || '', /^Basic\b/i, describeRes(res));
    });

    it('an unknown client id with Basic -> 401 invalid_client, WWW-Authenticate: Basic', async () => {
      const res = await basicToken(srv, 'no-such-basic-app', secret);
      assertOAuthError(res, 401, 'invalid_client', 'unknown client with Basic');
      assert.match(res.headers['www-authenticate'] || '', /^Basic\b/i, describeRes(res));
    });

    it('Basic for one client with client_id of another in the body -> refused', async () => {
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: 'rev-other-id' }, { basic: [id, secret] });
      assertOAuthError(res, [400, 401], ['invalid_request', 'invalid_client'], 'client_id mismatch');
    });

    it('two client authentications at once (Basic + client_assertion) -> 400 invalid_request or 401', async () => {
      const k = newKey('ES256');
      const res = await postForm(srv, '/token', {
        grant_type: 'client_credentials',
        client_assertion_type: ASSERTION_TYPE,
        client_assertion: clientAssertion(srv, id, k),
      }, { basic: [id, secret] });
      assertOAuthError(res, [400, 401], ['invalid_request', 'invalid_client'], 'Basic + assertion');
    });

    it('Content-Type with a charset parameter is accepted', async () => {
      const res = await request(srv, 'POST', '/token', {
        body: 'grant_type=client_credentials', contentType: 'application/x-www-form-urlencoded; charset=UTF-8',
        accept: 'application/json', headers: { Authorization: basicAuth(id, secret) },
      });
      assertTokenResponse(res, {}, 'form with charset');
    });

    it('the secret in the body only (client_secret_post, unsupported) -> 401 invalid_client', async () => {
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: id, client_secret: secret });
      assertOAuthError(res, 401, 'invalid_client', 'client_secret_post');
    });

    it('rotate-secret --grace 5: the new secret works; the old one during the grace only; list shows no secret', async () => {
      const rid = 'rotating-app';
      const old = addClient(srv, rid, ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assertTokenResponse(await basicToken(srv, rid, old), {}, 'old secret before rotation');
      const out = cli(srv, ['clients', 'rotate-secret', '--data-dir', srv.dataDir, '--client-id', rid, '--grace', '5']);
      const rotatedAt = Date.now();
      const m = /client_secret: (\S+)/.exec(out);
      assert.ok(m, `rotate-secret printed no secret: ${out}`);
      const fresh = m[1];
      srv.allSecrets.push(fresh);
      assert.notEqual(fresh, old);
      assertTokenResponse(await basicToken(srv, rid, fresh), {}, 'new secret');
      assertTokenResponse(await basicToken(srv, rid, old), {}, 'old secret during the grace');

      const list = cli(srv, ['clients', 'list', '--data-dir', srv.dataDir]);
      assert.ok(list.includes(rid) && list.includes(id), `clients list lacks the clients: ${list}`);
      for (const s of srv.allSecrets.filter((x) => x.length < 100)) {
        assert.ok(!list.includes(s), 'clients list prints a client secret');
        const hash = crypto.createHash('sha256').update(`fhirward-client-secret-v1:${s}`).digest('hex');
        assert.ok(!list.toLowerCase().includes(hash), 'clients list prints a secret hash');
      }

      await sleep(Math.max(0, rotatedAt + 6500 - Date.now()));
      const late = await basicToken(srv, rid, old);
      assertOAuthError(late, 401, 'invalid_client', 'old secret 6.5 s after a 5 s grace');
      assert.match(late.headers['www-authenticate'] || '', /^Basic\b/i);
      assertTokenResponse(await basicToken(srv, rid, fresh), {}, 'new secret after the grace');
    });
  });

  // -------------------------------------------------------------------------
  describe('tls_client_auth', () => {
    const id = 'tls-app';
    before(() => {
      addClient(srv, id, ['--auth', 'tls_client_auth', '--tls-subject', 'CN=backend-app',
        '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
    });

    it('(sanity) the openssl-issued certificate has the subject CN=backend-app', () => {
      const x = new crypto.X509Certificate(certs.backend.cert);
      assert.equal(x.subject.trim(), 'CN=backend-app');
      assert.ok(x.verify(new crypto.X509Certificate(srv.ca).publicKey), 'not signed by DATA/tls/ca.pem');
    });

    it('the registered subject gets a token', async () => {
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: id }, { agent: certs.backend.agent });
      const t = assertTokenResponse(res, { scope: 'system/Patient.rs' }, 'tls_client_auth');
      assert.equal(t.claims.client_id, id);
      assert.equal(t.claims.cnf, undefined, 'no --sender-constraint: the token should not be bound');
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token }), 200, 'unbound tls token without certificate');
    });

    it('another certificate subject -> 401 invalid_client', async () => {
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: id }, { agent: certs.other.agent });
      assertOAuthError(res, 401, 'invalid_client', 'CN=other-app');
    });

    it('no certificate -> 401 invalid_client', async () => {
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: id });
      assertOAuthError(res, 401, 'invalid_client', 'no certificate');
    });

    it('a self-signed certificate with the registered subject gets no token', async () => {
      const self = issueClientCert(srv, 'backend-app', { selfSigned: true });
      try {
        let res;
        try {
          res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: id }, { agent: self.agent });
        } catch (e) {
          return; // handshake refused: fine
        }
        assertOAuthError(res, 401, 'invalid_client', 'self-signed CN=backend-app');
      } finally {
        self.agent.destroy();
      }
    });

    it('a multi-RDN subject is matched in RFC 2253 form (CN=svc-two,O=Hospital)', async () => {
      const c = issueClientCert(srv, 'svc-two', { subj: '/O=Hospital/CN=svc-two' });
      try {
        assert.equal(new crypto.X509Certificate(c.cert).subject.trim().split('\n').join(','), 'O=Hospital,CN=svc-two');
        addClient(srv, 'tls-rdn-app', ['--auth', 'tls_client_auth', '--tls-subject', 'CN=svc-two,O=Hospital',
          '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
        const ok = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: 'tls-rdn-app' }, { agent: c.agent });
        assertTokenResponse(ok, {}, 'RFC 2253 subject CN=svc-two,O=Hospital');
        addClient(srv, 'tls-rdn-reversed', ['--auth', 'tls_client_auth', '--tls-subject', 'O=Hospital,CN=svc-two',
          '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
        const bad = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: 'tls-rdn-reversed' }, { agent: c.agent });
        assertOAuthError(bad, 401, 'invalid_client', 'subject registered in the openssl one-line order (not RFC 2253)');
      } finally {
        c.agent.destroy();
      }
    });

    it('a client certificate does not authenticate a secret client without its secret', async () => {
      const s = addClient(srv, 'cert-but-basic', ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      assert.ok(s);
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: 'cert-but-basic' }, { agent: certs.backend.agent });
      assertOAuthError(res, 401, 'invalid_client', 'client_secret_basic client with a certificate only');
    });
  });

  // -------------------------------------------------------------------------
  describe('mTLS-bound tokens (--sender-constraint mtls)', () => {
    it('tls_client_auth: cnf.x5t#S256 = SHA-256 of the certificate; the API wants that certificate', async () => {
      const id = 'mtls-app';
      addClient(srv, id, ['--auth', 'tls_client_auth', '--tls-subject', 'CN=backend-app',
        '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs', '--sender-constraint', 'mtls']);
      const res = await postForm(srv, '/token', { grant_type: 'client_credentials', client_id: id }, { agent: certs.backend.agent });
      const t = assertTokenResponse(res, { scope: 'system/Patient.rs' }, 'mtls-bound token');
      assert.ok(t.claims.cnf, `no cnf claim: ${JSON.stringify(t.claims)}`);
      assert.equal(t.claims.cnf['x5t#S256'], certs.backend.x5t, 'cnf.x5t#S256 is not base64url(SHA-256(certificate DER))');
      srv.allSecrets.push(t.token);

      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token, agent: certs.backend.agent }), 200, 'with the bound certificate');
      assertInvalidToken(await fhir(srv, 'GET', '/Patient', { token: t.token, agent: certs.other.agent }), 'another certificate');
      assertInvalidToken(await fhir(srv, 'GET', '/Patient', { token: t.token }), 'no certificate');
      // Still fine with the right one (the refusals did not poison the cache).
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token, agent: certs.backend.agent }), 200, 'again with the bound certificate');
      const recs = await auditRecords(srv, `record LIKE '%certificate_mismatch%'`, { wantAtLeast: 2 });
      assert.ok(recs.length >= 2, `the two refusals are not audited with certificate_mismatch: ${JSON.stringify(recs)}`);
      for (const r of recs) assert.equal(r.outcome === 'success', false, JSON.stringify(r));
    });

    it('private_key_jwt over a connection with a client certificate: bound to that certificate', async () => {
      const id = 'mtls-jwt-app';
      const key = newKey('ES256');
      addJwtClient(srv, id, [key], { extra: ['--sender-constraint', 'mtls'] });
      const t = assertTokenResponse(await jwtToken(srv, id, key, { agent: certs.other.agent }), {}, 'private_key_jwt + mtls');
      assert.equal(t.claims.cnf && t.claims.cnf['x5t#S256'], certs.other.x5t, JSON.stringify(t.claims));
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token, agent: certs.other.agent }), 200, 'with the bound certificate');
      assertInvalidToken(await fhir(srv, 'GET', '/Patient', { token: t.token, agent: certs.backend.agent }), 'another certificate');
      assertInvalidToken(await fhir(srv, 'GET', '/Patient', { token: t.token }), 'no certificate');
    });

    it('private_key_jwt + mtls without a client certificate -> 400 invalid_request', async () => {
      const id = 'mtls-jwt-nocert';
      const key = newKey('ES256');
      addJwtClient(srv, id, [key], { extra: ['--sender-constraint', 'mtls'] });
      assertOAuthError(await jwtToken(srv, id, key), 400, 'invalid_request', 'mtls-bound client without certificate');
    });
  });

  // -------------------------------------------------------------------------
  describe('DPoP (RFC 9449)', () => {
    const id = 'dpop-app';
    let secret;
    let key;
    let nonce;
    let token; // DPoP-bound
    let bearer; // an unbound token
    const htuOf = (path) => `${srv.issuer}${path}`;
    const tokenWithProof = (proof) => basicToken(srv, id, secret, { headers: proof === undefined ? {} : { DPoP: proof } });

    before(() => {
      secret = addClient(srv, id, ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      key = dpopKey();
    });

    it('token endpoint: a proof without nonce -> 400 use_dpop_nonce + DPoP-Nonce; with it -> 200 DPoP, cnf.jkt', async () => {
      const first = await tokenWithProof(dpopProof(key, { htm: 'POST', htu: srv.tokenUrl }));
      assertOAuthError(first, 400, 'use_dpop_nonce', 'proof without nonce');
      nonce = first.headers['dpop-nonce'];
      assert.ok(typeof nonce === 'string' && nonce.length >= 16, `DPoP-Nonce header: ${describeRes(first)}`);

      const res = await tokenWithProof(dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce }));
      const t = assertTokenResponse(res, { tokenType: 'DPoP', scope: 'system/Patient.rs' }, 'proof with nonce');
      assert.equal(t.claims.cnf && t.claims.cnf.jkt, thumbprint(key.jwk), `cnf.jkt is not the RFC 7638 thumbprint: ${JSON.stringify(t.claims.cnf)}`);
      token = t.token;
      srv.allSecrets.push(token);
      const intro = await postForm(srv, '/introspect', { token }, { basic: [id, secret] });
      assert.equal(intro.json && intro.json.active, true, intro.text);
      assert.equal(intro.json.token_type, 'DPoP', `introspection token_type: ${intro.text}`);
      assert.equal(intro.json.cnf && intro.json.cnf.jkt, thumbprint(key.jwk), `introspection cnf: ${intro.text}`);
      const b = assertTokenResponse(await basicToken(srv, id, secret), { tokenType: 'Bearer' }, 'no proof: a Bearer token');
      assert.equal(b.claims.cnf, undefined);
      bearer = b.token;
    });

    it('token endpoint: a wrong nonce -> 400 use_dpop_nonce', async () => {
      const res = await tokenWithProof(dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce: 'not-a-server-nonce' }));
      assertOAuthError(res, 400, 'use_dpop_nonce', 'forged nonce');
      assert.ok(res.headers['dpop-nonce'], 'no DPoP-Nonce with use_dpop_nonce');
    });

    it('FHIR API: Authorization: DPoP + a valid proof with ath -> 200; the same proof again -> 401', async () => {
      assert.ok(token, 'no DPoP token (previous test failed)');
      const proof = dpopProof(key, { htm: 'GET', htu: htuOf('/Patient'), ath: ath(token) });
      const ok = await fhir(srv, 'GET', '/Patient', { token, scheme: 'DPoP', dpop: proof });
      assertStatus(ok, 200, 'DPoP request');
      assert.ok(ok.text.includes('cc-p1'));
      const again = await fhir(srv, 'GET', '/Patient', { token, scheme: 'DPoP', dpop: proof });
      assertInvalidToken(again, 'replayed proof (same jti)', { dpopChallenge: true });
      const recs = await auditRecords(srv, `record LIKE '%replayed_jti%'`);
      assert.ok(recs.length >= 1, 'the replayed proof is not audited (replayed_jti)');
    });

    it('FHIR API: htu ignores the query string (GET /Patient?_id=cc-p1 with htu .../Patient)', async () => {
      const r = await fhir(srv, 'GET', '/Patient?_id=cc-p1', {
        token, scheme: 'DPoP', dpop: dpopProof(key, { htm: 'GET', htu: htuOf('/Patient'), ath: ath(token) }),
      });
      assertStatus(r, 200, 'search with DPoP');
      assert.ok(r.text.includes('cc-p1'));
    });

    it('token endpoint: the same proof twice -> the second is refused', async () => {
      const proof = dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce });
      assertTokenResponse(await tokenWithProof(proof), { tokenType: 'DPoP' }, 'first use of the proof');
      assertOAuthError(await tokenWithProof(proof), 400, 'invalid_dpop_proof', 'replayed proof at the token endpoint');
    });

    for (const alg of ['ES384', 'RS256', 'PS256', 'EdDSA']) {
      it(`a ${alg} DPoP key (advertised in dpop_signing_alg_values_supported): token bound to its thumbprint, usable at the API`, async () => {
        assert.ok(nonce, 'no nonce (first DPoP test failed)');
        const k = dpopKey(alg);
        const res = await tokenWithProof(dpopProof(k, { htm: 'POST', htu: srv.tokenUrl, nonce }));
        const t = assertTokenResponse(res, { tokenType: 'DPoP' }, `${alg} proof`);
        assert.equal(t.claims.cnf && t.claims.cnf.jkt, thumbprint(k.jwk), `${alg}: cnf.jkt`);
        const r = await fhir(srv, 'GET', '/Patient', { token: t.token, scheme: 'DPoP', dpop: dpopProof(k, { htu: htuOf('/Patient'), ath: ath(t.token) }) });
        assertStatus(r, 200, `${alg}-bound token at the API`);
      });
    }

    it('FHIR API: a read of one resource with a fresh proof -> 200', async () => {
      const r = await fhir(srv, 'GET', '/Patient/cc-p1', {
        token, scheme: 'DPoP', dpop: dpopProof(key, { htm: 'GET', htu: htuOf('/Patient/cc-p1'), ath: ath(token) }),
      });
      assertStatus(r, 200, 'GET /Patient/cc-p1 with DPoP');
    });

    const bad = {
      'a proof for another URL (htu)': () => dpopProof(key, { htm: 'GET', htu: htuOf('/Observation'), ath: ath(token) }),
      'a proof for another method (htm POST)': () => dpopProof(key, { htm: 'POST', htu: htuOf('/Patient'), ath: ath(token) }),
      'a stale proof (iat 10 minutes ago)': () => dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token), iat: now() - 600 }),
      'a proof from the future (iat +10 minutes)': () => dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token), iat: now() + 600 }),
      'a proof without ath': () => dpopProof(key, { htu: htuOf('/Patient') }),
      'a proof with a wrong ath': () => dpopProof(key, { htu: htuOf('/Patient'), ath: ath(`${token}x`) }),
      'a proof signed by another key': () => dpopProof(dpopKey(), { htu: htuOf('/Patient'), ath: ath(token) }),
      'a proof whose signature does not match its jwk': () => dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token), signKey: dpopKey().privateKey }),
      'no proof at all': () => undefined,
      'two DPoP headers': () => [
        dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token) }),
        dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token) }),
      ],
    };
    for (const [what, make] of Object.entries(bad)) {
      it(`FHIR API: ${what} -> 401 invalid_token, WWW-Authenticate: DPoP`, async () => {
        assert.ok(token, 'no DPoP token (previous test failed)');
        const r = await fhir(srv, 'GET', '/Patient', { token, scheme: 'DPoP', dpop: make() });
        assertInvalidToken(r, what, { dpopChallenge: true });
      });
    }

    it('FHIR API: the DPoP-bound token sent as Bearer -> 401 invalid_token (with or without a proof)', async () => {
      const r1 = await fhir(srv, 'GET', '/Patient', { token });
      assertInvalidToken(r1, 'bound token as Bearer', { dpopChallenge: true });
      const r2 = await fhir(srv, 'GET', '/Patient', { token, dpop: dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token) }) });
      assertInvalidToken(r2, 'bound token as Bearer with a proof', { dpopChallenge: true });
    });

    it('FHIR API: an unbound Bearer token sent with the DPoP scheme -> 401', async () => {
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: bearer }), 200, '(sanity) as Bearer');
      const r = await fhir(srv, 'GET', '/Patient', {
        token: bearer, scheme: 'DPoP', dpop: dpopProof(key, { htu: htuOf('/Patient'), ath: ath(bearer) }),
      });
      assertInvalidToken(r, 'unbound token with the DPoP scheme', { dpopChallenge: true });
    });

    it('FHIR API: the bound token still works after the refusals', async () => {
      const r = await fhir(srv, 'GET', '/Patient', { token, scheme: 'DPoP', dpop: dpopProof(key, { htu: htuOf('/Patient'), ath: ath(token) }) });
      assertStatus(r, 200, 'fresh proof after refusals');
    });

    it('a client registered with --sender-constraint dpop that sends no proof -> 400 invalid_request', async () => {
      const did = 'dpop-required-app';
      const s = addClient(srv, did, ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials',
        '--scope', 'system/Patient.rs', '--sender-constraint', 'dpop']);
      assertOAuthError(await basicToken(srv, did, s), 400, 'invalid_request', 'dpop client without proof');
      const k = dpopKey();
      const first = await basicToken(srv, did, s, { headers: { DPoP: dpopProof(k, { htm: 'POST', htu: srv.tokenUrl }) } });
      assertOAuthError(first, 400, 'use_dpop_nonce', 'dpop client, no nonce');
      const n = first.headers['dpop-nonce'];
      const ok = await basicToken(srv, did, s, { headers: { DPoP: dpopProof(k, { htm: 'POST', htu: srv.tokenUrl, nonce: n }) } });
      assertTokenResponse(ok, { tokenType: 'DPoP' }, 'dpop client with proof');
    });

    const badProofs = {
      'typ JWT': () => dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce, header: { typ: 'JWT' } }),
      'alg none': () => dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce, header: { alg: 'none' } }),
      'a private key in the jwk': () => {
        const pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
        const priv = pair.privateKey.export({ format: 'jwk' }); // has d
        return dpopProof({ privateKey: pair.privateKey, jwk: priv }, { htm: 'POST', htu: srv.tokenUrl, nonce });
      },
      'two DPoP headers': () => [
        dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce }),
        dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce }),
      ],
      'HS256': () => {
        const header = { typ: 'dpop+jwt', alg: 'HS256', jwk: key.jwk };
        return signJwt(header, { jti: crypto.randomUUID(), htm: 'POST', htu: srv.tokenUrl, iat: now(), nonce }, { hmacSecret: 'secret' });
      },
      'a proof for another URL': () => dpopProof(key, { htm: 'POST', htu: `${srv.issuer}/revoke`, nonce }),
      'htm GET': () => dpopProof(key, { htm: 'GET', htu: srv.tokenUrl, nonce }),
      'a stale iat (10 minutes old)': () => dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce, iat: now() - 600 }),
      'a signature by another key than the jwk': () => dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce, signKey: dpopKey().privateKey }),
      'no jti': () => dpopProof(key, { htm: 'POST', htu: srv.tokenUrl, nonce, claims: { jti: undefined } }),
    };
    for (const [what, make] of Object.entries(badProofs)) {
      it(`token endpoint: proof with ${what} -> 400 invalid_dpop_proof`, async () => {
        assert.ok(nonce, 'no nonce (first DPoP test failed)');
        const res = await tokenWithProof(make());
        assertOAuthError(res, 400, 'invalid_dpop_proof', what);
      });
    }
  });

  // -------------------------------------------------------------------------
  describe('revocation and introspection', () => {
    let a; // secret of rev-a
    let b; // secret of rev-b
    before(() => {
      a = addClient(srv, 'rev-a', ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      b = addClient(srv, 'rev-b', ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
      addClient(srv, 'rev-public', ['--auth', 'none', '--redirect-uri', 'https://app.example/cb', '--scope', 'user/*.rs']);
    });
    const tokenOf = async (id, secret) => assertTokenResponse(await basicToken(srv, id, secret), {}, `token of ${id}`);

    it('/revoke of a used (cached) access token -> 200, then the API refuses it at once', async () => {
      const t = await tokenOf('rev-a', a);
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token }), 200, 'before revocation');
      assertStatus(await fhir(srv, 'GET', '/Patient/cc-p1', { token: t.token }), 200, 'before revocation (cached)');
      const r = await postForm(srv, '/revoke', { token: t.token }, { basic: ['rev-a', a] });
      assertStatus(r, 200, '/revoke');
      assertInvalidToken(await fhir(srv, 'GET', '/Patient', { token: t.token }), 'revoked token, next request');
      const intro = await postForm(srv, '/introspect', { token: t.token }, { basic: ['rev-a', a] });
      assertStatus(intro, 200, 'introspect revoked');
      assert.deepEqual(intro.json, { active: false }, `introspection of a revoked token: ${intro.text}`);
    });

    it('/revoke of an unknown token -> 200', async () => {
      assertStatus(await postForm(srv, '/revoke', { token: 'no-such-token-at-all' }, { basic: ['rev-a', a] }), 200, 'garbage');
      assertStatus(await postForm(srv, '/revoke', { token: 'a.b.c', token_type_hint: 'access_token' }, { basic: ['rev-a', a] }), 200, 'a.b.c');
    });

    it("/revoke of another client's token -> 200, and that token still works", async () => {
      const t = await tokenOf('rev-b', b);
      const r = await postForm(srv, '/revoke', { token: t.token }, { basic: ['rev-a', a] });
      assertStatus(r, 200, 'revoke a foreign token');
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token }), 200, 'foreign token after the attempt');
      const intro = await postForm(srv, '/introspect', { token: t.token }, { basic: ['rev-b', b] });
      assert.equal(intro.json && intro.json.active, true, `introspection: ${intro.text}`);
    });

    it('/revoke with bad client credentials -> 401 invalid_client', async () => {
      const t = await tokenOf('rev-a', a);
      const r = await postForm(srv, '/revoke', { token: t.token }, { basic: ['rev-a', 'wrong'] });
      assertOAuthError(r, 401, 'invalid_client', 'revoke with a wrong secret');
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token }), 200, 'token after a refused revocation');
    });

    it('introspection of an active token: active, scope, client_id, exp, iat, sub, iss', async () => {
      const t = await tokenOf('rev-a', a);
      const r = await postForm(srv, '/introspect', { token: t.token }, { basic: ['rev-a', a] });
      assertStatus(r, 200, 'introspect');
      const j = r.json;
      assert.equal(j.active, true, r.text);
      assert.equal(j.scope, 'system/Patient.rs');
      assert.equal(j.client_id, 'rev-a');
      assert.equal(j.sub, 'rev-a');
      assert.equal(j.iss, srv.issuer);
      assert.equal(j.exp, t.claims.exp);
      assert.equal(j.iat, t.claims.iat);
      assert.equal(j.jti, t.claims.jti);
      assert.equal(j.aud, srv.issuer);
      assert.equal(j.token_type, 'Bearer');
      assert.match(r.headers['cache-control'] || '', /no-store/);
    });

    it('introspection of an expired token or garbage -> exactly {"active":false}', async () => {
      const t0 = now();
      const expired = forgeJwt(srv, {
        iss: srv.issuer, aud: srv.issuer, sub: 'rev-a', clientId: 'rev-a', scope: 'system/Patient.rs', iat: t0 - 900, exp: t0 - 600,
      });
      for (const [what, tok] of [['expired', expired], ['garbage', 'garbage'], ['empty-ish', 'a.b.c']]) {
        const r = await postForm(srv, '/introspect', { token: tok }, { basic: ['rev-a', a] });
        assertStatus(r, 200, what);
        assert.deepEqual(r.json, { active: false }, `${what}: ${r.text}`);
      }
    });

    it('introspection by a public client -> 401 invalid_client', async () => {
      const t = await tokenOf('rev-a', a);
      const r = await postForm(srv, '/introspect', { token: t.token, client_id: 'rev-public' });
      assertOAuthError(r, 401, 'invalid_client', 'public client introspecting');
      assert.equal(r.json.active, undefined);
    });
  });

  // -------------------------------------------------------------------------
  describe('pushed authorization requests (PAR)', () => {
    let secret;
    const redirect = 'https://par.example/cb';
    before(() => {
      secret = addClient(srv, 'par-app', ['--auth', 'client_secret_basic', '--redirect-uri', redirect,
        '--grant-type', 'authorization_code', '--grant-type', 'refresh_token', '--scope', 'openid fhirUser user/*.rs']);
      addClient(srv, 'par-other', ['--auth', 'none', '--redirect-uri', 'https://other.example/cb', '--scope', 'openid user/*.rs']);
    });
    const params = (over = {}) => ({
      response_type: 'code',
      client_id: 'par-app',
      redirect_uri: redirect,
      scope: 'openid user/*.rs',
      state: crypto.randomBytes(8).toString('hex'),
      code_challenge: crypto.createHash('sha256').update(crypto.randomBytes(32).toString('base64url')).digest('base64url'),
      code_challenge_method: 'S256',
      aud: srv.issuer,
      ...over,
    });
    const push = (over) => postForm(srv, '/par', params(over), { basic: ['par-app', secret] });
    const authorize = (clientId, requestUri) => request(srv, 'GET',
      `/authorize?client_id=${encodeURIComponent(clientId)}&request_uri=${encodeURIComponent(requestUri)}`, { accept: 'text/html' });

    it('POST /par -> 201 {request_uri, expires_in}; /authorize with it shows the login page; a second use -> 400 page', async () => {
      const p = await push();
      assertStatus(p, 201, 'POST /par');
      assert.match(p.json.request_uri, /^urn:ietf:params:oauth:request_uri:.{20,}/, p.text);
      assert.ok(Number.isInteger(p.json.expires_in) && p.json.expires_in > 0 && p.json.expires_in <= 60, p.text);
      assert.match(p.headers['cache-control'] || '', /no-store/);

      const page = await authorize('par-app', p.json.request_uri);
      assertStatus(page, 200, 'GET /authorize with request_uri');
      assert.match(page.headers['content-type'] || '', /^text\/html/, describeRes(page));
      assert.ok(page.text.includes('name="password"'), `not the login page: ${page.text.slice(0, 400)}`);

      const again = await authorize('par-app', p.json.request_uri);
      assertStatus(again, 400, 'second use of the request_uri');
      assert.match(again.headers['content-type'] || '', /^text\/html/);
      assert.equal(again.headers.location, undefined, 'an error page must not redirect');
      assert.ok(!again.text.includes('name="password"'));
    });

    it('a request_uri of another client -> 400 page', async () => {
      const p = await push();
      assertStatus(p, 201);
      const page = await authorize('par-other', p.json.request_uri);
      assertStatus(page, 400, "par-other using par-app's request_uri");
      assert.match(page.headers['content-type'] || '', /^text\/html/);
      assert.equal(page.headers.location, undefined);
      assert.ok(!page.text.includes('name="password"'));
    });

    it('an unknown request_uri -> 400 page', async () => {
      const page = await authorize('par-app', 'urn:ietf:params:oauth:request_uri:made-up-value-0123456789');
      assertStatus(page, 400, 'unknown request_uri');
      assert.equal(page.headers.location, undefined);
    });

    it('PAR with an unregistered redirect_uri -> 400 invalid_request', async () => {
      assertOAuthError(await push({ redirect_uri: 'https://evil.example/cb' }), 400, 'invalid_request', 'unregistered redirect_uri');
    });

    it('PAR with a wrong client secret -> 401 invalid_client', async () => {
      const r = await postForm(srv, '/par', params(), { basic: ['par-app', 'wrong-secret'] });
      assertOAuthError(r, 401, 'invalid_client', 'PAR with a wrong secret');
    });
  });

  // -------------------------------------------------------------------------
  describe('token endpoint hygiene', () => {
    let secret;
    before(() => {
      secret = addClient(srv, 'hygiene-app', ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
    });

    it('Cache-Control: no-store and Pragma: no-cache on success and error responses', async () => {
      const ok = await basicToken(srv, 'hygiene-app', secret);
      assertTokenResponse(ok, {}, 'success');
      const err = await basicToken(srv, 'hygiene-app', 'wrong');
      assertOAuthError(err, 401, 'invalid_client', 'wrong secret');
      const bad = await basicToken(srv, 'hygiene-app', secret, { scope: 'system/Nope.rs' });
      assertOAuthError(bad, 400, 'invalid_scope', 'invalid scope');
      for (const [what, r] of [['200', ok], ['401', err], ['400', bad]]) {
        assert.match(r.headers['cache-control'] || '', /no-store/, `${what}: ${describeRes(r)}`);
        assert.equal(r.headers.pragma, 'no-cache', `${what}: ${describeRes(r)}`);
      }
    });

    it('parameters in the token URL, a repeated parameter, a JSON body, an unknown grant type -> 400', async () => {
      const inUrl = await request(srv, 'POST', '/token?grant_type=client_credentials', {
        body: '', contentType: 'application/x-www-form-urlencoded', accept: 'application/json',
        headers: { Authorization: basicAuth('hygiene-app', secret) },
      });
      assertOAuthError(inUrl, 400, 'invalid_request', 'grant_type in the URL');
      const twice = await postForm(srv, '/token', 'grant_type=client_credentials&scope=system/Patient.rs&scope=system/Patient.rs', { basic: ['hygiene-app', secret] });
      assertOAuthError(twice, 400, 'invalid_request', 'repeated scope');
      const json = await request(srv, 'POST', '/token', {
        body: { grant_type: 'client_credentials' }, contentType: 'application/json', accept: 'application/json',
        headers: { Authorization: basicAuth('hygiene-app', secret) },
      });
      assertOAuthError(json, 400, 'invalid_request', 'JSON body');
      const unknown = await postForm(srv, '/token', { grant_type: 'password', username: 'x', password: 'y' }, { basic: ['hygiene-app', secret] });
      assertOAuthError(unknown, 400, 'unsupported_grant_type', 'password grant');
    });

    it('access_token in the query string of a FHIR request -> 400', async () => {
      const t = assertTokenResponse(await basicToken(srv, 'hygiene-app', secret), {}, 'token');
      const r1 = await request(srv, 'GET', `/Patient?access_token=${t.token}`);
      assertOutcome(r1, 400, 'security', 'token_in_query', 'access_token in the query');
      const r2 = await request(srv, 'GET', `/Patient?access_token=${t.token}`, { token: t.token });
      assertOutcome(r2, 400, 'security', 'token_in_query', 'access_token in the query with a header token');
    });
  });

  it('the server log contains no client secret and no issued token', () => {
    const log = srv.stderrText();
    for (const s of srv.allSecrets) {
      assert.ok(!log.includes(s), `a secret or token appears in the server log: ${s.slice(0, 12)}...`);
    }
  });
});

// ===========================================================================

describe('signing key rotation (keys rotate-signing --activate-in 2)', { timeout: 60000 }, () => {
  let srv;
  before(async () => { srv = await startOAuthServer('oauth-rotation'); });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('published at once, signs after activation; old tokens keep working; keys list shows both', async () => {
    const secret = addClient(srv, 'rot-app', ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
    const tok = async (what) => assertTokenResponse(await basicToken(srv, 'rot-app', secret), {}, what);
    const jwksKids = async () => {
      const r = await request(srv, 'GET', '/jwks', { accept: 'application/json' });
      assertStatus(r, 200, '/jwks');
      return r.json.keys.map((k) => k.kid);
    };
    const t0 = await tok('before rotation');
    const oldKid = t0.header.kid;
    assert.ok(oldKid, 'access token without kid');
    assert.ok((await jwksKids()).includes(oldKid), 'the signing kid is not in /jwks');

    const out = cli(srv, ['keys', 'rotate-signing', '--data-dir', srv.dataDir, '--activate-in', '2']);
    const rotatedAt = Date.now();
    const m = /key (\S+) published/.exec(out);
    assert.ok(m, `rotate-signing output: ${out}`);
    const newKid = m[1];
    assert.notEqual(newKid, oldKid);

    // Right after the rotation, tokens are still signed with the old key.
    const t1 = await tok('right after rotation');
    assert.equal(t1.header.kid, oldKid, `a token was signed with the new key ${Date.now() - rotatedAt} ms after a rotation with --activate-in 2`);

    // The new kid is published at once (the server reloads the manifest within a second).
    let seenAt;
    while (Date.now() - rotatedAt < 1500) {
      if ((await jwksKids()).includes(newKid)) { seenAt = Date.now() - rotatedAt; break; }
      await sleep(100);
    }
    assert.ok(seenAt !== undefined, `new kid ${newKid} not in /jwks within 1.5 s: ${await jwksKids()}`);
    assert.ok((await jwksKids()).includes(oldKid), 'the old kid left /jwks');

    // After activation new tokens carry the new kid.
    await sleep(Math.max(0, rotatedAt + 3000 - Date.now()));
    let t2;
    while (Date.now() - rotatedAt < 4500) {
      t2 = await tok('after activation');
      if (t2.header.kid === newKid) break;
      await sleep(200);
    }
    assert.equal(t2.header.kid, newKid, `tokens still signed with ${t2.header.kid} ${Date.now() - rotatedAt} ms after rotation`);

    // Every token works at the API: old-key ones (t1 never used before, so not cached) and new ones.
    assertStatus(await fhir(srv, 'GET', '/Patient', { token: t1.token }), 200, 'old-key token, first use after rotation');
    assertStatus(await fhir(srv, 'GET', '/Patient', { token: t0.token }), 200, 'old-key token from before rotation');
    assertStatus(await fhir(srv, 'GET', '/Patient', { token: t2.token }), 200, 'new-key token');
    const kids = await jwksKids();
    assert.ok(kids.includes(oldKid) && kids.includes(newKid), `/jwks after activation: ${kids}`);

    // Introspection knows both keys too.
    const intro = await postForm(srv, '/introspect', { token: t1.token }, { basic: ['rot-app', secret] });
    assert.equal(intro.json && intro.json.active, true, `introspection of an old-key token: ${intro.text}`);

    const list = cli(srv, ['keys', 'list', '--data-dir', srv.dataDir]);
    const line = (kid) => list.split('\n').find((l) => l.startsWith(kid)) || '';
    assert.ok(line(oldKid), `keys list lacks the old key: ${list}`);
    assert.ok(line(newKid), `keys list lacks the new key: ${list}`);
    assert.match(line(newKid), /\bactive\b/, `new key state: ${list}`);
    assert.doesNotMatch(line(oldKid), /\bretired\b/, `old key already retired: ${list}`);
  });
});

// ===========================================================================

describe('revocation across nodes sharing the database, and across a restart', { timeout: 90000 }, () => {
  const config = `base_url = "https://fhirward.test:9443"\n${OAUTH_CONFIG}`;
  let a;
  let b;
  let a2;
  before(async () => {
    a = await startServer({ name: 'node-a', config });
    // Node B: its own data dir (own audit trail) with the same keys and the same
    // databases (DATA/db is a symlink to node A's).
    const bDir = `${a.root}/data-b`;
    fs.mkdirSync(bDir, { mode: 0o700 });
    fs.copyFileSync(`${a.dataDir}/instance.json`, `${bDir}/instance.json`);
    fs.cpSync(`${a.dataDir}/keys`, `${bDir}/keys`, { recursive: true });
    fs.cpSync(`${a.dataDir}/tls`, `${bDir}/tls`, { recursive: true });
    fs.symlinkSync(`${a.dataDir}/db`, `${bDir}/db`);
    b = await startServer({ name: 'node-b', config, root: a.root, dataDir: bDir });
  });
  after(async () => {
    if (b) await b.stop();
    if (a2) {
      if (a && !a.exit) await a.stop();
      await stopAndClean(a2);
    } else {
      await stopAndClean(a);
    }
  });
  afterEach(diagnose(() => [a, b, a2]));

  it('a token revoked on one node is refused by the other within a second, and after a restart', async () => {
    const secret = addClient(a, 'multi-app', ['--auth', 'client_secret_basic', '--grant-type', 'client_credentials', '--scope', 'system/Patient.rs']);
    const tok = async (srv, what) => assertTokenResponse(await basicToken(srv, 'multi-app', secret), {}, what);
    const t1 = await tok(a, 'token from node A');
    assert.equal(t1.claims.iss, 'https://fhirward.test:9443');
    const t2 = await tok(b, 'token from node B');
    for (const [what, srv, t] of [['t1 on A', a, t1], ['t1 on B', b, t1], ['t2 on A', a, t2]]) {
      assertStatus(await fhir(srv, 'GET', '/Patient', { token: t.token }), 200, what);
    }

    assertStatus(await postForm(a, '/revoke', { token: t1.token }, { basic: ['multi-app', secret] }), 200, 'revoke on A');
    assertInvalidToken(await fhir(a, 'GET', '/Patient', { token: t1.token }), 'revoked token on node A');
    const revokedAt = Date.now();
    let refusedAfter;
    while (Date.now() - revokedAt < 2500) {
      const r = await fhir(b, 'GET', '/Patient', { token: t1.token });
      if (r.status === 401) { refusedAfter = Date.now() - revokedAt; assertInvalidToken(r, 'revoked token on node B'); break; }
      assertStatus(r, 200, 'node B before it saw the revocation');
      await sleep(100);
    }
    assert.ok(refusedAfter !== undefined, 'node B still accepts the revoked token 2.5 s after its revocation');
    assert.ok(refusedAfter <= 1500, `node B took ${refusedAfter} ms to refuse a revoked token (docs: within a second)`);
    const intro = await postForm(b, '/introspect', { token: t1.token }, { basic: ['multi-app', secret] });
    assert.deepEqual(intro.json, { active: false }, `introspection on B: ${intro.text}`);
    assertStatus(await fhir(b, 'GET', '/Patient', { token: t2.token }), 200, 'the other token on B');

    await b.stop();
    b = undefined;
    const e = await a.stop();
    assert.deepEqual(e, { code: 0, signal: null });
    a2 = await startServer({ name: 'node-a-restarted', config, root: a.root, dataDir: a.dataDir });
    assertInvalidToken(await fhir(a2, 'GET', '/Patient', { token: t1.token }), 'revoked token after a restart');
    assertStatus(await fhir(a2, 'GET', '/Patient', { token: t2.token }), 200, 'unrevoked token after a restart');
  });
});
