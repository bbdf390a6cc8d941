// FHIR validation as users see it: 422 with an OperationOutcome listing every
// finding on create and update (nothing stored, audited), $validate at type and
// instance level, `fhirward validate`, and validation.mode = "off".
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  startServer, stopAndClean, diagnose, client, mintToken, runCli, tempRoot, sqlite,
  assertStatus, assertFhirJson, assertOutcome,
} from './lib.mjs';

const NARRATIVE = { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml"><p>ok</p></div>' };
const XSS = '<div xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="alert(1)"/></div>';

function issues(res) {
  return (res.json && res.json.issue) || [];
}
function findIssue(res, rule, expression) {
  return issues(res).find((i) => i.details && i.details.coding && i.details.coding[0].code === rule &&
    (expression === undefined || (i.expression || []).includes(expression)));
}

describe('validation (strict, the default)', { timeout: 120000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'validation' });
    c = client(srv, mintToken(srv, { sub: 'val-user', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('create with several errors -> 422 listing each with severity, code, expression and message', async () => {
    const r = await c.post('/Patient', {
      resourceType: 'Patient', gender: 'man', birthDate: '2023-02-30', foo: 1,
      contact: [{ name: { family: 'X', nick: 'Y' } }],
    });
    assertStatus(r, 422, 'invalid create');
    assertFhirJson(r, 'invalid create');
    assert.equal(r.json.resourceType, 'OperationOutcome');
    const errors = issues(r).filter((i) => i.severity === 'error');
    assert.ok(errors.length >= 4, `expected every finding: ${r.text}`);
    for (const i of errors) {
      assert.ok(i.code && i.diagnostics && Array.isArray(i.expression), `issue shape: ${JSON.stringify(i)}`);
    }
    assert.ok(findIssue(r, 'binding', 'Patient.gender'), r.text);
    assert.ok(findIssue(r, 'primitive', 'Patient.birthDate'), r.text);
    assert.ok(findIssue(r, 'unknown-element', 'Patient.foo'), r.text);
    assert.ok(findIssue(r, 'unknown-element', 'Patient.contact[0].name.nick'), r.text);
  });

  it('nothing invalid is stored: the type history stays empty', async () => {
    const h = await c.get('/Patient/_history');
    assertStatus(h, 200);
    assert.equal((h.json.entry || []).length, 0, h.text);
  });

  it('narrative with an event handler is refused (422, security)', async () => {
    const r = await c.post('/Patient', { resourceType: 'Patient', text: { status: 'generated', div: XSS } });
    assertStatus(r, 422);
    const i = findIssue(r, 'xhtml-event-handler', 'Patient.text.div');
    assert.ok(i, r.text);
    assert.equal(i.code, 'security');
    assert.ok(!r.text.includes('alert(1)'), 'the payload is not echoed back');
  });

  it('update with an invariant violation -> 422 and the stored version is unchanged', async () => {
    const created = await c.post('/Patient', { resourceType: 'Patient', active: true });
    assertStatus(created, 201);
    const id = created.json.id;
    const r = await c.put(`/Patient/${id}`, { resourceType: 'Patient', id, contact: [{ gender: 'male' }] });
    assertStatus(r, 422, 'invalid update');
    assert.ok(findIssue(r, 'pat-1', 'Patient.contact[0]'), r.text);
    const now = await c.get(`/Patient/${id}`);
    assertStatus(now, 200);
    assert.equal(now.json.meta.versionId, '1');
    assert.equal(now.json.active, true);
  });

  it('a valid resource is still created (warnings do not refuse)', async () => {
    const r = await c.post('/Patient', {
      resourceType: 'Patient', meta: { profile: ['http://example.org/StructureDefinition/unknown'] },
      name: [{ family: 'Valid' }], gender: 'female', birthDate: '2024-02-29',
    });
    assertStatus(r, 201, r.text);
  });

  it('each refusal is audited as a failed create naming validation_failed', () => {
    const rows = sqlite(`${srv.dataDir}/audit/audit.db`, 'SELECT record FROM audit_records ORDER BY seq;')
      .trim().split('\n').map((l) => JSON.parse(l));
    const refused = rows.filter((r) => String(r.error || '').startsWith('validation_failed'));
    assert.ok(refused.length >= 3, `validation refusals in the audit trail: ${JSON.stringify(rows.slice(-6))}`);
    for (const r of refused) assert.equal(r.status_code ?? r.status, 422, JSON.stringify(r));
    const v = runCli(['audit', 'verify', '--data-dir', srv.dataDir]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
  });

  it('POST /Patient/$validate -> 200 with the outcome; nothing stored', async () => {
    const bad = await c.post('/Patient/$validate', { resourceType: 'Patient', gender: 'man' });
    assertStatus(bad, 200);
    assertFhirJson(bad);
    assert.ok(findIssue(bad, 'binding', 'Patient.gender'), bad.text);
    const good = await c.post('/Patient/$validate', { resourceType: 'Patient', gender: 'male', text: NARRATIVE });
    assertStatus(good, 200);
    assert.equal(issues(good).length, 1, good.text);
    assert.equal(issues(good)[0].severity, 'information', good.text);
    const noText = await c.post('/Patient/$validate', { resourceType: 'Patient' });
    assert.deepEqual(issues(noText).map((i) => [i.severity, i.details.coding[0].code]), [['warning', 'dom-6']], noText.text);
  });

  it('$validate accepts Parameters with resource and mode', async () => {
    const r = await c.post('/Observation/$validate', {
      resourceType: 'Parameters',
      parameter: [
        { name: 'resource', resource: { resourceType: 'Observation', code: { text: 'x' } } },
        { name: 'mode', valueCode: 'create' },
      ],
    });
    assertStatus(r, 200);
    assert.ok(findIssue(r, 'cardinality', 'Observation.status'), r.text);
  });

  it('$validate refuses a resource of another type and an unknown mode', async () => {
    assertOutcome(await c.post('/Patient/$validate', { resourceType: 'Observation' }), 400, 'invalid');
    assertOutcome(await c.post('/Patient/$validate?mode=delete', { resourceType: 'Patient' }), 400, 'invalid');
    assertOutcome(await c.get('/Patient/$validate'), 405, 'not-supported');
  });

  it('GET /Patient/ID/$validate validates the stored instance', async () => {
    const created = await c.post('/Patient', { resourceType: 'Patient', active: false, text: NARRATIVE });
    const r = await c.get(`/Patient/${created.json.id}/$validate`);
    assertStatus(r, 200);
    assert.equal(issues(r)[0].severity, 'information', r.text);
    assertOutcome(await c.get('/Patient/does-not-exist/$validate'), 404, 'not-found');
  });

  it('$validate needs a token and the write permission it checks', async () => {
    assertOutcome(await c.post('/Patient/$validate', { resourceType: 'Patient' }, { token: null }), 401, 'login');
    const reader = client(srv, mintToken(srv, { sub: 'reader', scope: 'user/Patient.rs' }));
    assertOutcome(await reader.post('/Patient/$validate', { resourceType: 'Patient' }), 403, 'forbidden');
    const writer = client(srv, mintToken(srv, { sub: 'writer', scope: 'user/Patient.c' }));
    assertStatus(await writer.post('/Patient/$validate', { resourceType: 'Patient' }), 200);
  });

  it('a patient-scoped token cannot validate (and so probe) other patients\' data', async () => {
    const pc = client(srv, mintToken(srv, { sub: 'pat', scope: 'patient/*.cruds', patient: 'me' }));
    const other = await pc.post('/Observation/$validate', {
      resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/someone-else' },
    });
    assertOutcome(other, 403, 'forbidden');
    const own = await pc.post('/Observation/$validate', {
      resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/me' },
    });
    assertStatus(own, 200);
  });
});

describe('validation.mode = "off"', { timeout: 60000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'validation-off', config: '[validation]\nmode = "off"\n' });
    c = client(srv, mintToken(srv, { sub: 'val-off', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('stores what strict mode refuses, and $validate still reports it', async () => {
    const body = { resourceType: 'Patient', gender: 'man' };
    assertStatus(await c.post('/Patient', body), 201);
    const v = await c.post('/Patient/$validate', body);
    assertStatus(v, 200);
    assert.ok(findIssue(v, 'binding', 'Patient.gender'), v.text);
  });
});

describe('fhirward validate', { timeout: 60000 }, () => {
  it('prints one line per file and per finding; exits 1 when any file has errors', () => {
    const dir = tempRoot('fhirward-validate-');
    const good = `${dir}/good.json`;
    const bad = `${dir}/bad.json`;
    fs.writeFileSync(good, JSON.stringify({ resourceType: 'Patient', gender: 'other', text: NARRATIVE }));
    fs.writeFileSync(bad, JSON.stringify({ resourceType: 'Patient', gender: 'man', text: { status: 'generated', div: XSS } }));
    const r1 = runCli(['validate', good]);
    assert.equal(r1.code, 0, r1.stdout + r1.stderr);
    assert.match(r1.stdout, /good\.json: OK \(0 errors, 0 warnings\)/);
    const r2 = runCli(['validate', good, bad]);
    assert.equal(r2.code, 1, r2.stdout + r2.stderr);
    assert.match(r2.stdout, /bad\.json: 2 errors, 0 warnings/);
    assert.match(r2.stdout, /error {2}\[binding\] Patient\.gender: /);
    assert.match(r2.stdout, /error {2}\[xhtml-event-handler\] Patient\.text\.div: /);
    const r3 = runCli(['validate', '--outcome', bad]);
    assert.equal(r3.code, 1);
    assert.equal(JSON.parse(r3.stdout).resourceType, 'OperationOutcome');
    const r4 = runCli(['validate', `${dir}/missing.json`]);
    assert.equal(r4.code, 1);
    assert.match(r4.stdout, /missing\.json: cannot be read/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
