// Regression tests for the findings of the security review of the
// authorization server (docs/oauth.md): launch contexts, the consent page's
// patient choice, account changes, code and refresh races, introspection
// scope, memory caps, audit of typed usernames, redirect URI registration.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, stopAndClean, diagnose, request, mintToken, runCli, assertStatus, describeRes, sqlite } from './lib.mjs';
import {
  oauthConfig, newBrowser, authorize, exchangeCode, refreshGrant, tokenRequest, addUser, addClient,
  createLaunch, cli, auditRecords, parseLocation, authorizeQuery, authorizeParams, formBody,
} from './oauth-lib.mjs';

const CB = 'https://app.example/cb';
const PW = 'correct-horse-battery-staple';
const SCOPE = 'openid fhirUser launch launch/patient offline_access patient/*.rs';

describe('authorization server: review regressions', () => {
  let srv;
  let secret;
  const servers = [];
  afterEach(diagnose(servers));

  before(async () => {
    srv = await startServer({ config: oauthConfig(), name: 'oauth-review' });
    servers.push(srv);
    addUser(srv, { username: 'pat1', fhirUser: 'Patient/p1', password: PW });
    addUser(srv, { username: 'doc', fhirUser: 'Practitioner/d1', password: PW });
    addUser(srv, { username: 'rel', fhirUser: 'RelatedPerson/r1', password: PW });
    addUser(srv, { username: 'gone', fhirUser: 'Patient/p3', password: PW });
    addUser(srv, { username: 'reset', fhirUser: 'Patient/p4', password: PW });
    addClient(srv, { clientId: 'pub', scope: SCOPE, redirectUris: [CB] });
    addClient(srv, { clientId: 'pub2', scope: SCOPE, redirectUris: [CB] });
    secret = addClient(srv, {
      clientId: 'svc', scope: 'system/*.rs', auth: 'client_secret_basic', grantTypes: ['client_credentials'],
    }).clientSecret;
    const token = mintToken(srv, { scope: 'user/*.cruds' });
    for (const id of ['p1', 'p2', 'p3', 'p4']) {
      const r = await request(srv, 'PUT', `/Patient/${id}`, {
        token, body: JSON.stringify({ resourceType: 'Patient', id }), contentType: 'application/fhir+json',
      });
      assert.ok([200, 201].includes(r.status), describeRes(r));
    }
  });
  after(async () => { await stopAndClean(srv); });

  const flow = (o) => authorize(srv, { clientId: 'pub', redirectUri: CB, scope: SCOPE, password: PW, ...o });

  it('an EHR launch is single use', async () => {
    const launch = createLaunch(srv, { patient: 'p2' });
    const first = await flow({ username: 'doc', launch, scope: 'openid launch patient/*.rs' });
    const t = await exchangeCode(srv, { clientId: 'pub', code: first.code, redirectUri: CB, verifier: first.verifier });
    assertStatus(t, 200);
    assert.equal(t.json.patient, 'p2');
    const again = await flow({ username: 'doc', launch, scope: 'openid launch patient/*.rs', allowError: true });
    assert.equal(again.params.error, 'invalid_request', again.location);
  });

  it('a launch bound to one app is refused for another', async () => {
    const id = cli(['launch', 'create', '--data-dir', srv.dataDir, '--patient', 'p2', '--client-id', 'pub'])
      .trim().split('\n').pop();
    const other = await authorize(srv, {
      clientId: 'pub2', redirectUri: CB, scope: 'openid launch patient/*.rs', launch: id, username: 'doc',
      password: PW, allowError: true,
    });
    assert.equal(other.params.error, 'invalid_request', other.location);
    const own = await flow({ username: 'doc', launch: id, scope: 'openid launch patient/*.rs' });
    assert.ok(own.code);
  });

  it('a patient user or a RelatedPerson cannot take a launch context; the launch is not used up by trying', async () => {
    const launch = createLaunch(srv, { patient: 'p2' });
    const r = await flow({ username: 'pat1', launch, scope: 'openid launch patient/*.rs', allowError: true });
    assert.equal(r.params.error, 'invalid_request', r.location);
    const rel = await flow({ username: 'rel', launch, scope: 'openid launch patient/*.rs', allowError: true });
    assert.equal(rel.params.error, 'invalid_request', rel.location);
    assert.ok(auditRecords(srv, { action: 'consent', error: 'launch_patient_mismatch' }).length >= 2);
    const doc = await flow({ username: 'doc', launch, scope: 'openid launch patient/*.rs' });
    const t = await exchangeCode(srv, { clientId: 'pub', code: doc.code, redirectUri: CB, verifier: doc.verifier });
    assert.equal(t.json.patient, 'p2', 'the practitioner still gets the launch');
  });

  it('a code issued before the user was disabled cannot be exchanged', async () => {
    addUser(srv, { username: 'late', fhirUser: 'Patient/p1', password: PW });
    const f = await flow({ username: 'late', scope: 'openid patient/*.rs' });
    cli(['users', 'disable', '--data-dir', srv.dataDir, '--username', 'late']);
    const t = await exchangeCode(srv, { clientId: 'pub', code: f.code, redirectUri: CB, verifier: f.verifier });
    assert.equal(t.json.error, 'invalid_grant', describeRes(t));
  });

  it('introspect is registrable only for confidential clients without authorization_code', () => {
    for (const extra of [['--auth', 'none', '--redirect-uri', CB], ['--auth', 'client_secret_basic', '--redirect-uri', CB]]) {
      const r = runCli(['clients', 'add', '--data-dir', srv.dataDir, '--client-id', `i-${Math.random().toString(36).slice(2, 8)}`,
        '--scope', 'openid introspect', ...extra]);
      assert.notEqual(r.code, 0, `${extra.join(' ')} must be refused`);
    }
  });

  it('only practitioners choose a patient on the consent page; a RelatedPerson gets invalid_request', async () => {
    const rel = await flow({ username: 'rel', scope: 'openid launch/patient patient/*.rs', stopAt: 'consent' });
    assert.ok(!/name="patient"/.test(rel.res.text), 'no patient field for a RelatedPerson');
    const b = newBrowser(srv);
    const doc = await flow({ browser: b, username: 'doc', scope: 'openid launch/patient patient/*.rs', stopAt: 'consent' });
    assert.match(doc.res.text, /name="patient"/, 'a practitioner gets the patient field');
    // A RelatedPerson posting a patient anyway gets no patient context.
    const forced = await rel.browser.post('/authorize/consent', [
      ...Object.entries(rel.page.hidden), ['scope', 'openid'], ['scope', 'launch/patient'],
      ['scope', 'patient/*.rs'], ['patient', 'p999'], ['decision', 'allow'],
    ]);
    assertStatus(forced, 302);
    assert.equal(parseLocation(forced).params.error, 'invalid_request');
  });

  it('disabling a user revokes their refresh and access tokens at once', async () => {
    const f = await flow({ username: 'gone', scope: 'openid offline_access patient/*.rs' });
    const t = await exchangeCode(srv, { clientId: 'pub', code: f.code, redirectUri: CB, verifier: f.verifier });
    assertStatus(t, 200);
    assertStatus(await request(srv, 'GET', '/Patient/p3', { token: t.json.access_token }), 200);
    cli(['users', 'disable', '--data-dir', srv.dataDir, '--username', 'gone']);
    await new Promise((r) => setTimeout(r, 1500));  // the revocation list syncs every second
    assertStatus(await request(srv, 'GET', '/Patient/p3', { token: t.json.access_token }), 401);
    const r = await refreshGrant(srv, { clientId: 'pub', refreshToken: t.json.refresh_token });
    assertStatus(r, 400);
    assert.equal(r.json.error, 'invalid_grant');
  });

  it('a password reset ends the session and the grants made before it', async () => {
    const b = newBrowser(srv);
    const f = await flow({ browser: b, username: 'reset', scope: 'openid offline_access patient/*.rs' });
    const t = await exchangeCode(srv, { clientId: 'pub', code: f.code, redirectUri: CB, verifier: f.verifier });
    assertStatus(t, 200);
    const reset = runCli(['users', 'reset-password', '--data-dir', srv.dataDir, '--username', 'reset', '--password-stdin'],
      { input: 'a-new-password-for-reset\n' });
    assert.equal(reset.code, 0, reset.stderr);
    const r = await refreshGrant(srv, { clientId: 'pub', refreshToken: t.json.refresh_token });
    assert.equal(r.json.error, 'invalid_grant');
    // The old browser session no longer skips the login page.
    const again = await flow({ browser: b, username: 'reset', scope: 'openid patient/*.rs', stopAt: 'login' });
    assert.equal(again.page.kind, 'login');
  });

  it('another client presenting a code neither burns it nor revokes the grant', async () => {
    const f = await flow({ username: 'pat1', scope: 'openid offline_access patient/*.rs' });
    const foreign = await exchangeCode(srv, { clientId: 'pub2', code: f.code, redirectUri: CB, verifier: f.verifier });
    assert.equal(foreign.json.error, 'invalid_grant');
    const own = await exchangeCode(srv, { clientId: 'pub', code: f.code, redirectUri: CB, verifier: f.verifier });
    assertStatus(own, 200, 'the rightful client still redeems its code');
  });

  it('concurrent reuse of a refresh token leaves no working token behind', async () => {
    const f = await flow({ username: 'pat1', scope: 'openid offline_access patient/*.rs' });
    const t = await exchangeCode(srv, { clientId: 'pub', code: f.code, redirectUri: CB, verifier: f.verifier });
    const results = await Promise.all(Array.from({ length: 8 },
      () => refreshGrant(srv, { clientId: 'pub', refreshToken: t.json.refresh_token })));
    await new Promise((r) => setTimeout(r, 1200));
    for (const r of results.filter((x) => x.status === 200)) {
      const read = await request(srv, 'GET', '/Patient/p1', { token: r.json.access_token });
      assertStatus(read, 401, 'a token issued in the race is revoked with the grant');
    }
    assertStatus(await request(srv, 'GET', '/Patient/p1', { token: t.json.access_token }), 401);
  });

  it('introspection: a client sees only its own tokens unless registered with the introspect scope', async () => {
    const f = await flow({ username: 'pat1', scope: 'openid offline_access patient/*.rs' });
    const t = await exchangeCode(srv, { clientId: 'pub', code: f.code, redirectUri: CB, verifier: f.verifier });
    const other = await tokenRequest(srv, { token: t.json.access_token }, { path: '/introspect', basic: ['svc', secret] });
    assert.deepEqual(other.json, { active: false });
    const refresh = await tokenRequest(srv, { token: t.json.refresh_token }, { path: '/introspect', basic: ['svc', secret] });
    assert.deepEqual(refresh.json, { active: false });
    const rs = addClient(srv, {
      clientId: 'rs', scope: 'introspect system/*.rs', auth: 'client_secret_basic', grantTypes: ['client_credentials'],
    }).clientSecret;
    const seen = await tokenRequest(srv, { token: t.json.access_token }, { path: '/introspect', basic: ['rs', rs] });
    assert.equal(seen.json.active, true);
    assert.equal(seen.json.patient, 'p1');
    const rsRefresh = await tokenRequest(srv, { token: t.json.refresh_token }, { path: '/introspect', basic: ['rs', rs] });
    assert.deepEqual(rsRefresh.json, { active: false }, 'never another client\'s refresh token');
  });

  it('an oversized state gets an error page; PAR keeps only authorization parameters', async () => {
    const big = await request(srv, 'GET', authorizeQuery(authorizeParams(srv, {
      clientId: 'pub', redirectUri: CB, scope: SCOPE, state: 'x'.repeat(2000), challenge: 'A'.repeat(43),
    })), { accept: 'text/html' });
    assertStatus(big, 400);
    assert.equal(big.headers.location, undefined);
    const par = await tokenRequest(srv, formBody({
      ...authorizeParams(srv, { clientId: 'pub', redirectUri: CB, scope: SCOPE, challenge: 'A'.repeat(43) }),
      junk: 'y'.repeat(4000),
    }), { path: '/par' });
    assertStatus(par, 201);
  });

  it('a name typed into the username field is audited only as a keyed hash', async () => {
    const b = newBrowser(srv);
    const start = await flow({ browser: b, username: 'x', stopAt: 'login' });
    await b.post('/authorize/login', { ...start.page.hidden, username: 'Sup3r-Secret-Passw0rd', password: 'whatever-else' });
    assert.equal(auditRecords(srv, { subject: 'Sup3r-Secret-Passw0rd' }).length, 0);
    assert.ok(auditRecords(srv, { error: 'unknown_user' }).every((r) => /^unknown:[0-9a-f]{16}$/.test(r.subject)));
  });

  it('a token response leaves after its audit record, which carries the response\'s X-Request-Id', async () => {
    const r = await tokenRequest(srv, { grant_type: 'client_credentials', scope: 'system/Patient.rs' },
      { basic: ['svc', secret] });
    assertStatus(r, 200);
    const id = r.headers['x-request-id'];
    assert.ok(id);
    const recs = auditRecords(srv, { request_id: id });
    assert.equal(recs.length, 1, JSON.stringify(recs));
    assert.equal(recs[0].action, 'token-issue');
    assert.equal(recs[0].client_id, 'svc');
    assert.ok(!JSON.stringify(recs[0]).includes(r.json.access_token.split('.')[2]), 'no token in the record');
  });

  it('users add --config hashes with the server\'s argon2 parameters (same cost as the dummy check)', async () => {
    const fs = await import('node:fs');
    const file = `${srv.root}/argon2.toml`;
    fs.writeFileSync(file, oauthConfig({ argon2_memory_kib: 9000, argon2_iterations: 3 }));
    const r = runCli(['users', 'add', '--data-dir', srv.dataDir, '--username', 'cfg', '--fhir-user', 'Patient/p1',
      '--password-stdin', '--config', file], { input: `${PW}\n` });
    assert.equal(r.code, 0, r.stderr);
    const phc = sqlite(`${srv.dataDir}/db/oauth.db`, "SELECT password_hash FROM users WHERE username='cfg';").trim();
    assert.match(phc, /^\$argon2id\$v=19\$m=9000,t=3,p=1\$/, phc);
  });

  it('online_access refresh tokens end with the login session (offline_access ones do not)', async () => {
    const s2 = await startServer({ config: oauthConfig({ session_idle_seconds: 10 }), name: 'oauth-online' });
    servers.push(s2);
    try {
      addUser(s2, { username: 'on', fhirUser: 'Patient/p1', password: PW });
      addClient(s2, { clientId: 'app', scope: 'openid online_access offline_access patient/*.rs', redirectUris: [CB] });
      const get = async (scope) => {
        const f = await authorize(s2, { clientId: 'app', redirectUri: CB, scope, username: 'on', password: PW });
        const t = await exchangeCode(s2, { clientId: 'app', code: f.code, redirectUri: CB, verifier: f.verifier });
        assertStatus(t, 200);
        return t.json.refresh_token;
      };
      const online = await get('openid online_access patient/*.rs');
      const offline = await get('openid offline_access patient/*.rs');
      const first = await refreshGrant(s2, { clientId: 'app', refreshToken: online });
      assertStatus(first, 200, 'while the session lives');
      await new Promise((r) => setTimeout(r, 11500));
      const late = await refreshGrant(s2, { clientId: 'app', refreshToken: first.json.refresh_token });
      assert.equal(late.json.error, 'invalid_grant', describeRes(late));
      assertStatus(await refreshGrant(s2, { clientId: 'app', refreshToken: offline }), 200, 'offline_access outlives it');
    } finally {
      await stopAndClean(s2);
    }
  });

  it('the CapabilityStatement names the OAuth endpoints (SMART v1 oauth-uris extension)', async () => {
    const r = await request(srv, 'GET', '/metadata');
    assertStatus(r, 200);
    const ext = r.json.rest[0].security.extension
      .find((e) => e.url === 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris');
    const uri = (n) => ext.extension.find((e) => e.url === n).valueUri;
    assert.equal(uri('authorize'), `${srv.base}/authorize`);
    assert.equal(uri('token'), `${srv.base}/token`);
    assert.equal(uri('revoke'), `${srv.base}/revoke`);
    assert.equal(uri('introspect'), `${srv.base}/introspect`);
  });

  it('clients add refuses plain-http redirect URIs outside loopback', () => {
    for (const uri of ['http://localhost.attacker.example/cb', 'http://127.0.0.1.evil.example/cb',
      'http://127.0.0.1:1@evil.example/cb', 'https://user@app.example/cb', 'https://app.example/cb#frag', 'myapp:/cb',
      '.:/cb', '-.+:x', '1com.example:/cb', 'http://127.0.0.1:99999/cb', 'http://localhost:0/cb',
      'https://app.example:abc/cb', 'https://app.example\\@evil.example/cb']) {
      const r = runCli(['clients', 'add', '--data-dir', srv.dataDir, '--client-id', `bad-${Math.random().toString(36).slice(2, 8)}`,
        '--scope', 'openid', '--redirect-uri', uri]);
      assert.notEqual(r.code, 0, `${uri} must be refused`);
    }
    for (const uri of ['http://127.0.0.1:9000/cb', 'http://[::1]/cb', 'http://localhost/cb', 'com.example.app:/cb']) {
      const r = runCli(['clients', 'add', '--data-dir', srv.dataDir, '--client-id', `ok-${Math.random().toString(36).slice(2, 8)}`,
        '--scope', 'openid', '--redirect-uri', uri]);
      assert.equal(r.code, 0, `${uri}: ${r.stderr}`);
    }
  });
});
