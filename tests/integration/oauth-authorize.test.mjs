// The built-in authorization server (docs/oauth.md): discovery, the browser flow
// (/authorize -> login -> TOTP -> consent -> code), its pages, sessions and
// lockout, and the token endpoint with authorization codes and refresh tokens.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, request, client, mintToken, runCli, sleep,
  assertStatus, describeRes,
} from './lib.mjs';
import {
  oauthConfig, newBrowser, parsePage, pkce, formBody, authorizeQuery, authorizeParams, parseLocation,
  authorize, tokenRequest, exchangeCode, refreshGrant, revokeToken, codeFlowTokens, decodeJwt,
  verifyJwtWithJwks, totp, addUser, addClient, createLaunch, cli, auditRecords, oauthSql,
} from './oauth-lib.mjs';

const APP_CB = 'https://app.example/cb';
const APP_CB2 = 'https://app.example/cb2';
const OTHER_CB = 'https://other.example/cb';
const LOOP_CB = 'http://127.0.0.1:8765/cb';
const QUERY_CB = 'https://app.example/cb3?tenant=a';
const APP_SCOPE = 'openid fhirUser launch launch/patient launch/encounter offline_access online_access patient/*.rs user/*.rs';
const PATIENT_SCOPE = 'openid fhirUser launch/patient offline_access patient/*.rs';
const PW = 'correct-horse-battery-staple';

const scopeSet = (s) => new Set(String(s || '').split(' ').filter(Boolean));

/** An OAuth JSON error: status, error value, JSON, no-store. */
function assertOAuthError(res, status, error, what = '') {
  const d = `${what}: ${describeRes(res)}`;
  const statuses = Array.isArray(status) ? status : [status];
  assert.ok(statuses.includes(res.status), `expected HTTP ${statuses}; ${d}`);
  assert.match(res.headers['content-type'] || '', /^application\/json/, `Content-Type; ${d}`);
  assert.ok(res.json && typeof res.json === 'object', `no JSON body; ${d}`);
  assert.equal(res.json.error, error, `error value; ${d}`);
  assert.match(res.headers['cache-control'] || '', /no-store/, `Cache-Control no-store; ${d}`);
  assert.equal(res.json.access_token, undefined, `an error carries no token; ${d}`);
}

/** An HTML error page, never a redirect. */
function assertErrorPage(res, status, what = '') {
  const d = `${what}: ${describeRes(res)}`;
  assert.equal(res.status, status, `status; ${d}`);
  assert.equal(res.headers.location, undefined, `an error page must not redirect; ${d}`);
  assert.match(res.headers['content-type'] || '', /^text\/html/, `Content-Type; ${d}`);
  assert.ok(!/name="code"|[?&]code=/.test(res.text), `no code on an error page; ${d}`);
}

/** A 302 back to `base` with error=`error`, the given state and iss (RFC 9207). */
function assertRedirectError(srv, res, error, { state, base = APP_CB, what = '' } = {}) {
  const d = `${what}: ${describeRes(res)}`;
  assert.equal(res.status, 302, `status; ${d}`);
  const loc = parseLocation(res);
  assert.ok(loc, `no Location; ${d}`);
  assert.equal(loc.base, base, `redirect target; ${d}`);
  assert.equal(loc.params.error, error, `error; ${d}`);
  assert.equal(loc.params.code, undefined, `no code with an error; ${d}`);
  if (state !== undefined) assert.equal(loc.params.state, state, `state echoed; ${d}`);
  assert.equal(loc.params.iss, srv.base, `iss (RFC 9207); ${d}`);
  return loc;
}

