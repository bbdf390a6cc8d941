// Concurrent writes to one resource: optimistic locking and no lost updates.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken,
  assertStatus, assertOutcome, describeRes,
  assertAllResponses,
} from './lib.mjs';

const N = 20;

describe('concurrency', { timeout: 120000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'concurrency' });
    c = client(srv, mintToken(srv, { sub: 'conc-user', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it(`${N} parallel PUTs with If-Match W/"1" -> exactly one 200, the rest 412 (or 409)`, async () => {
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Race' }] });
    assertStatus(p, 201);
    const id = p.json.id;
    const rs = await Promise.all(Array.from({ length: N }, (_, i) => c.put(`/Patient/${id}`,
      { resourceType: 'Patient', id, name: [{ family: 'Race', given: [`w${i}`] }] },
      { headers: { 'If-Match': 'W/"1"' } })));
    const statuses = rs.map((r) => r.status);
    const winners = rs.filter((r) => r.status === 200);
    assert.equal(winners.length, 1, `statuses: ${statuses}`);
    for (const r of rs.filter((x) => x.status !== 200)) {
      assertOutcome(r, [412, 409], 'conflict', ['precondition_failed', 'version_conflict'], 'losing PUT');
    }
    const g = await c.get(`/Patient/${id}`);
    assert.equal(g.json.meta.versionId, '2', `current version after the race: ${g.text}`);
    assert.deepEqual(g.json.name, winners[0].json.name, 'the stored version is not the one the 200 reported');
    assertStatus(await c.get(`/Patient/${id}/_history/3`), 404, 'a third version exists');
  });

  it(`${N} parallel PUTs without If-Match -> all succeed, version ${N + 1}, every write kept once`, async () => {
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Pile' }] });
    assertStatus(p, 201);
    const id = p.json.id;
    const rs = await Promise.all(Array.from({ length: N }, (_, i) => c.put(`/Patient/${id}`,
      { resourceType: 'Patient', id, name: [{ family: 'Pile', given: [`w${i}`] }] })));
    const bad = rs.filter((r) => r.status !== 200 && r.status !== 201);
    assert.deepEqual(bad.map((r) => describeRes(r)), [], `statuses: ${rs.map((r) => r.status)}`);
    const reported = rs.map((r) => Number(r.json.meta.versionId)).sort((x, y) => x - y);
    assert.deepEqual(reported, Array.from({ length: N }, (_, i) => i + 2), 'versionIds reported by the PUTs');
    const g = await c.get(`/Patient/${id}`);
    assert.equal(g.json.meta.versionId, String(N + 1), `final version: ${g.text}`);
    const seen = [];
    for (let v = 1; v <= N + 1; v++) {
      const r = await c.get(`/Patient/${id}/_history/${v}`);
      assertStatus(r, 200, `vread ${v}`);
      assert.equal(r.json.meta.versionId, String(v));
      if (v > 1) seen.push(r.json.name[0].given[0]);
    }
    assert.deepEqual(seen.sort(), Array.from({ length: N }, (_, i) => `w${i}`).sort(), 'each concurrent write is exactly one version');
    const h = await c.get(`/Patient/${id}/_history?_count=100`);
    assert.equal(h.json.entry.length, N + 1, 'history length');
  });

  it(`${N} parallel POSTs -> ${N} distinct ids`, async () => {
    const rs = await Promise.all(Array.from({ length: N }, (_, i) => c.post('/Patient', { resourceType: 'Patient', name: [{ family: `Par${i}` }] })));
    assert.deepEqual(rs.map((r) => r.status), Array(N).fill(201));
    assert.equal(new Set(rs.map((r) => r.json.id)).size, N);
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv);
  });
});
