// Idempotency-Key on POST, PUT and DELETE.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken, forgeJwt, randomId,
  assertStatus, assertOutcome, describeRes,
  assertAllResponses,
} from './lib.mjs';

describe('Idempotency-Key', { timeout: 120000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'idempotency' });
    c = client(srv, mintToken(srv, { sub: 'idem-user', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  async function historyCount(path) {
    const r = await c.get(`${path}?_count=500`);
    assertStatus(r, 200, `GET ${path}`);
    return (r.json.entry || []).length;
  }

  it('POST repeated with the same key and body -> same status and body, Idempotent-Replayed: true, no new resource', async () => {
    const key = randomId('k-post-');
    const body = { resourceType: 'Patient', name: [{ family: 'Idem' }] };
    const first = await c.post('/Patient', body, { headers: { 'Idempotency-Key': key } });
    assertStatus(first, 201, 'first POST');
    assert.notEqual(first.headers['idempotent-replayed'], 'true', 'first request marked as replayed');
    const before = await historyCount('/Patient/_history');
    const second = await c.post('/Patient', body, { headers: { 'Idempotency-Key': key } });
    assertStatus(second, 201, 'replayed POST');
    assert.equal(second.headers['idempotent-replayed'], 'true', `Idempotent-Replayed header: ${describeRes(second)}`);
    assert.equal(second.text, first.text, 'replayed body differs');
    assert.equal(second.headers.location, first.headers.location, 'replayed Location differs');
    assert.equal(second.headers.etag, first.headers.etag, 'replayed ETag differs');
    assert.equal(await historyCount('/Patient/_history'), before, 'a replay created a version');
  });

  it('same key with a different body -> 422 idempotency_key_reused', async () => {
    const key = randomId('k-reuse-');
    assertStatus(await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'A' }] }, { headers: { 'Idempotency-Key': key } }), 201);
    const before = await historyCount('/Patient/_history');
    const r = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'B' }] }, { headers: { 'Idempotency-Key': key } });
    assertOutcome(r, 422, 'conflict', 'idempotency_key_reused', 'key reused with another body');
    assert.equal(await historyCount('/Patient/_history'), before, 'the 422 created a version');
  });

  it('same key on another URL -> 422', async () => {
    const key = randomId('k-url-');
    assertStatus(await c.post('/Patient', { resourceType: 'Patient' }, { headers: { 'Idempotency-Key': key } }), 201);
    const r = await c.put('/Patient/other-url', { resourceType: 'Patient', id: 'other-url' }, { headers: { 'Idempotency-Key': key } });
    assertOutcome(r, 422, 'conflict', 'idempotency_key_reused', 'key reused on another URL');
  });

  it('PUT repeated -> replayed, version unchanged', async () => {
    const p = await c.post('/Patient', { resourceType: 'Patient' });
    const id = p.json.id;
    const key = randomId('k-put-');
    const body = { resourceType: 'Patient', id, active: true };
    const first = await c.put(`/Patient/${id}`, body, { headers: { 'Idempotency-Key': key } });
    assertStatus(first, 200);
    assert.equal(first.json.meta.versionId, '2');
    const second = await c.put(`/Patient/${id}`, body, { headers: { 'Idempotency-Key': key } });
    assertStatus(second, 200, 'replayed PUT');
    assert.equal(second.headers['idempotent-replayed'], 'true', describeRes(second));
    assert.equal(second.text, first.text);
    const g = await c.get(`/Patient/${id}`);
    assert.equal(g.json.meta.versionId, '2', 'the replayed PUT made a new version');
    assert.equal(await historyCount(`/Patient/${id}/_history`), 2);
  });

  it('DELETE repeated -> replayed, history unchanged', async () => {
    const p = await c.post('/Patient', { resourceType: 'Patient' });
    const id = p.json.id;
    const key = randomId('k-del-');
    const first = await c.del(`/Patient/${id}`, { headers: { 'Idempotency-Key': key } });
    assertStatus(first, 204);
    const n = await historyCount(`/Patient/${id}/_history`);
    const second = await c.del(`/Patient/${id}`, { headers: { 'Idempotency-Key': key } });
    assertStatus(second, 204, 'replayed DELETE');
    assert.equal(second.headers['idempotent-replayed'], 'true', describeRes(second));
    assert.equal(await historyCount(`/Patient/${id}/_history`), n);
  });

  it('the same key from another principal is not replayed to it', async () => {
    const key = randomId('k-other-');
    const body = { resourceType: 'Patient', name: [{ family: 'Mine' }] };
    const mine = await c.post('/Patient', body, { headers: { 'Idempotency-Key': key } });
    assertStatus(mine, 201);
    const other = client(srv, forgeJwt(srv, { sub: 'someone-else', clientId: 'other-client', scope: 'user/*.cruds' }));
    const r = await other.post('/Patient', body, { headers: { 'Idempotency-Key': key } });
    assertStatus(r, 201, "another principal's POST with the same key");
    assert.notEqual(r.headers['idempotent-replayed'], 'true', 'a response stored for another principal was replayed');
    assert.notEqual(r.json.id, mine.json.id, "another principal got the first principal's resource");
  });

  it('20 concurrent POSTs with one key create one resource', async () => {
    const key = randomId('k-conc-');
    const body = { resourceType: 'Patient', name: [{ family: 'ConcIdem' }] };
    const before = await historyCount('/Patient/_history');
    const rs = await Promise.all(Array.from({ length: 20 }, () => c.post('/Patient', body, { headers: { 'Idempotency-Key': key } })));
    const created = rs.filter((r) => r.status === 201);
    assert.ok(created.length >= 1, `statuses: ${rs.map((r) => r.status)}`);
    assert.equal(new Set(created.map((r) => r.json.id)).size, 1, 'concurrent requests with one key created several resources');
    for (const r of rs) assert.ok([201, 409].includes(r.status), `unexpected ${describeRes(r)}`);
    assert.equal(await historyCount('/Patient/_history'), before + 1);
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv);
  });
});
