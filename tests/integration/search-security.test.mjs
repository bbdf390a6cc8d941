// Regression tests for the leak paths found by review of search, conditional
// writes, transactions and batches: each test is one way a principal could
// learn about or change data it must not, and asserts it is closed. Also:
// composite search parameters, and per-entry audit records of bundles.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken, randomId, sqlite,
  assertOutcome, assertStatus,
} from './lib.mjs';

const patient = (extra = {}) => ({ resourceType: 'Patient', ...extra });
const obs = (subject, extra = {}) => ({
  resourceType: 'Observation',
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8480-6', display: 'Systolic blood pressure' }] },
  subject: { reference: subject },
  ...extra,
});
const bp = (subject, value) => obs(subject, {
  valueQuantity: { value, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' },
});
const tx = (entry) => ({ resourceType: 'Bundle', type: 'transaction', entry });
const batch = (entry) => ({ resourceType: 'Bundle', type: 'batch', entry });
const ids = (bundle) => (bundle.entry || []).filter((e) => e.search?.mode === 'match').map((e) => e.resource.id).sort();

describe('search, conditional writes and bundles: leak paths stay closed', { timeout: 120000 }, () => {
  let srv;
  let admin;
  let A;
  let B;
  let obsB;
  let deletedB;
  let deviceB;
  const secret = randomId('secretB-');

  before(async () => {
    srv = await startServer({ name: 'search-security' });
    admin = client(srv, mintToken(srv, { sub: 'admin', scope: 'system/*.cruds' }));
    const a = await admin.post('/Patient', patient({ name: [{ family: 'Alpha' }] }));
    const b = await admin.post('/Patient', patient({ name: [{ family: 'Bravo' }] }));
    assertStatus(a, 201);
    assertStatus(b, 201);
    A = a.json.id;
    B = b.json.id;
    const o = await admin.post('/Observation', bp(`Patient/${B}`, 150));
    assertStatus(o, 201);
    obsB = o.json.id;
    assertStatus(await admin.put(`/Observation/${obsB}`, { ...o.json, identifier: [{ system: 'urn:obs', value: secret }] }), 200);
    const del = await admin.post('/Observation', bp(`Patient/${B}`, 120));
    deletedB = del.json.id;
    assertStatus(await admin.del(`/Observation/${deletedB}`), 204);
    const dev = await admin.post('/Device', { resourceType: 'Device', patient: { reference: `Patient/${B}` }, deviceName: [{ name: 'Pacemaker', type: 'user-friendly-name' }] });
    assertStatus(dev, 201);
    deviceB = dev.json.id;
    assertStatus(await admin.post('/Observation', bp(`Patient/${A}`, 135)), 201);
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  it('a create-only token cannot read through If-None-Exist (a condition is a search)', async () => {
    const c = client(srv, mintToken(srv, { sub: 'creator', scope: 'user/Observation.c' }));
    const r = await c.post('/Observation', bp(`Patient/${B}`, 99), {
      headers: { 'If-None-Exist': `identifier=urn:obs|${secret}` },
    });
    assertOutcome(r, 403, 'forbidden', 'forbidden', 'conditional create without search permission');
    assert.ok(!r.text.includes(secret));
  });

  it('with search but not read, a matching conditional create answers without the content', async () => {
    const c = client(srv, mintToken(srv, { sub: 'cs', scope: 'user/Observation.cs' }));
    const r = await c.post('/Observation', bp(`Patient/${B}`, 99), {
      headers: { 'If-None-Exist': `identifier=urn:obs|${secret}` },
    });
    assertStatus(r, 200);
    assert.equal(r.text, '', 'no body for a principal without read');
    assert.equal(r.headers.location, undefined, 'no id for a principal without read');
    // With read, the same request answers with the existing resource.
    const reader = client(srv, mintToken(srv, { sub: 'crs', scope: 'user/Observation.crs' }));
    const full = await reader.post('/Observation', bp(`Patient/${B}`, 99), {
      headers: { 'If-None-Exist': `identifier=urn:obs|${secret}` },
    });
    assertStatus(full, 200);
    assert.match(full.headers.location, new RegExp(`/Observation/${obsB}/_history/`));
    assert.equal(full.json.id, obsB);
  });

  it('an update-only token cannot create through a conditional update', async () => {
    const c = client(srv, mintToken(srv, { sub: 'updater', scope: 'user/Observation.us' }));
    const r = await c.put(`/Observation?identifier=urn:obs|${randomId('none-')}`, bp(`Patient/${B}`, 1));
    assertOutcome(r, 403, 'forbidden', 'forbidden', 'conditional update that would create');
  });

  it('a conditional update with no match never overwrites the resource named by the body id', async () => {
    const before = await admin.get(`/Observation/${obsB}`);
    const r = await admin.put(`/Observation?identifier=urn:none|${randomId()}`, { ...bp(`Patient/${B}`, 1), id: obsB });
    assertOutcome(r, 409, 'conflict', 'version_conflict', 'no match, existing id');
    const after = await admin.get(`/Observation/${obsB}`);
    assert.equal(after.json.meta.versionId, before.json.meta.versionId);
  });

  it('a patient token cannot create another Patient linked to itself through a conditional update', async () => {
    const c = client(srv, mintToken(srv, { sub: 'pa', scope: 'patient/*.cruds', patient: A }));
    const r = await c.put(`/Patient?identifier=urn:x|${randomId()}`, patient({ link: [{ other: { reference: `Patient/${A}` }, type: 'seealso' }] }));
    assertOutcome(r, 403, 'forbidden', 'forbidden', 'conditional update creating a Patient');
  });

  it('patient scopes do not reach types they cannot confine (Device lists every patient)', async () => {
    const c = client(srv, mintToken(srv, { sub: 'pa', scope: 'patient/*.rs', patient: A }));
    const r = await c.get(`/Device?patient=Patient/${B}`);
    assertOutcome(r, 403, 'forbidden', 'forbidden', 'Device search under a patient scope');
    assert.ok(!r.text.includes('Pacemaker'));
    assertStatus(await c.get(`/Device/${deviceB}`), 403);
    // Shared reference data stays readable.
    assertStatus(await c.get('/Organization'), 200);
  });

  it('a search returns resources only to a principal that may read them', async () => {
    const c = client(srv, mintToken(srv, { sub: 's-only', scope: 'user/Observation.s' }));
    const r = await c.get(`/Observation?_id=${obsB}`);
    assertOutcome(r, 403, 'forbidden', 'forbidden', 'search with s only');
    const count = await c.get(`/Observation?_id=${obsB}&_summary=count`);
    assertStatus(count, 200);
    assert.equal(count.json.total, 1);
    assert.equal(count.json.entry, undefined);
  });

  it('transaction writes by a confined principal fail alike for absent, deleted and forbidden targets', async () => {
    const c = client(srv, mintToken(srv, { sub: 'pa', scope: 'patient/*.cruds', patient: A }));
    const outcomes = [];
    for (const entry of [
      { request: { method: 'DELETE', url: `Observation/${obsB}` } },
      { request: { method: 'DELETE', url: `Observation/${randomId('absent-')}` } },
      { request: { method: 'PUT', url: `Observation/${deletedB}` }, resource: { ...bp(`Patient/${A}`, 1), id: deletedB } },
      { request: { method: 'PUT', url: 'Observation/zz-new-id' }, resource: { ...bp(`Patient/${A}`, 1), id: 'zz-new-id' } },
    ]) {
      const r = await c.post('/', tx([entry]));
      assertOutcome(r, 404, 'not-found', 'not_found', `transaction ${entry.request.method} ${entry.request.url}`);
      outcomes.push(r.json.issue[0].details.coding[0].code);
    }
    assert.equal(new Set(outcomes).size, 1);
    // B's deleted Observation was not taken over.
    assertStatus(await admin.get(`/Observation/${deletedB}`), 410);
  });

  it('a confined conditional update that would create may not choose its id', async () => {
    const c = client(srv, mintToken(srv, { sub: 'pa', scope: 'patient/*.cruds', patient: A }));
    const r = await c.put(`/Observation?identifier=urn:none|${randomId()}`, { ...bp(`Patient/${A}`, 1), id: 'chosen-id' });
    assertOutcome(r, 400, 'invalid', 'invalid_request', 'confined conditional create with an id');
    const ok = await c.put(`/Observation?identifier=urn:none|${randomId()}`, bp(`Patient/${A}`, 1));
    assertStatus(ok, 201);
  });

  it('every entry of a batch and of a transaction has its own audit record', async () => {
    const b = await admin.post('/', batch([
      { request: { method: 'GET', url: `Observation/${obsB}` } },
      { request: { method: 'GET', url: `Patient/${B}` } },
    ]));
    assertStatus(b, 200);
    const t = await admin.post('/', tx([
      { fullUrl: 'urn:uuid:5b9e2c2a-4f7e-4d0e-9d3c-0a1b2c3d4e5f', request: { method: 'POST', url: 'Patient' }, resource: patient() },
      { request: { method: 'POST', url: 'Observation' }, resource: bp('urn:uuid:5b9e2c2a-4f7e-4d0e-9d3c-0a1b2c3d4e5f', 110) },
    ]));
    assertStatus(t, 200);
    const rows = (id) => sqlite(`${srv.dataDir}/audit/audit.db`,
      `SELECT record FROM audit_records WHERE record LIKE '%"request_id":"${id}"%' ORDER BY seq`)
      .split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const br = rows(b.headers['x-request-id']);
    assert.deepEqual(br.map((r) => r.action), ['read', 'read', 'batch']);
    assert.deepEqual(br.slice(0, 2).map((r) => r.resource_id), [obsB, B]);
    assert.equal(br[0].patient_id, B);
    const tr = rows(t.headers['x-request-id']);
    assert.deepEqual(tr.map((r) => r.action), ['create', 'create', 'transaction']);
    assert.deepEqual(tr.slice(0, 2).map((r) => r.resource_type), ['Patient', 'Observation']);
    assert.ok(tr.slice(0, 2).every((r) => r.outcome === 'success' && r.resource_id));
  });

  it('history of a type or of the system needs read, not only search', async () => {
    const c = client(srv, mintToken(srv, { sub: 's-only', scope: 'user/Observation.s' }));
    assertOutcome(await c.get('/Observation/_history'), 403, 'forbidden', 'forbidden', 'type history with s');
    const sys = client(srv, mintToken(srv, { sub: 's-all', scope: 'user/*.s' }));
    assertOutcome(await sys.get('/_history'), 403, 'forbidden', 'forbidden', 'system history with s');
    assertStatus(await client(srv, mintToken(srv, { sub: 'rs', scope: 'user/Observation.rs' })).get('/Observation/_history'), 200);
  });

  it('PATCH needs read as well as update (the answer and test operations reveal content)', async () => {
    const c = client(srv, mintToken(srv, { sub: 'u-only', scope: 'user/Observation.u' }));
    const before = await admin.get(`/Observation/${obsB}`);
    const r = await c('PATCH', `/Observation/${obsB}`, {
      body: JSON.stringify([{ op: 'test', path: '/status', value: 'final' }]),
      contentType: 'application/json-patch+json',
    });
    assertOutcome(r, 403, 'forbidden', 'forbidden', 'patch with u only');
    assert.ok(!r.text.includes(secret));
    const after = await admin.get(`/Observation/${obsB}`);
    assert.equal(after.json.meta.versionId, before.json.meta.versionId, 'nothing written');
  });

  it('an update that would create or re-create a resource needs the create permission', async () => {
    const c = client(srv, mintToken(srv, { sub: 'u-only', scope: 'user/Observation.ru' }));
    assertOutcome(await c.put('/Observation/u-made-1', { ...bp(`Patient/${A}`, 1), id: 'u-made-1' }), 403, 'forbidden', 'forbidden', 'PUT new id without c');
    assertOutcome(await c.put(`/Observation/${deletedB}`, { ...bp(`Patient/${B}`, 1), id: deletedB }), 403, 'forbidden', 'forbidden', 'PUT deleted id without c');
    const t = await c.post('/', tx([{ request: { method: 'PUT', url: `Observation/${deletedB}` }, resource: { ...bp(`Patient/${B}`, 1), id: deletedB } }]));
    assertOutcome(t, 403, 'forbidden', 'forbidden', 'transaction PUT deleted id without c');
    assertStatus(await admin.get(`/Observation/${deletedB}`), 410);
    assertStatus(await admin.get('/Observation/u-made-1'), 404);
  });

  it('without read, a matched conditional create and a delete reveal no id or version', async () => {
    const c = client(srv, mintToken(srv, { sub: 'cs', scope: 'user/Observation.cs' }));
    const r = await c.post('/Observation', bp(`Patient/${B}`, 99), {
      headers: { 'If-None-Exist': `identifier=urn:obs|${secret}` },
    });
    assertStatus(r, 200);
    assert.equal(r.headers.location, undefined);
    assert.equal(r.headers.etag, undefined);
    const extra = await admin.post('/Observation', bp(`Patient/${B}`, 98));
    const d = client(srv, mintToken(srv, { sub: 'd-only', scope: 'user/Observation.d' }));
    const gone = await d.del(`/Observation/${extra.json.id}`);
    assertStatus(gone, 204);
    assert.equal(gone.headers.etag, undefined);
  });

  it('a reference that is not exactly Type/id is not searchable as one (compartments read it the same way)', async () => {
    const r = await admin.post('/Observation', { ...bp(`Patient/${A}`, 1), focus: [{ reference: `Patient/${B}/x` }] });
    // Strict validation refuses the malformed reference; were it stored, it
    // would be indexed as a URL, not as a reference to Patient/B.
    assert.ok(r.status === 422 || r.status === 201, `status ${r.status}`);
    if (r.status === 201) {
      const b = await admin.get(`/Observation?focus=Patient/${B}`);
      assert.ok(!ids(b.json).includes(r.json.id));
    }
  });

  it('composite parameters: code-value-quantity pairs the code with the value', async () => {
    const q = (v) => admin.get(`/Observation?code-value-quantity=${encodeURIComponent(v)}&_count=100`);
    const gt = await q('http://loinc.org|8480-6$gt140|http://unitsofmeasure.org|mm[Hg]');
    assertStatus(gt, 200);
    assert.deepEqual(ids(gt.json), [obsB]);
    const le = await q('8480-6$le140');
    assert.ok(!ids(le.json).includes(obsB));
    assert.ok(ids(le.json).length >= 1);
    const other = await q('8867-4$gt140');
    assert.deepEqual(ids(other.json), []);
    assertOutcome(await q('8480-6'), 400, 'invalid', 'invalid_parameter', 'composite without $');
  });
});

describe('absolute references to the configured base are searchable as references', { timeout: 60000 }, () => {
  let srv;
  before(async () => {
    srv = await startServer({ name: 'base-url', config: 'base_url = "https://fhir.example.org/r4/"\n' });
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  it('subject=Patient/id finds an Observation whose subject is the absolute URL', async () => {
    const c = client(srv, mintToken(srv, { sub: 'admin', scope: 'system/*.cruds' }));
    const p = await c.post('/Patient', patient());
    assertStatus(p, 201);
    const o = await c.post('/Observation', bp(`https://fhir.example.org/r4/Patient/${p.json.id}`, 1));
    assertStatus(o, 201);
    const other = await c.post('/Observation', bp(`https://elsewhere.example.org/Patient/${p.json.id}`, 2));
    assertStatus(other, 201);
    const r = await c.get(`/Observation?subject=Patient/${p.json.id}`);
    assertStatus(r, 200);
    assert.deepEqual(ids(r.json), [o.json.id], 'another server\'s Patient is not this one');
  });
});