describe('oauth: authorization endpoint, pages, sessions, codes and refresh tokens', { timeout: 240000 }, () => {
  let srv;
  let admin;
  let jwks;
  const users = {};

  before(async () => {
    srv = await startServer({
      name: 'oauth-authorize',
      config: oauthConfig({ session_idle_seconds: 10, max_login_failures: 3, lockout_seconds: 60 }),
    });
    admin = client(srv, mintToken(srv, { sub: 'fixture-admin', scope: 'user/*.cruds' }));
    for (const id of ['p1', 'p2']) {
      assertStatus(await admin.put(`/Patient/${id}`, { resourceType: 'Patient', id, name: [{ family: `Fam-${id}` }] }), [200, 201], `fixture Patient/${id}`);
    }
    for (const [username, fhirUser] of [
      ['pat1', 'Patient/p1'], ['drsmith', 'Practitioner/pr1'], ['wrongpw', 'Patient/p1'],
      ['locky', 'Patient/p1'], ['locky2', 'Patient/p1'], ['dis', 'Patient/p1'], ['sess', 'Patient/p1'], ['csrfu', 'Patient/p1'],
    ]) {
      users[username] = addUser(srv, { username, fhirUser, password: PW });
    }
    users.otp = addUser(srv, { username: 'otp', fhirUser: 'Patient/p1', password: PW, totp: true });
    users.otplock = addUser(srv, { username: 'otplock', fhirUser: 'Patient/p1', password: PW, totp: true });
    assert.match(users.otp.totpUri || '', /^otpauth:\/\/totp\//, `users add --totp printed no otpauth URI: ${users.otp.stdout}`);
    assert.match(users.otp.totpSecret || '', /^[A-Z2-7]+=*$/, 'base32 TOTP secret');
    addClient(srv, { clientId: 'app', name: 'Test App', scope: APP_SCOPE, redirectUris: [APP_CB, APP_CB2] });
    addClient(srv, { clientId: 'other-app', scope: APP_SCOPE, redirectUris: [OTHER_CB] });
    addClient(srv, { clientId: 'loop-app', scope: APP_SCOPE, redirectUris: [LOOP_CB] });
    addClient(srv, { clientId: 'norotate', scope: APP_SCOPE, redirectUris: [APP_CB], noRotateRefresh: true });
    addClient(srv, { clientId: 'query-app', scope: APP_SCOPE, redirectUris: [QUERY_CB] });
    addClient(srv, { clientId: 'disabled-app', scope: APP_SCOPE, redirectUris: [APP_CB] });
    cli(['clients', 'disable', '--data-dir', srv.dataDir, '--client-id', 'disabled-app']);
    addClient(srv, { clientId: 'nocode-app', scope: APP_SCOPE, redirectUris: [APP_CB], grantTypes: ['refresh_token'] });
    const j = await request(srv, 'GET', '/jwks', { accept: 'application/json' });
    assertStatus(j, 200, 'GET /jwks');
    jwks = j.json;
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  const api = (token, path = '/Patient/p1') => request(srv, 'GET', path, { token });
  const flowOpts = (o = {}) => ({ clientId: 'app', redirectUri: APP_CB, scope: PATIENT_SCOPE, username: 'pat1', password: PW, ...o });
  // One browser for the token-endpoint tests: after the first login it goes straight to consent.
  let tokenBrowser;
  const freshCode = async (o = {}) => {
    tokenBrowser = tokenBrowser || newBrowser(srv);
    return authorize(srv, flowOpts({ browser: tokenBrowser, ...o }));
  };

  // -------------------------------------------------------------------------
  describe('discovery', () => {
    it('smart-configuration: JSON even for Accept: text/html, absolute URLs, S256 only, capabilities, CORS', async () => {
      const r = await request(srv, 'GET', '/.well-known/smart-configuration', { accept: 'text/html' });
      assertStatus(r, 200, 'smart-configuration');
      assert.match(r.headers['content-type'] || '', /^application\/json/, describeRes(r));
      assert.equal(r.headers['access-control-allow-origin'], '*', `CORS; ${describeRes(r)}`);
      const c = r.json;
      assert.equal(c.issuer, srv.base);
      for (const [k, path] of [['authorization_endpoint', '/authorize'], ['token_endpoint', '/token'],
        ['jwks_uri', '/jwks'], ['revocation_endpoint', '/revoke'], ['introspection_endpoint', '/introspect']]) {
        assert.equal(c[k], `${srv.base}${path}`, `${k} is an absolute URL under the issuer`);
        assert.doesNotThrow(() => new URL(c[k]), k);
      }
      assert.deepEqual(c.code_challenge_methods_supported, ['S256']);
      for (const cap of ['launch-ehr', 'launch-standalone', 'client-public', 'client-confidential-asymmetric',
        'permission-v2', 'sso-openid-connect', 'authorize-post']) {
        assert.ok((c.capabilities || []).includes(cap), `capability ${cap} missing: ${c.capabilities}`);
      }
    });

    for (const path of ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']) {
      it(`${path}: exact issuer, iss parameter supported, code only`, async () => {
        const r = await request(srv, 'GET', path, { accept: 'application/json' });
        assertStatus(r, 200, path);
        assert.match(r.headers['content-type'] || '', /^application\/json/);
        assert.equal(r.json.issuer, srv.base, 'issuer is exactly the FHIR base');
        assert.equal(r.json.authorization_response_iss_parameter_supported, true);
        assert.deepEqual(r.json.response_types_supported, ['code']);
        assert.equal(r.json.authorization_endpoint, `${srv.base}/authorize`);
        assert.deepEqual(r.json.code_challenge_methods_supported, ['S256']);
      });
    }

    it('/jwks: keys with kid and alg, no private members, ES256 and RS256, CORS', async () => {
      const r = await request(srv, 'GET', '/jwks', { accept: 'application/json' });
      assertStatus(r, 200);
      assert.equal(r.headers['access-control-allow-origin'], '*');
      const keys = r.json.keys;
      assert.ok(Array.isArray(keys) && keys.length >= 2, `keys: ${r.text}`);
      for (const k of keys) {
        assert.ok(typeof k.kid === 'string' && k.kid.length > 0, `kid: ${JSON.stringify(k)}`);
        assert.ok(['ES256', 'RS256'].includes(k.alg), `alg: ${JSON.stringify(k)}`);
        for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'oth']) {
          assert.equal(k[priv], undefined, `private member ${priv} published: ${JSON.stringify(k)}`);
        }
      }
      const algs = keys.map((k) => k.alg);
      assert.ok(algs.includes('ES256') && algs.includes('RS256'), `algs: ${algs}`);
      assert.equal(new Set(keys.map((k) => k.kid)).size, keys.length, 'kids are unique');
    });
  });

  // -------------------------------------------------------------------------
  describe('standalone launch (public client, patient user)', () => {
    it('code with state and iss; token response; the access token works; id_token claims', async () => {
      const browser = newBrowser(srv);
      const nonce = `nonce-${Date.now()}`;
      const state = 'st-happy-1';
      const flow = await authorize(srv, flowOpts({ browser, nonce, state }));
      assert.deepEqual(flow.pages, ['login:200', 'consent:200'], 'login then consent');
      assert.equal(flow.res.status, 302);
      assert.equal(flow.redirectBase, APP_CB, 'redirected to the registered URI');
      assert.equal(flow.state, state, 'state echoed');
      assert.equal(flow.iss, srv.base, 'iss = issuer (RFC 9207)');
      assert.match(flow.code, /^[A-Za-z0-9_-]{43,}$/, 'a 256-bit random code');
      for (const name of ['__Host-fw_browser', '__Host-fw_session']) {
        const a = browser.jar.attrs(name);
        assert.ok(a, `cookie ${name} set; have ${browser.jar.names()}`);
        assert.ok(a.secure && a.httponly, `${name} Secure; HttpOnly: ${JSON.stringify(a)}`);
        assert.equal(String(a.samesite).toLowerCase(), 'lax', `${name} SameSite=Lax`);
        assert.equal(a.path, '/', `${name} Path=/`);
        assert.equal(a.domain, undefined, `${name}: __Host- cookies have no Domain`);
      }

      const r = await exchangeCode(srv, { clientId: 'app', code: flow.code, redirectUri: APP_CB, verifier: flow.verifier });
      assertStatus(r, 200, 'code exchange');
      assert.match(r.headers['content-type'] || '', /^application\/json/);
      assert.match(r.headers['cache-control'] || '', /no-store/, 'Cache-Control: no-store');
      assert.equal(r.headers.pragma, 'no-cache', 'Pragma: no-cache');
      const t = r.json;
      assert.equal(t.token_type, 'Bearer');
      assert.ok(Number.isInteger(t.expires_in) && t.expires_in > 0 && t.expires_in <= 3600, `expires_in ${t.expires_in}`);
      assert.deepEqual(scopeSet(t.scope), scopeSet(PATIENT_SCOPE), 'granted scope');
      assert.ok(typeof t.refresh_token === 'string' && t.refresh_token.length >= 43, 'refresh_token (offline_access)');
      assert.ok(typeof t.id_token === 'string', 'id_token (openid)');
      assert.equal(t.patient, 'p1', 'patient from the user\'s fhirUser');

      const at = decodeJwt(t.access_token);
      assert.equal(at.header.typ, 'at+jwt');
      assert.equal(at.header.alg, 'ES256');
      assert.ok(at.header.kid, 'kid');
      assert.ok(verifyJwtWithJwks(t.access_token, jwks), 'access token verifies with a published key');
      assert.equal(at.payload.iss, srv.base);
      assert.equal(at.payload.aud, srv.base);
      assert.equal(at.payload.sub, 'pat1');
      assert.equal(at.payload.client_id, 'app');
      assert.equal(at.payload.patient, 'p1');
      assert.ok(at.payload.jti && at.payload.exp > at.payload.iat && at.payload.exp - at.payload.iat <= 3600);

      const read = await api(t.access_token, '/Patient/p1');
      assertStatus(read, 200, 'GET /Patient/p1 with the issued token');
      assert.equal(read.json.id, 'p1');

      const id = decodeJwt(t.id_token);
      assert.ok(verifyJwtWithJwks(t.id_token, jwks), 'id_token verifies with a published key');
      assert.equal(id.payload.iss, srv.base);
      assert.equal(id.payload.aud, 'app', 'id_token aud = client_id');
      assert.equal(id.payload.nonce, nonce, 'nonce echoed');
      assert.equal(id.payload.sub, 'pat1');
      assert.equal(id.payload.fhirUser, `${srv.base}/Patient/p1`, 'fhirUser is an absolute URL');
      assert.ok(Number.isInteger(id.payload.auth_time) && id.payload.exp > id.payload.iat);

      const audit = auditRecords(srv, { client_id: 'app', subject: 'pat1' });
      for (const [action, outcome] of [['login', 'success'], ['consent', 'success'], ['token-issue', 'success']]) {
        assert.ok(audit.some((a) => a.action === action && a.outcome === outcome), `audit ${action}/${outcome} missing: ${JSON.stringify(audit.map((a) => [a.action, a.outcome]))}`);
      }
    });
  });

  // -------------------------------------------------------------------------
  describe('EHR launch', () => {
    it('launch context from `launch create`: patient p2 and encounter e1 in the response and the token', async () => {
      const launch = createLaunch(srv, { patient: 'p2', encounter: 'e1' });
      assert.match(launch, /^[A-Za-z0-9_-]{10,}$/, `launch id: ${launch}`);
      const { json: t } = await codeFlowTokens(srv, {
        clientId: 'app', redirectUri: APP_CB, launch, username: 'drsmith', password: PW,
        scope: 'launch launch/patient openid fhirUser patient/*.rs',
      });
      assert.equal(t.patient, 'p2');
      assert.equal(t.encounter, 'e1');
      const at = decodeJwt(t.access_token).payload;
      assert.equal(at.patient, 'p2');
      assert.equal(at.encounter, 'e1');
      assert.equal(at.sub, 'drsmith');
      assertStatus(await api(t.access_token, '/Patient/p2'), 200, 'GET /Patient/p2 in the launch context');
      assert.equal(decodeJwt(t.id_token).payload.fhirUser, `${srv.base}/Practitioner/pr1`);
    });

    it('unknown launch -> redirect with error=invalid_request, state and iss (audited)', async () => {
      const b = newBrowser(srv);
      const { challenge } = pkce();
      const r = await b.get(authorizeQuery(authorizeParams(srv, {
        clientId: 'app', redirectUri: APP_CB, scope: 'launch patient/*.rs', state: 'st-launch', challenge, launch: 'no-such-launch',
      })));
      assertRedirectError(srv, r, 'invalid_request', { state: 'st-launch', what: 'unknown launch' });
      assert.ok(auditRecords(srv, { action: 'authorize', outcome: 'denied', error: 'invalid_request', client_id: 'app' }).length > 0,
        'authorize denial audited');
    });

    it('an expired launch -> redirect with error=invalid_request', async () => {
      const launch = createLaunch(srv, { patient: 'p2' });
      oauthSql(srv, `UPDATE launches SET expires=0 WHERE id='${launch}';`);
      const r = await newBrowser(srv).get(authorizeQuery(authorizeParams(srv, {
        clientId: 'app', redirectUri: APP_CB, scope: 'launch patient/*.rs', state: 'st-exp', challenge: pkce().challenge, launch,
      })));
      assertRedirectError(srv, r, 'invalid_request', { state: 'st-exp', what: 'expired launch' });
    });

    it('practitioner without a launch asking for patient scopes -> invalid_request after consent', async () => {
      const flow = await authorize(srv, {
        clientId: 'app', redirectUri: APP_CB, scope: 'openid patient/*.rs', state: 'st-nopat',
        username: 'drsmith', password: PW, allowError: true,
      });
      assertRedirectError(srv, flow.res, 'invalid_request', { state: 'st-nopat', what: 'no patient context' });
      assert.ok(auditRecords(srv, { action: 'consent', outcome: 'denied', error: 'no_patient_context', subject: 'drsmith' }).length > 0,
        'audited as no_patient_context');
    });
  });

  // -------------------------------------------------------------------------
  describe('consent page', () => {
    it('lists the requested scopes; required ones cannot be unticked; an unticked scope is not granted', async () => {
      const b = newBrowser(srv);
      const flow = await authorize(srv, flowOpts({ browser: b, stopAt: 'consent' }));
      const page = flow.page;
      const byScope = Object.fromEntries(page.scopes.map((s) => [s.scope, s]));
      assert.deepEqual(new Set(Object.keys(byScope)), scopeSet(PATIENT_SCOPE), `consent lists the scopes: ${JSON.stringify(page.scopes)}`);
      assert.ok(byScope.openid.required && byScope['launch/patient'].required, 'openid and launch/* are required');
      assert.ok(!byScope['offline_access'].required && byScope['offline_access'].checked, 'offline_access optional, ticked');
      // Untick offline_access; also try to add a scope that was never requested.
      const res = await b.post('/authorize/consent', [
        ...Object.entries(page.hidden),
        ['scope', 'openid'], ['scope', 'launch/patient'], ['scope', 'fhirUser'], ['scope', 'patient/*.rs'],
        ['scope', 'user/*.rs'], ['decision', 'allow'],
      ]);
      assert.equal(res.status, 302, describeRes(res));
      const loc = parseLocation(res);
      assert.ok(loc.params.code, `code: ${loc.url}`);
      const t = await exchangeCode(srv, { clientId: 'app', code: loc.params.code, redirectUri: APP_CB, verifier: flow.verifier });
      assertStatus(t, 200);
      const granted = scopeSet(t.json.scope);
      assert.ok(!granted.has('offline_access'), `unticked offline_access granted: ${t.json.scope}`);
      assert.ok(!granted.has('user/*.rs'), `a scope never requested was granted: ${t.json.scope}`);
      assert.deepEqual(granted, scopeSet('openid fhirUser launch/patient patient/*.rs'));
      assert.equal(t.json.refresh_token, undefined, 'no refresh token without offline_access');
    });

    it('required scopes stay granted even when the form omits them', async () => {
      const b = newBrowser(srv);
      const flow = await authorize(srv, flowOpts({ browser: b, stopAt: 'consent' }));
      const res = await b.post('/authorize/consent', [...Object.entries(flow.page.hidden), ['scope', 'patient/*.rs'], ['decision', 'allow']]);
      assert.equal(res.status, 302, describeRes(res));
      const t = await exchangeCode(srv, { clientId: 'app', code: parseLocation(res).params.code, redirectUri: APP_CB, verifier: flow.verifier });
      assertStatus(t, 200);
      assert.deepEqual(scopeSet(t.json.scope), scopeSet('openid launch/patient patient/*.rs'));
    });

    it('decision=deny -> redirect error=access_denied with state and iss (audited)', async () => {
      const flow = await authorize(srv, flowOpts({ state: 'st-deny', decision: 'deny' }));
      assertRedirectError(srv, flow.res, 'access_denied', { state: 'st-deny', what: 'deny' });
      assert.ok(auditRecords(srv, { action: 'consent', outcome: 'denied', error: 'access_denied', subject: 'pat1' }).length > 0);
    });
  });

  // -------------------------------------------------------------------------
  describe('authorization request errors', () => {
    const get = (params) => newBrowser(srv).get(authorizeQuery(params));
    const base = (o = {}) => authorizeParams(srv, {
      clientId: 'app', redirectUri: APP_CB, scope: PATIENT_SCOPE, state: 'st-err', challenge: pkce().challenge, ...o,
    });

    it('unknown, missing or disabled client -> 400 HTML page, no redirect', async () => {
      assertErrorPage(await get(base({ clientId: 'no-such-client' })), 400, 'unknown client');
      assertErrorPage(await get(base({ extra: { client_id: null } })), 400, 'no client_id');
      assertErrorPage(await get(base({ clientId: 'disabled-app' })), 400, 'disabled client');
    });

    it('a client without the authorization_code grant -> redirect error=unauthorized_client', async () => {
      assertRedirectError(srv, await get(base({ clientId: 'nocode-app' })), 'unauthorized_client', { state: 'st-err' });
    });

    it('a registered redirect URI with a query keeps it; code, state and iss are added', async () => {
      const flow = await authorize(srv, flowOpts({ clientId: 'query-app', redirectUri: QUERY_CB, state: 'st-q' }));
      assert.equal(flow.redirectBase, 'https://app.example/cb3');
      assert.equal(flow.params.tenant, 'a', `query of the registered URI kept: ${flow.location}`);
      assert.equal(flow.state, 'st-q');
      assert.equal(flow.iss, srv.base);
      const t = await exchangeCode(srv, { clientId: 'query-app', code: flow.code, redirectUri: QUERY_CB, verifier: flow.verifier });
      assertStatus(t, 200);
    });

    it('purpose_of_use: unknown code -> invalid_request; HL7 v3 codes end up in the access token', async () => {
      assertRedirectError(srv, await get(base({ extra: { purpose_of_use: 'TREAT SNOOPING' } })), 'invalid_request', { state: 'st-err' });
      const { json: t } = await codeFlowTokens(srv, flowOpts({ extra: { purpose_of_use: 'TREAT ETREAT' } }));
      assert.deepEqual(decodeJwt(t.access_token).payload.purpose_of_use, ['TREAT', 'ETREAT']);
    });

    for (const [what, uri] of [
      ['an unregistered URI', 'https://evil.example/cb'],
      ['a trailing slash', `${APP_CB}/`],
      ['an added query', `${APP_CB}?x=1`],
      ['another path', 'https://app.example/cb/../cb'],
      ['no redirect_uri', undefined],
    ]) {
      it(`redirect_uri differing by ${what} -> 400 page, never a redirect (audited)`, async () => {
        const before = auditRecords(srv, { action: 'authorize', error: 'redirect_uri_mismatch' }).length;
        assertErrorPage(await get(base({ redirectUri: uri })), 400, what);
        assert.equal(auditRecords(srv, { action: 'authorize', error: 'redirect_uri_mismatch' }).length, before + 1, 'audited');
      });
    }

    it('loopback redirect URI with another port is accepted (and the code goes there)', async () => {
      const other = 'http://127.0.0.1:49152/cb';
      const r = await get(base({ clientId: 'loop-app', redirectUri: other }));
      assertStatus(r, 200, 'login page for a loopback URI with another port');
      assert.equal(r.page.kind, 'login');
      const flow = await authorize(srv, flowOpts({ clientId: 'loop-app', redirectUri: other }));
      assert.equal(flow.redirectBase, other);
      const t = await exchangeCode(srv, { clientId: 'loop-app', code: flow.code, redirectUri: other, verifier: flow.verifier });
      assertStatus(t, 200, 'exchange with the same loopback URI');
    });

    for (const [what, uri] of [
      ['another path', 'http://127.0.0.1:49152/other'],
      ['another loopback host', 'http://localhost:8765/cb'],
      ['https instead of http', 'https://127.0.0.1:8765/cb'],
    ]) {
      it(`loopback redirect URI with ${what} -> 400 page`, async () => {
        assertErrorPage(await get(base({ clientId: 'loop-app', redirectUri: uri })), 400, what);
      });
    }

    it('loopback redirect URI with userinfo pointing elsewhere (http://127.0.0.1:1@evil.example/cb) -> 400 page', async () => {
      const r = await get(base({ clientId: 'loop-app', redirectUri: 'http://127.0.0.1:1@evil.example/cb' }));
      assertErrorPage(r, 400, 'userinfo redirect');
    });

    it('response_type=token -> redirect error=unsupported_response_type', async () => {
      assertRedirectError(srv, await get(base({ extra: { response_type: 'token' } })), 'unsupported_response_type', { state: 'st-err' });
      assertRedirectError(srv, await get(base({ extra: { response_type: null } })), 'unsupported_response_type', { state: 'st-err', what: 'no response_type' });
    });

    for (const [what, extra] of [
      ['no code_challenge', { code_challenge: null }],
      ['code_challenge_method=plain', { code_challenge_method: 'plain' }],
      ['no code_challenge_method', { code_challenge_method: null }],
      ['a short code_challenge', { code_challenge: 'abc' }],
      ['a code_challenge with a forbidden character', { code_challenge: `${'a'.repeat(42)}+` }],
      ['a 128-character code_challenge (not a SHA-256)', { code_challenge: 'a'.repeat(128) }],
      ['no aud', { aud: null }],
      ['a foreign aud', { aud: 'https://evil.example/fhir' }],
      ['aud of another port', { aud: 'https://127.0.0.1:1' }],
    ]) {
      it(`${what} -> redirect error=invalid_request with state and iss`, async () => {
        assertRedirectError(srv, await get(base({ extra })), 'invalid_request', { state: 'st-err', what });
      });
    }

    it('only system/ or unregistered scopes -> invalid_scope; unregistered ones are dropped otherwise', async () => {
      assertRedirectError(srv, await get(base({ scope: 'system/*.rs' })), 'invalid_scope', { state: 'st-err', what: 'system scope' });
      assertRedirectError(srv, await get(base({ scope: 'user/*.cruds' })), 'invalid_scope', { state: 'st-err', what: 'unregistered scope' });
      const flow = await authorize(srv, flowOpts({ scope: 'openid patient/*.rs user/*.cruds system/*.rs launch/patient', stopAt: 'consent' }));
      const listed = flow.page.scopes.map((s) => s.scope);
      assert.deepEqual(new Set(listed), scopeSet('openid patient/*.rs launch/patient'), `consent scopes: ${listed}`);
    });

    it('a repeated parameter -> 400 page, no redirect', async () => {
      const q = `${authorizeQuery(base())}&state=again`;
      assertErrorPage(await newBrowser(srv).get(q), 400, 'state twice');
      const q2 = `${authorizeQuery(base())}&scope=openid`;
      assertErrorPage(await newBrowser(srv).get(q2), 400, 'scope twice');
    });

    it('prompt=none without a session -> redirect error=login_required', async () => {
      assertRedirectError(srv, await get(base({ extra: { prompt: 'none' } })), 'login_required', { state: 'st-err' });
    });

    it('prompt=none with a live session never shows a page (OpenID Connect Core 3.1.2.1)', async () => {
      const b = newBrowser(srv);
      await authorize(srv, flowOpts({ browser: b }));
      const r = await b.get(authorizeQuery(base({ extra: { prompt: 'none' } })));
      assert.equal(r.status, 302, `prompt=none must not show UI: ${describeRes(r)}`);
      const loc = parseLocation(r);
      assert.equal(loc.params.state, 'st-err');
      assert.equal(loc.params.iss, srv.base);
      assert.equal(loc.params.error, 'consent_required', loc.url);
    });

    it('POST /authorize works like GET (authorize-post)', async () => {
      const flow = await authorize(srv, flowOpts({ method: 'POST', state: 'st-post' }));
      assert.deepEqual(flow.pages, ['login:200', 'consent:200']);
      assert.equal(flow.state, 'st-post');
      assert.equal(flow.iss, srv.base);
      const t = await exchangeCode(srv, { clientId: 'app', code: flow.code, redirectUri: APP_CB, verifier: flow.verifier });
      assertStatus(t, 200);
      const r = await newBrowser(srv).post('/authorize', base({ extra: { response_type: 'token' } }));
      assertRedirectError(srv, r, 'unsupported_response_type', { state: 'st-err', what: 'POST with an error' });
    });
  });

  // -------------------------------------------------------------------------
  describe('pages and CSRF', () => {
    function assertPageHeaders(res, what) {
      const d = `${what}: ${describeRes(res)}`;
      const csp = res.headers['content-security-policy'] || '';
      assert.match(csp, /frame-ancestors 'none'/, `CSP frame-ancestors; ${d}`);
      assert.match(csp, /default-src 'none'/, `CSP default-src; ${d}`);
      assert.ok(!csp.includes('unsafe-inline'), `CSP allows unsafe-inline; ${d}`);
      assert.ok(!csp.includes('unsafe-eval'), `CSP allows unsafe-eval; ${d}`);
      assert.equal(res.headers['x-frame-options'], 'DENY', `X-Frame-Options; ${d}`);
      assert.match(res.headers['cache-control'] || '', /no-store/, `Cache-Control; ${d}`);
      assert.match(res.headers['content-type'] || '', /^text\/html/, `Content-Type; ${d}`);
      assert.ok(!/<script/i.test(res.text), `a <script in the page; ${d}`);
      assert.ok(!/\son[a-z]+\s*=/i.test(res.text), `an inline event handler in the page; ${d}`);
      assert.ok(!/(src|href)="(https?:)?\/\//i.test(res.text), `an external asset; ${d}`);
    }

    it('login, TOTP, consent and error pages: CSP without unsafe-inline, frame-ancestors none, DENY, no script', async () => {
      const b = newBrowser(srv);
      const login = await authorize(srv, flowOpts({ browser: b, stopAt: 'login' }));
      assertPageHeaders(login.res, 'login page');
      const consent = await authorize(srv, flowOpts({ browser: b, stopAt: 'consent' }));
      assertPageHeaders(consent.res, 'consent page');
      const totpPage = await authorize(srv, flowOpts({ username: 'otp', stopAt: 'totp' }));
      assertPageHeaders(totpPage.res, 'TOTP page');
      const err = await newBrowser(srv).get(authorizeQuery({ client_id: 'nobody', response_type: 'code' }));
      assertPageHeaders(err, 'error page');
      const bad = await b.post('/authorize/login', { request: 'x', csrf: 'y', username: 'pat1', password: PW });
      assertPageHeaders(bad, 'refused form');
    });

    it('a login form without csrf, with a wrong csrf, without the browser cookie or from another browser -> 403, no session', async () => {
      const a = newBrowser(srv);
      const flow = await authorize(srv, flowOpts({ browser: a, username: 'csrfu', stopAt: 'login' }));
      const { request: reqId, csrf } = flow.page.hidden;
      assert.ok(reqId && csrf, `hidden inputs: ${JSON.stringify(flow.page.hidden)}`);
      const other = newBrowser(srv);
      await authorize(srv, flowOpts({ browser: other, username: 'csrfu', stopAt: 'login' }));
      const attempts = [
        ['no csrf', () => a.post('/authorize/login', { request: reqId, username: 'csrfu', password: PW })],
        ['wrong csrf', () => a.post('/authorize/login', { request: reqId, csrf: `${csrf.slice(0, -2)}AA`, username: 'csrfu', password: PW })],
        ['no cookie', () => a.post('/authorize/login', { request: reqId, csrf, username: 'csrfu', password: PW }, { cookies: false })],
        ['another browser', () => other.post('/authorize/login', { request: reqId, csrf, username: 'csrfu', password: PW })],
      ];
      for (const [what, send] of attempts) {
        const r = await send();
        assertErrorPage(r, 403, what);
        const sc = [].concat(r.headers['set-cookie'] || []);
        assert.ok(!sc.some((c) => c.startsWith('__Host-fw_session=')), `${what}: a session cookie was set: ${sc}`);
      }
      assert.equal(a.jar.get('__Host-fw_session'), undefined, 'no session in browser a');
      assert.equal(other.jar.get('__Host-fw_session'), undefined, 'no session in the other browser');
      assert.ok(!auditRecords(srv, { action: 'login', outcome: 'success', subject: 'csrfu' }).length, 'no login happened');
      // The genuine form still works.
      const ok = await a.post('/authorize/login', { request: reqId, csrf, username: 'csrfu', password: PW });
      assertStatus(ok, 200, 'the genuine form');
      assert.equal(ok.page.kind, 'consent');
    });

    it('a consent form from another browser -> 403 and no code', async () => {
      const a = newBrowser(srv);
      const flow = await authorize(srv, flowOpts({ browser: a, stopAt: 'consent' }));
      const thief = newBrowser(srv);
      await authorize(srv, flowOpts({ browser: thief, stopAt: 'consent' })); // has its own cookies and session
      const r = await thief.post('/authorize/consent', [...Object.entries(flow.page.hidden), ['scope', 'patient/*.rs'], ['decision', 'allow']]);
      assertErrorPage(r, 403, 'stolen consent form');
    });

    it('a pending request is single use: replaying the consent (or login) form after the decision -> 400', async () => {
      const b = newBrowser(srv);
      const flow = await authorize(srv, flowOpts({ browser: b, stopAt: 'consent' }));
      const form = [...Object.entries(flow.page.hidden), ['scope', 'patient/*.rs'], ['decision', 'allow']];
      const first = await b.post('/authorize/consent', form);
      assert.equal(first.status, 302, describeRes(first));
      const again = await b.post('/authorize/consent', form);
      assertErrorPage(again, 400, 'consent replay');
      const login = await b.post('/authorize/login', { ...flow.page.hidden, username: 'pat1', password: PW });
      assertErrorPage(login, 400, 'login with a completed request');
    });
  });

  // -------------------------------------------------------------------------
  describe('login', () => {
    it('wrong password and unknown user -> 401 login page with the same generic message (audited)', async () => {
      const b = newBrowser(srv);
      const start = await authorize(srv, flowOpts({ browser: b, username: 'wrongpw', stopAt: 'login' }));
      const wrong = await b.post('/authorize/login', { ...start.page.hidden, username: 'wrongpw', password: 'not-the-password' });
      assertStatus(wrong, 401, 'wrong password');
      assert.equal(wrong.page.kind, 'login', 'the login page again');
      assert.ok(wrong.page.error, `an error message: ${wrong.text.slice(0, 500)}`);
      const unknown = await b.post('/authorize/login', { ...wrong.page.hidden, username: 'nobody-here', password: 'not-the-password' });
      assertStatus(unknown, 401, 'unknown user');
      assert.equal(unknown.page.kind, 'login');
      assert.equal(unknown.page.error, wrong.page.error, 'one generic message for both');
      assert.ok(!/unknown|not exist|no such/i.test(unknown.page.error), `message reveals the user is unknown: ${unknown.page.error}`);
      assert.equal(b.jar.get('__Host-fw_session'), undefined, 'no session');
      assert.ok(auditRecords(srv, { action: 'login', outcome: 'denied', subject: 'wrongpw', error: 'bad_password' }).length === 1, 'bad password audited');
      const unknownRecords = auditRecords(srv, { action: 'login', outcome: 'denied', error: 'unknown_user' });
      assert.ok(unknownRecords.length >= 1, 'unknown user audited');
      // What was typed may be a password in the wrong field: only a keyed hash is kept.
      assert.ok(unknownRecords.every((r) => /^unknown:[0-9a-f]{16}$/.test(r.subject)), JSON.stringify(unknownRecords));
      assert.equal(auditRecords(srv, { subject: 'nobody-here' }).length, 0, 'the typed name is not in the audit trail');
      // The right password still works after one failure.
      const ok = await b.post('/authorize/login', { ...unknown.page.hidden, username: 'wrongpw', password: PW });
      assertStatus(ok, 200);
      assert.equal(ok.page.kind, 'consent');
    });

    it('max_login_failures failures lock the account: the right password -> the generic 401 (lock audited, no account oracle); users reset-password clears it', async () => {
      const b = newBrowser(srv);
      let page = (await authorize(srv, flowOpts({ browser: b, username: 'locky', stopAt: 'login' }))).page;
      for (let i = 1; i <= 3; i++) {
        const r = await b.post('/authorize/login', { ...page.hidden, username: 'locky', password: `wrong-${i}-password` });
        assertStatus(r, 401, `failure ${i}`);
        page = r.page;
      }
      const locked = await b.post('/authorize/login', { ...page.hidden, username: 'locky', password: PW });
      assertStatus(locked, 401, 'right password on a locked account');
      assert.equal(locked.page.kind, 'login');
      assert.match(locked.page.error || '', /not correct/i, 'the same generic message as a wrong password');
      assert.equal(b.jar.get('__Host-fw_session'), undefined, 'no session');
      assert.ok(auditRecords(srv, { action: 'login', outcome: 'denied', subject: 'locky', error: 'account_locked' }).length >= 1, 'lockout audited');
      assert.match(cli(['users', 'list', '--data-dir', srv.dataDir]), /^locky\t.*\tlocked$/m, 'users list shows the lock');

      const newPw = 'a-brand-new-password-1';
      const reset = runCli(['users', 'reset-password', '--data-dir', srv.dataDir, '--username', 'locky', '--password-stdin'], { input: `${newPw}\n` });
      assert.equal(reset.code, 0, reset.stderr);
      const ok = await b.post('/authorize/login', { ...locked.page.hidden, username: 'locky', password: newPw });
      assertStatus(ok, 200, 'login after reset-password');
      assert.equal(ok.page.kind, 'consent');
      assert.match(cli(['users', 'list', '--data-dir', srv.dataDir]), /^locky\t.*\tactive$/m);
    });

    it('once the lock has expired the right password works, and a failure starts a new count', async () => {
      const b = newBrowser(srv);
      let page = (await authorize(srv, flowOpts({ browser: b, username: 'locky2', stopAt: 'login' }))).page;
      for (let i = 1; i <= 3; i++) page = (await b.post('/authorize/login', { ...page.hidden, username: 'locky2', password: `wrong-${i}-password` })).page;
      const locked = await b.post('/authorize/login', { ...page.hidden, username: 'locky2', password: PW });
      assertStatus(locked, 401, 'locked');
      // Let the lock expire (lockout_seconds = 60 is too long to wait for).
      oauthSql(srv, `UPDATE users SET locked_until=${Math.floor(Date.now() / 1000) - 1} WHERE username='locky2';`);
      const wrong = await b.post('/authorize/login', { ...locked.page.hidden, username: 'locky2', password: 'still-wrong-password' });
      assertStatus(wrong, 401, 'a failure after the lock expired is an ordinary failure');
      const ok = await b.post('/authorize/login', { ...wrong.page.hidden, username: 'locky2', password: PW });
      assertStatus(ok, 200, 'the right password after the lock expired (the count restarted)');
      assert.equal(ok.page.kind, 'consent');
    });

    it('a disabled user cannot log in (generic 401, audited) and loses a live session', async () => {
      const b = newBrowser(srv);
      await authorize(srv, flowOpts({ browser: b, username: 'dis' }));
      assert.ok(b.jar.get('__Host-fw_session'), 'session after the first flow');
      cli(['users', 'disable', '--data-dir', srv.dataDir, '--username', 'dis']);
      const again = await authorize(srv, flowOpts({ browser: b, username: 'dis', stopAt: 'login' }));
      assert.equal(again.res.page.kind, 'login', `the login page, not consent: ${again.pages}`);
      const r = await b.post('/authorize/login', { ...again.page.hidden, username: 'dis', password: PW });
      assertStatus(r, 401, 'disabled user');
      assert.equal(r.page.kind, 'login');
      assert.equal(r.page.error, 'The username or password is not correct.', 'the generic message');
      assert.ok(auditRecords(srv, { action: 'login', outcome: 'denied', subject: 'dis', error: 'user_disabled' }).length === 1, 'audited');
    });
  });

  // -------------------------------------------------------------------------
  describe('TOTP', () => {
    it('wrong code -> 401; right code -> consent; the same code in a second flow -> refused (single use)', async () => {
      const secret = users.otp.totpSecret;
      const now = Math.floor(Date.now() / 1000);
      const valid = new Set([-1, 0, 1].map((o) => totp(secret, now, o)));
      let wrongCode = '000000';
      while (valid.has(wrongCode)) wrongCode = String(Number(wrongCode) + 111111).padStart(6, '0');

      const b = newBrowser(srv);
      const login = await authorize(srv, flowOpts({ browser: b, username: 'otp', stopAt: 'login' }));
      const pw = await b.post('/authorize/login', { ...login.page.hidden, username: 'otp', password: PW });
      assertStatus(pw, 200, 'password accepted');
      assert.equal(pw.page.kind, 'totp', 'TOTP page after the password');
      assert.equal(b.jar.get('__Host-fw_session'), undefined, 'no session before the second factor');
      const bad = await b.post('/authorize/totp', { ...pw.page.hidden, totp: wrongCode });
      assertStatus(bad, 401, 'wrong TOTP code');
      assert.equal(bad.page.kind, 'totp');
      assert.equal(b.jar.get('__Host-fw_session'), undefined, 'no session after a wrong code');
      assert.ok(auditRecords(srv, { action: 'login-totp', outcome: 'denied', subject: 'otp' }).length === 1, 'bad code audited');

      const code = totp(secret);
      const good = await b.post('/authorize/totp', { ...bad.page.hidden, totp: code });
      assertStatus(good, 200, 'right TOTP code');
      assert.equal(good.page.kind, 'consent');
      assert.ok(b.jar.get('__Host-fw_session'), 'session after the second factor');

      const b2 = newBrowser(srv);
      const login2 = await authorize(srv, flowOpts({ browser: b2, username: 'otp', stopAt: 'login' }));
      const pw2 = await b2.post('/authorize/login', { ...login2.page.hidden, username: 'otp', password: PW });
      assert.equal(pw2.page.kind, 'totp');
      const replay = await b2.post('/authorize/totp', { ...pw2.page.hidden, totp: code });
      assertStatus(replay, 401, 'the same TOTP code again');
      assert.equal(replay.page.kind, 'totp');
      assert.equal(b2.jar.get('__Host-fw_session'), undefined, 'no session from a replayed code');
    });

    it('wrong TOTP codes count toward the lockout: then the generic 401 for the right code and for the password', async () => {
      const secret = users.otplock.totpSecret;
      const now = Math.floor(Date.now() / 1000);
      const valid = new Set([-2, -1, 0, 1, 2].map((o) => totp(secret, now, o)));
      const wrong = ['111111', '222222', '333333', '444444', '555555', '666666'].filter((c) => !valid.has(c));
      const b = newBrowser(srv);
      const login = await authorize(srv, flowOpts({ browser: b, username: 'otplock', stopAt: 'login' }));
      let page = (await b.post('/authorize/login', { ...login.page.hidden, username: 'otplock', password: PW })).page;
      assert.equal(page.kind, 'totp');
      for (let i = 0; i < 3; i++) {
        const r = await b.post('/authorize/totp', { ...page.hidden, totp: wrong[i] });
        assertStatus(r, 401, `wrong code ${i + 1}`);
        page = r.page;
      }
      const right = await b.post('/authorize/totp', { ...page.hidden, totp: totp(secret) });
      assertStatus(right, 401, 'the right code on a locked account looks like a wrong one');
      assert.equal(right.page.kind, 'totp');
      assert.equal(b.jar.get('__Host-fw_session'), undefined, 'no session');
      assert.ok(auditRecords(srv, { action: 'login-totp', outcome: 'denied', subject: 'otplock', error: 'account_locked' }).length >= 1, 'audited');
      const b2 = newBrowser(srv);
      const login2 = await authorize(srv, flowOpts({ browser: b2, username: 'otplock', stopAt: 'login' }));
      const pw = await b2.post('/authorize/login', { ...login2.page.hidden, username: 'otplock', password: PW });
      assertStatus(pw, 401, 'the right password on an account locked by TOTP failures');
      assert.notEqual(pw.page.kind, 'totp');
    });

    it('the TOTP form before the password -> refused', async () => {
      const b = newBrowser(srv);
      const login = await authorize(srv, flowOpts({ browser: b, username: 'otp', stopAt: 'login' }));
      const r = await b.post('/authorize/totp', { ...login.page.hidden, totp: totp(users.otp.totpSecret) });
      assert.ok([400, 401, 403].includes(r.status), describeRes(r));
      assert.notEqual(r.page.kind, 'consent');
      assert.equal(b.jar.get('__Host-fw_session'), undefined);
    });
  });

  // -------------------------------------------------------------------------
  describe('sessions', () => {
    it('a second authorization in the same browser goes straight to consent; prompt=login forces a login', async () => {
      const b = newBrowser(srv);
      const first = await authorize(srv, flowOpts({ browser: b, username: 'sess' }));
      assert.deepEqual(first.pages, ['login:200', 'consent:200']);
      const second = await authorize(srv, flowOpts({ browser: b, username: 'sess' }));
      assert.deepEqual(second.pages, ['consent:200'], 'no login page with a live session');
      const t = await exchangeCode(srv, { clientId: 'app', code: second.code, redirectUri: APP_CB, verifier: second.verifier });
      assertStatus(t, 200);
      assert.equal(decodeJwt(t.json.access_token).payload.sub, 'sess');
      const forced = await authorize(srv, flowOpts({ browser: b, username: 'sess', extra: { prompt: 'login' } }));
      assert.deepEqual(forced.pages, ['login:200', 'consent:200'], 'prompt=login shows the login page');
      // Another browser has no session.
      const other = await authorize(srv, flowOpts({ username: 'sess', stopAt: 'login' }));
      assert.equal(other.res.page.kind, 'login');
      // A session cookie moved to another browser is refused (bound to the browser cookie).
      const thief = newBrowser(srv);
      thief.jar.set('__Host-fw_session', b.jar.get('__Host-fw_session'));
      const stolen = await authorize(srv, flowOpts({ browser: thief, username: 'sess', stopAt: 'login' }));
      assert.equal(stolen.res.page.kind, 'login', 'a session cookie without its browser cookie is not a session');
    });

    it('session_idle_seconds of inactivity logs the user off (login page again)', async () => {
      const b = newBrowser(srv);
      await authorize(srv, flowOpts({ browser: b, username: 'sess' }));
      const soon = await authorize(srv, flowOpts({ browser: b, username: 'sess' }));
      assert.deepEqual(soon.pages, ['consent:200']);
      await sleep(11500);
      const later = await authorize(srv, flowOpts({ browser: b, username: 'sess', stopAt: 'login' }));
      assert.equal(later.res.page.kind, 'login', `login page after ${11.5} s idle (session_idle_seconds = 10): ${later.pages}`);
      const none = await b.get(authorizeQuery(authorizeParams(srv, {
        clientId: 'app', redirectUri: APP_CB, scope: PATIENT_SCOPE, state: 'st-idle', challenge: pkce().challenge, extra: { prompt: 'none' },
      })));
      assertRedirectError(srv, none, 'login_required', { state: 'st-idle', what: 'prompt=none after the idle expiry' });
    });
  });

  // -------------------------------------------------------------------------
  describe('token endpoint: authorization codes', () => {
    it('code_verifier missing, wrong or malformed -> invalid_grant (audited)', async () => {
      for (const [what, verifier] of [['missing', undefined], ['wrong', pkce().verifier], ['too short', 'abc'],
        ['forbidden characters', `${'a'.repeat(42)}+/`]]) {
        const f = await freshCode();
        const r = await exchangeCode(srv, { clientId: 'app', code: f.code, redirectUri: APP_CB, verifier });
        assertOAuthError(r, 400, 'invalid_grant', `verifier ${what}`);
      }
      assert.ok(auditRecords(srv, { action: 'token-authorization_code', outcome: 'denied', error: 'invalid_grant', client_id: 'app' }).length >= 4,
        'refusals audited');
    });

    it('code replay -> invalid_grant, and the tokens of the first exchange are revoked', async () => {
      const f = await freshCode();
      const ex = { clientId: 'app', code: f.code, redirectUri: APP_CB, verifier: f.verifier };
      const first = await exchangeCode(srv, ex);
      assertStatus(first, 200, 'first exchange');
      assertStatus(await api(first.json.access_token), 200, 'the access token works before the replay');
      // A refresh in between: its tokens were issued from the code too.
      const refreshed = await refreshGrant(srv, { clientId: 'app', refreshToken: first.json.refresh_token });
      assertStatus(refreshed, 200, 'refresh before the replay');
      const second = await exchangeCode(srv, ex);
      assertOAuthError(second, 400, 'invalid_grant', 'replayed code');
      assertStatus(await api(first.json.access_token), 401, 'the first access token after the code replay');
      assertStatus(await api(refreshed.json.access_token), 401, 'the refreshed access token after the code replay');
      const rt = await refreshGrant(srv, { clientId: 'app', refreshToken: refreshed.json.refresh_token });
      assertOAuthError(rt, 400, 'invalid_grant', 'the current refresh token after the code replay');
      assert.ok(auditRecords(srv, { action: 'token-code-replay', outcome: 'denied', client_id: 'app' }).length >= 1, 'replay audited');
    });

    it('an expired code -> invalid_grant', async () => {
      const f = await freshCode();
      oauthSql(srv, 'UPDATE codes SET expires=0 WHERE used=0;');
      const r = await exchangeCode(srv, { clientId: 'app', code: f.code, redirectUri: APP_CB, verifier: f.verifier });
      assertOAuthError(r, 400, 'invalid_grant', 'expired code');
    });

    it('a code of another client -> invalid_grant', async () => {
      const f = await freshCode();
      const r = await exchangeCode(srv, { clientId: 'other-app', code: f.code, redirectUri: APP_CB, verifier: f.verifier });
      assertOAuthError(r, 400, 'invalid_grant', 'another client\'s code');
      const r2 = await exchangeCode(srv, { clientId: 'other-app', code: (await freshCode()).code, redirectUri: OTHER_CB, verifier: f.verifier });
      assertOAuthError(r2, 400, 'invalid_grant', 'another client\'s code with its own redirect URI');
    });

    it('redirect_uri at the token endpoint differing from the authorization request -> invalid_grant', async () => {
      for (const [what, uri] of [['another registered URI', APP_CB2], ['missing', undefined], ['a trailing slash', `${APP_CB}/`]]) {
        const f = await freshCode();
        const r = await exchangeCode(srv, { clientId: 'app', code: f.code, redirectUri: uri, verifier: f.verifier });
        assertOAuthError(r, 400, 'invalid_grant', `redirect_uri ${what}`);
      }
    });

    it('an unknown code -> invalid_grant; a code with an unknown client -> invalid_client', async () => {
      const r = await exchangeCode(srv, { clientId: 'app', code: 'A'.repeat(43), redirectUri: APP_CB, verifier: pkce().verifier });
      assertOAuthError(r, 400, 'invalid_grant', 'unknown code');
      const u = await exchangeCode(srv, { clientId: 'no-such-client', code: 'A'.repeat(43), redirectUri: APP_CB, verifier: pkce().verifier });
      assertOAuthError(u, 401, 'invalid_client', 'unknown client');
      assert.ok(u.headers['www-authenticate'], 'WWW-Authenticate on 401');
    });

    it('unsupported grant_type; GET; JSON body; repeated or URL parameters -> the right errors', async () => {
      assertOAuthError(await tokenRequest(srv, { grant_type: 'password', client_id: 'app', username: 'pat1', password: PW }), 400, 'unsupported_grant_type', 'password grant');
      const g = await request(srv, 'GET', `/token?${formBody({ grant_type: 'authorization_code', client_id: 'app', code: 'x' })}`, { accept: 'application/json' });
      assert.ok([400, 405].includes(g.status), `GET /token: ${describeRes(g)}`);
      assert.equal(g.json && g.json.access_token, undefined);
      const f = await freshCode();
      const body = { grant_type: 'authorization_code', client_id: 'app', code: f.code, redirect_uri: APP_CB, code_verifier: f.verifier };
      assertOAuthError(await tokenRequest(srv, JSON.stringify(body), { contentType: 'application/json' }), 400, 'invalid_request', 'JSON body');
      assertOAuthError(await tokenRequest(srv, `${formBody(body)}&client_id=app`), 400, 'invalid_request', 'client_id twice');
      assertOAuthError(await tokenRequest(srv, formBody(body), { path: `/token?client_id=app` }), 400, 'invalid_request', 'parameters in the URL');
      // None of those consumed the code.
      const ok = await tokenRequest(srv, body);
      assertStatus(ok, 200, 'the code still works after refused malformed requests');
    });
  });

  // -------------------------------------------------------------------------
  describe('token endpoint: refresh tokens', () => {
    const tokens = async (o = {}) => (await codeFlowTokens(srv, flowOpts({ browser: tokenBrowser || (tokenBrowser = newBrowser(srv)), ...o }))).json;

    it('rotation; reuse of a rotated token revokes the whole grant (audited)', async () => {
      const t1 = await tokens();
      assert.ok(t1.refresh_token);
      const r2 = await refreshGrant(srv, { clientId: 'app', refreshToken: t1.refresh_token });
      assertStatus(r2, 200, 'first refresh');
      assert.match(r2.headers['cache-control'] || '', /no-store/);
      assert.ok(r2.json.refresh_token && r2.json.refresh_token !== t1.refresh_token, 'a new refresh token');
      assert.deepEqual(scopeSet(r2.json.scope), scopeSet(PATIENT_SCOPE), 'the grant\'s scope without `scope`');
      assert.equal(r2.json.patient, 'p1');
      const r3 = await refreshGrant(srv, { clientId: 'app', refreshToken: r2.json.refresh_token });
      assertStatus(r3, 200, 'second refresh');
      assert.ok(r3.json.refresh_token && r3.json.refresh_token !== r2.json.refresh_token);
      for (const [what, t] of [['first', t1], ['second', r2.json], ['third', r3.json]]) {
        assertStatus(await api(t.access_token), 200, `${what} access token before the reuse`);
      }
      const reuse = await refreshGrant(srv, { clientId: 'app', refreshToken: t1.refresh_token });
      assertOAuthError(reuse, 400, 'invalid_grant', 'reuse of the first refresh token');
      const latest = await refreshGrant(srv, { clientId: 'app', refreshToken: r3.json.refresh_token });
      assertOAuthError(latest, 400, 'invalid_grant', 'the newest refresh token after the reuse');
      for (const [what, t] of [['first', t1], ['second', r2.json], ['third', r3.json]]) {
        assertStatus(await api(t.access_token), 401, `${what} access token after the reuse`);
      }
      assert.ok(auditRecords(srv, { action: 'token-refresh-reuse', outcome: 'denied', client_id: 'app' }).length >= 1, 'reuse audited');
      assert.ok(auditRecords(srv, { action: 'token-refresh', outcome: 'success', client_id: 'app' }).length >= 2, 'refreshes audited');
    });

    it('a subset narrows; anything else -> invalid_scope', async () => {
      const t = await tokens();
      const narrow = await refreshGrant(srv, { clientId: 'app', refreshToken: t.refresh_token, scope: 'patient/*.rs offline_access' });
      assertStatus(narrow, 200, 'narrowed refresh');
      assert.deepEqual(scopeSet(narrow.json.scope), scopeSet('patient/*.rs offline_access'));
      assert.deepEqual(scopeSet(decodeJwt(narrow.json.access_token).payload.scope), scopeSet('patient/*.rs offline_access'), 'access token scope');
      assertStatus(await api(narrow.json.access_token), 200);
      const up = await refreshGrant(srv, { clientId: 'app', refreshToken: narrow.json.refresh_token, scope: 'patient/*.rs user/*.rs' });
      assertOAuthError(up, 400, 'invalid_scope', 'escalation');
      const wider = await refreshGrant(srv, { clientId: 'app', refreshToken: narrow.json.refresh_token, scope: 'patient/*.cruds' });
      assertOAuthError(wider, 400, 'invalid_scope', 'wider permissions on a granted type');
    });

    it('a refresh token presented by another client -> invalid_grant, and it keeps working for its client', async () => {
      const t = await tokens();
      const r = await refreshGrant(srv, { clientId: 'other-app', refreshToken: t.refresh_token });
      assertOAuthError(r, 400, 'invalid_grant', 'foreign refresh token');
      assertStatus(await api(t.access_token), 200, 'the access token is untouched');
      const own = await refreshGrant(srv, { clientId: 'app', refreshToken: t.refresh_token });
      assertStatus(own, 200, 'its own client can still refresh');
    });

    it('an idle-expired refresh token or a grant past its absolute lifetime -> invalid_grant', async () => {
      const t = await tokens();
      oauthSql(srv, `UPDATE refresh_tokens SET idle_expires=${Math.floor(Date.now() / 1000) - 1} WHERE used=0 AND grant_id=(SELECT id FROM grants WHERE client_id='app' ORDER BY created DESC, rowid DESC LIMIT 1);`);
      assertOAuthError(await refreshGrant(srv, { clientId: 'app', refreshToken: t.refresh_token }), 400, 'invalid_grant', 'idle-expired refresh token');
      const t2 = await tokens();
      oauthSql(srv, `UPDATE grants SET absolute_expires=${Math.floor(Date.now() / 1000) - 1} WHERE rowid=(SELECT MAX(rowid) FROM grants WHERE client_id='app');`);
      assertOAuthError(await refreshGrant(srv, { clientId: 'app', refreshToken: t2.refresh_token }), 400, 'invalid_grant', 'grant past its absolute lifetime');
    });

    it('--no-rotate-refresh: no new refresh token, the same one may be used again', async () => {
      const t = await tokens({ clientId: 'norotate' });
      assert.ok(t.refresh_token);
      for (let i = 1; i <= 3; i++) {
        const r = await refreshGrant(srv, { clientId: 'norotate', refreshToken: t.refresh_token });
        assertStatus(r, 200, `refresh ${i} with the same token`);
        assert.equal(r.json.refresh_token, undefined, 'no new refresh token');
        assertStatus(await api(r.json.access_token), 200);
      }
    });

    it('revoking a refresh token (by its client) revokes its grant: refresh invalid_grant, access token 401 at once', async () => {
      const t = await tokens();
      // Another client cannot revoke it (200, no effect).
      const foreign = await revokeToken(srv, { clientId: 'other-app', token: t.refresh_token });
      assertStatus(foreign, 200, 'foreign revocation answers 200');
      assertStatus(await api(t.access_token), 200, 'still valid after a foreign revocation attempt');
      const rev = await revokeToken(srv, { clientId: 'app', token: t.refresh_token, tokenTypeHint: 'refresh_token' });
      assertStatus(rev, 200, 'revocation');
      assertStatus(await api(t.access_token), 401, 'the grant\'s access token right after the revocation');
      const r = await refreshGrant(srv, { clientId: 'app', refreshToken: t.refresh_token });
      assertOAuthError(r, 400, 'invalid_grant', 'refresh after revocation');
      assert.ok(auditRecords(srv, { action: 'token-revoke', outcome: 'success', client_id: 'app' }).length >= 1, 'revocation audited');
    });
  });
});

describe('oauth: passwords are re-hashed with stronger parameters on login', { timeout: 60000 }, () => {
  let srv;
  before(async () => {
    srv = await startServer({ name: 'oauth-rehash', config: oauthConfig({ argon2_memory_kib: 32768, argon2_iterations: 3 }) });
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('a hash weaker than [oauth] argon2_* is replaced after a successful login, and the password still works', async () => {
    addUser(srv, { username: 'rh', fhirUser: 'Patient/p1', password: PW });
    addClient(srv, { clientId: 'app', scope: APP_SCOPE, redirectUris: [APP_CB] });
    const hash = () => oauthSql(srv, "SELECT password_hash FROM users WHERE username='rh';").trim();
    const params = (h) => { const m = /\$m=(\d+),t=(\d+)/.exec(h); assert.ok(m, `PHC string: ${h.slice(0, 40)}`); return { m: Number(m[1]), t: Number(m[2]) }; };
    const before0 = params(hash());
    assert.ok(before0.m < 32768 || before0.t < 3, `the CLI hash is already as strong as the config: ${JSON.stringify(before0)}`);
    const b = newBrowser(srv);
    const login = await authorize(srv, { browser: b, clientId: 'app', redirectUri: APP_CB, scope: PATIENT_SCOPE, stopAt: 'login' });
    const wrong = await b.post('/authorize/login', { ...login.page.hidden, username: 'rh', password: 'wrong-password-here' });
    assertStatus(wrong, 401);
    assert.deepEqual(params(hash()), before0, 'a failed login does not re-hash');
    const ok = await b.post('/authorize/login', { ...wrong.page.hidden, username: 'rh', password: PW });
    assertStatus(ok, 200);
    assert.equal(ok.page.kind, 'consent');
    const after0 = params(hash());
    assert.ok(after0.m >= 32768 && after0.t >= 3, `re-hashed with the configured parameters: ${JSON.stringify(after0)}`);
    const again = await authorize(srv, { clientId: 'app', redirectUri: APP_CB, scope: PATIENT_SCOPE, username: 'rh', password: PW });
    assert.ok(again.code, 'the password works with the new hash');
  });
});
