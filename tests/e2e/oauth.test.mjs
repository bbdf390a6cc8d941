// End to end with independent OAuth clients against fhirward's built-in
// authorization server (docs/oauth.md):
//   oauth4webapi  discovery, authorization code + PKCE (public SMART app),
//                 refresh rotation, revocation, introspection, client_credentials
//                 with private_key_jwt, DPoP;
//   jose          verifies our access and ID tokens against /jwks;
//   playwright-core + Debian's Chromium: a real browser at the login and consent pages.
// Users and clients are created with the CLI; the clients run in child processes
// (oauth-flow.mjs, oauth-browser-flow.mjs) so NODE_EXTRA_CA_CERTS applies to fetch.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as jose from 'jose';
import { startServer, stopAndClean, diagnose, mintToken, request, runCli } from '../integration/lib.mjs';
import { runFlow, okStep, failedStep, summarize } from './oauth-harness.mjs';

const flow = fileURLToPath(new URL('./oauth-flow.mjs', import.meta.url));
const browserFlow = fileURLToPath(new URL('./oauth-browser-flow.mjs', import.meta.url));
// Debian's chromium package (scripts/bootstrap); FHIRWARD_CHROMIUM only to try another build.
const CHROMIUM = process.env.FHIRWARD_CHROMIUM || '/usr/bin/chromium';
const CONFIG = '[oauth]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n';
const APP_SCOPES = 'openid fhirUser launch/patient offline_access patient/*.rs';
const APP_REDIRECT = 'https://app.example.org/callback';

function cli(args, input) {
  const r = runCli(args, { input });
  assert.equal(r.code, 0, `fhirward ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

describe('OAuth 2 / SMART with oauth4webapi, jose and Chromium', { timeout: 90000 }, () => {
  let srv;
  let out;
  let patientId;
  const user = { username: 'e2e-patient', password: 'e2e correct horse battery' };
  const ids = { app: 'e2e-smart-app', introspector: 'e2e-introspector', backend: 'e2e-backend' };

  before(async () => {
    srv = await startServer({ name: 'oauth-e2e', config: CONFIG });
    const d = ['--data-dir', srv.dataDir];
    // The patient the user is.
    const admin = mintToken(srv, { sub: 'e2e-admin', scope: 'user/*.cruds' });
    const created = await request(srv, 'POST', '/Patient', {
      token: admin, body: { resourceType: 'Patient', active: true, name: [{ family: 'Oauth', given: ['E2e'] }] },
    });
    assert.equal(created.status, 201, created.text);
    patientId = created.json.id;
    // Another patient, visible only to the backend service.
    await request(srv, 'POST', '/Patient', { token: admin, body: { resourceType: 'Patient', active: true } });

    cli(['users', 'add', ...d, '--username', user.username, '--fhir-user', `Patient/${patientId}`, '--password-stdin'], `${user.password}\n`);
    cli(['clients', 'add', ...d, '--client-id', ids.app, '--name', 'E2E SMART app', '--auth', 'none',
      '--redirect-uri', APP_REDIRECT, '--redirect-uri', 'http://127.0.0.1/cb',
      '--scope', APP_SCOPES, '--grant-type', 'authorization_code', '--grant-type', 'refresh_token']);
    // A resource server: the `introspect` scope lets it introspect other clients' access tokens.
    const intro = cli(['clients', 'add', ...d, '--client-id', ids.introspector, '--auth', 'client_secret_basic',
      '--scope', 'introspect system/Patient.rs', '--grant-type', 'client_credentials']);
    const secret = (/client_secret:\s*(\S+)/.exec(intro) || [])[1];
    assert.ok(secret, `clients add printed no client_secret: ${intro}`);
    srv.secrets.push(secret);

    const { publicKey, privateKey } = await jose.generateKeyPair('ES384', { extractable: true });
    const kid = 'e2e-backend-es384';
    const jwksFile = `${srv.root}/backend-jwks.json`;
    fs.writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await jose.exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] }));
    cli(['clients', 'add', ...d, '--client-id', ids.backend, '--auth', 'private_key_jwt', '--jwks-file', jwksFile,
      '--scope', 'system/Patient.rs', '--grant-type', 'client_credentials']);

    out = await runFlow(flow, srv, {
      patientId,
      user,
      app: { clientId: ids.app, redirectUri: APP_REDIRECT },
      introspector: { clientId: ids.introspector, secret },
      backend: { clientId: ids.backend, kid, privateJwk: await jose.exportJWK(privateKey) },
    });
  });
  after(async () => { await stopAndClean(srv); });
  afterEach((t) => {
    if (t.passed === false && out) console.log(`# oauth flow steps:\n${summarize(out)}`);
    diagnose(() => [srv])(t);
  });

  const ok = (name) => okStep(out, name);

  it('discovery: issuer is the FHIR base, RFC 9207 iss, S256 PKCE; SMART configuration', () => {
    const as = ok('discovery');
    assert.equal(as.issuer, srv.base);
    assert.equal(as.authorization_response_iss_parameter_supported, true);
    assert.deepEqual(as.code_challenge_methods_supported, ['S256']);
    assert.equal(as.jwks_uri, `${srv.base}/jwks`);
    const smart = ok('smartConfiguration');
    assert.equal(smart.status, 200);
    assert.equal(smart.json.authorization_endpoint, as.authorization_endpoint);
    assert.equal(smart.json.token_endpoint, as.token_endpoint);
    assert.ok(Array.isArray(smart.json.capabilities) && smart.json.capabilities.length > 0, JSON.stringify(smart.json));
  });

  it('authorization code + PKCE: login and consent pages, callback with code, state and iss', () => {
    const a = ok('authorize');
    assert.deepEqual(a.pages.map((p) => [p.status, p.title]), [[200, 'Sign in'], [200, 'Allow access']]);
    for (const p of a.pages) assert.match(p.csp, /default-src 'none'.*form-action 'self'/);
    assert.deepEqual(a.cookies.sort(), ['__Host-fw_browser', '__Host-fw_session']);
    const cb = new URL(a.callback);
    assert.equal(`${cb.origin}${cb.pathname}`, APP_REDIRECT);
    assert.equal(a.params.iss, srv.base);
    assert.equal(a.params.state, a.state);
    assert.match(a.params.code, /^[A-Za-z0-9_-]{43,}$/);
  });

  it('token response: Bearer access token, refresh token, validated ID token with nonce, patient context', () => {
    const t = ok('codeGrant');
    assert.equal(t.token_type, 'bearer');
    assert.equal(t.patient, patientId);
    assert.ok(t.refresh_token);
    assert.ok(t.expires_in > 0 && t.expires_in <= 3600, String(t.expires_in));
    assert.deepEqual(t.scope.split(' ').sort(), APP_SCOPES.split(' ').sort());
    const id = t.idTokenClaims;
    assert.equal(id.iss, srv.base);
    assert.equal(id.aud, ids.app);
    assert.equal(id.sub, user.username);
    assert.equal(id.nonce, out.results.authorize.value.nonce);
    assert.equal(id.fhirUser, `${srv.base}/Patient/${patientId}`);
  });

  it('a second use of the code is invalid_grant and revokes its tokens; a live session goes straight to consent', () => {
    const e = failedStep(out, 'codeReplay');
    assert.equal(e.error, 'invalid_grant', JSON.stringify(e));
    assert.equal(ok('readAfterCodeReplay').status, 401);
    const again = ok('authorizeAgain');
    assert.deepEqual(again.pages.map((p) => p.title), ['Allow access']);
    assert.equal(again.token_type, 'bearer');
    assert.ok(again.hasRefresh);
  });

  it('FHIR read with the access token', () => {
    const r = ok('fhirRead');
    assert.equal(r.status, 200, JSON.stringify(r));
    assert.equal(r.resourceType, 'Patient');
    assert.equal(r.id, patientId);
  });

  it('jose verifies the access token (ES256, at+jwt, iss = aud = base) against /jwks', () => {
    const { payload, protectedHeader } = ok('joseAccessToken');
    assert.equal(protectedHeader.alg, 'ES256');
    assert.equal(protectedHeader.typ, 'at+jwt');
    assert.ok(protectedHeader.kid);
    assert.equal(payload.iss, srv.base);
    assert.equal(payload.aud, srv.base);
    assert.equal(payload.sub, user.username);
    assert.equal(payload.client_id, ids.app);
    assert.equal(payload.patient, patientId);
    assert.ok(payload.jti && payload.exp > payload.iat);
    assert.ok(payload.scope.split(' ').includes('patient/*.rs'), payload.scope);
  });

  it('jose verifies the ID token (RS256, aud = client id) and refuses it as an access token', () => {
    const { payload, protectedHeader } = ok('joseIdToken');
    assert.equal(protectedHeader.alg, 'RS256');
    assert.equal(payload.aud, ids.app);
    assert.equal(payload.iss, srv.base);
    assert.ok(payload.auth_time);
    const e = failedStep(out, 'joseRejectsIdTokenAsAccessToken');
    assert.match(e.code, /^ERR_J(WT|OSE)_/, JSON.stringify(e));
  });

  it('refresh rotates the refresh token; the new access token reads', () => {
    const r = ok('refresh');
    assert.ok(r.previousRefreshToken);
    assert.ok(r.refresh_token);
    assert.notEqual(r.refresh_token, r.previousRefreshToken);
    assert.equal(r.token_type, 'bearer');
    assert.equal(ok('fhirReadAfterRefresh').status, 200);
  });

  it('introspection by a resource server (client_secret_basic, introspect scope): active, then inactive after revocation; public clients refused', () => {
    const i = ok('introspectActive');
    assert.equal(i.active, true, JSON.stringify(i));
    assert.equal(i.client_id, ids.app);
    assert.equal(i.sub, user.username);
    assert.equal(i.iss, srv.base);
    assert.equal(i.patient, patientId);
    assert.ok(i.scope.split(' ').includes('patient/*.rs'));
    // A resource server sees access tokens only: another client's refresh token is inactive to it.
    assert.deepEqual(ok('introspectRefreshActive'), { active: false });
    // 401 with a WWW-Authenticate challenge, which oauth4webapi reports as such.
    const pub = failedStep(out, 'introspectByPublicClient');
    assert.equal(pub.status, 401, JSON.stringify(pub));
    assert.equal(pub.code, 'OAUTH_WWW_AUTHENTICATE_CHALLENGE', JSON.stringify(pub));
    assert.equal(pub.cause[0].parameters.error, 'invalid_client', JSON.stringify(pub));
    const rev = ok('revoke');
    assert.equal(rev.status, 200);
    assert.deepEqual(ok('introspectAfterRevoke'), { active: false });
    const read = ok('fhirReadAfterRevoke');
    assert.equal(read.status, 401);
    assert.match(read.wwwAuthenticate || '', /invalid_token/);
  });

  it('reuse of a rotated-out refresh token is invalid_grant and revokes the grant', () => {
    const e = failedStep(out, 'refreshReuse');
    assert.equal(e.error, 'invalid_grant', JSON.stringify(e));
    const e2 = failedStep(out, 'refreshAfterReuse');
    assert.equal(e2.error, 'invalid_grant', JSON.stringify(e2));
    assert.deepEqual(ok('introspectRefreshAfterReuse'), { active: false });
  });

  it('client_credentials with private_key_jwt (ES384): system token reads /Patient, nothing else', () => {
    const v = ok('clientCredentials');
    assert.equal(v.token.token_type, 'bearer');
    assert.equal(v.token.refresh_token, undefined);
    assert.ok(v.token.expires_in > 0 && v.token.expires_in <= 300, String(v.token.expires_in));
    assert.equal(v.token.scope, 'system/Patient.rs');
    assert.equal(v.claims.sub, ids.backend);
    assert.equal(v.claims.client_id, ids.backend);
    assert.equal(v.search.status, 200);
    assert.equal(v.search.resourceType, 'Bundle');
    assert.equal(v.search.type, 'searchset');
    assert.ok(v.search.ids.includes(patientId), JSON.stringify(v.search));
    assert.ok(v.search.ids.length >= 2, `a system token sees every patient: ${JSON.stringify(v.search)}`);
    assert.equal(v.outOfScope, 403);
  });

  it('DPoP: nonce retry, token_type DPoP bound to the key, FHIR read with proofs; Bearer use refused', () => {
    const v = ok('dpop');
    assert.equal(v.nonceRetry, true, 'the token endpoint should ask for a DPoP nonce first');
    assert.equal(v.token_type, 'dpop');
    assert.deepEqual(v.cnf, { jkt: v.thumbprint });
    assert.equal(v.read.status, 200, JSON.stringify(v.read));
    assert.equal(v.read.id, patientId);
    assert.equal(v.asBearer.status, 401);
    assert.equal(v.refreshed.token_type, 'dpop');
    assert.deepEqual(v.refreshed.cnf, { jkt: v.thumbprint });
  });

  describe('in a real browser (playwright-core + Chromium)', () => {
    let b;
    const haveChromium = fs.existsSync(CHROMIUM);
    before(async () => {
      if (!haveChromium) return;
      b = await runFlow(browserFlow, srv, { clientId: ids.app, user, chromium: CHROMIUM });
    });
    afterEach((t) => {
      if (t.passed === false && b) console.log(`# browser flow steps:\n${summarize(b)}`);
    });

    const needChromium = (t) => {
      if (haveChromium) return false;
      t.skip(`${CHROMIUM} is missing (scripts/bootstrap installs the Debian package chromium)`);
      return true;
    };

    it('login and consent pages: screenshot, no console errors, CSP enforced', (t) => {
      if (needChromium(t)) return;
      okStep(b, 'launch');
      const login = okStep(b, 'loginPage');
      assert.equal(login.status, 200);
      assert.equal(login.title, 'Sign in');
      const consent = okStep(b, 'consentPage');
      assert.equal(consent.status, 200);
      assert.equal(consent.heading, 'Allow access');
      assert.ok(consent.scopes.some((s) => s.value === 'patient/*.rs' && s.checked && !s.disabled), JSON.stringify(consent.scopes));
      assert.ok(consent.scopes.some((s) => s.value === 'openid' && s.checked && s.disabled), JSON.stringify(consent.scopes));
      const shot = okStep(b, 'screenshot');
      assert.ok(shot.size > 1000, `screenshot ${shot.path} is ${shot.size} bytes`);
      assert.equal(shot.signature, '89504e470d0a1a0a', `${shot.path} is not a PNG`);
      assert.deepEqual(okStep(b, 'consoleBeforeProbe'), [], 'console errors on the login or consent page');
      assert.deepEqual(b.pageErrors, []);
      // An image injected into the consent page is blocked (default-src 'none') and reported.
      const csp = okStep(b, 'cspProbe');
      assert.ok(csp, 'no securitypolicyviolation event for an image under default-src \'none\'');
      assert.equal(csp.effectiveDirective, 'img-src');
      assert.equal(csp.disposition, 'enforce');
    });

    // Chromium enforces form-action on the redirects that follow a form submission
    // (CSP3): the consent page's policy must allow the redirect_uri's origin, or the
    // consent POST's 302 to the client is blocked and the user never gets back.
    it('Allow -> the loopback redirect URI gets code, state and iss; the app redeems the code', (t) => {
      if (needChromium(t)) return;
      const allow = okStep(b, 'allow');
      assert.ok(allow.callback, `the browser never reached ${b.redirectUri}; page ${allow.pageUrl}; console ${JSON.stringify(allow.consoleAfterAllow)}`);
      assert.equal(allow.callback.state, allow.expectedState);
      assert.equal(allow.callback.iss, srv.base);
      assert.match(allow.callback.code, /^[A-Za-z0-9_-]{43,}$/);
      assert.ok(allow.pageUrl.startsWith(`${b.redirectUri}?`), allow.pageUrl);
      assert.deepEqual(allow.consoleAfterAllow.filter((m) => m.type === 'error'), []);
      const x = okStep(b, 'exchange');
      assert.equal(x.token_type, 'bearer');
      assert.ok(x.hasIdToken);
      assert.equal(x.patient, patientId);
    });
  });
});
