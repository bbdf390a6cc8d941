// History: instance, type and system history, paging with opaque cursors, _since,
// and the [fhir] history/update_create settings.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken, sleep, nextLink, linkPath,
  assertOutcome, assertStatus, describeRes,
  assertAllResponses,
} from './lib.mjs';

const CONFIG = `
[fhir]
update_create = false
history_default_count = 5
history_max_count = 20
`;

function entryKey(e) {
  if (e.resource) return `${e.resource.resourceType}/${e.resource.id}/_history/${e.resource.meta && e.resource.meta.versionId}`;
  return `deleted:${e.request && e.request.method} ${e.request && e.request.url} ${e.fullUrl || ''} ${(e.response && e.response.etag) || ''}`;
}

/** Follows every `next` link from `path`; returns { pages: [bundle...], entries: [...] }. */
async function allPages(c, path, maxPages = 30) {
  const pages = [];
  let p = path;
  while (p) {
    const r = await c.get(p);
    assertStatus(r, 200, `history page ${pages.length + 1}: GET ${p}`);
    assert.equal(r.json.resourceType, 'Bundle', describeRes(r));
    assert.equal(r.json.type, 'history', describeRes(r));
    pages.push(r.json);
    const next = nextLink(r.json);
    p = next ? linkPath(next) : null;
    assert.ok(pages.length <= maxPages, `more than ${maxPages} pages following ${path}`);
  }
  return { pages, entries: pages.flatMap((b) => b.entry || []) };
}

function cursorOf(url) {
  return new URL(url, 'https://localhost').searchParams.get('_cursor');
}

function withCursor(url, cursor) {
  const u = new URL(url, 'https://localhost');
  u.searchParams.set('_cursor', cursor);
  return u.pathname + u.search;
}

describe('history', { timeout: 150000 }, () => {
  let srv;
  let a;
  let b;
  let pid; // 7 versions
  let delId; // created then deleted
  const counts = { Patient: 0, Observation: 0 };
  before(async () => {
    srv = await startServer({ name: 'history', config: CONFIG });
    a = client(srv, mintToken(srv, { sub: 'hist-a', scope: 'user/*.cruds' }));
    b = client(srv, mintToken(srv, { sub: 'hist-b', scope: 'user/*.cruds' }));
    const p = await a.post('/Patient', { resourceType: 'Patient', name: [{ family: 'V1' }] });
    assertStatus(p, 201, 'create');
    pid = p.json.id;
    counts.Patient++;
    for (let v = 2; v <= 7; v++) {
      const r = await a.put(`/Patient/${pid}`, { resourceType: 'Patient', id: pid, name: [{ family: `V${v}` }] });
      assertStatus(r, 200, `update to v${v}`);
      counts.Patient++;
    }
    const others = [];
    for (let i = 0; i < 5; i++) {
      const r = await a.post('/Patient', { resourceType: 'Patient', name: [{ family: `Other${i}` }] });
      assertStatus(r, 201);
      others.push(r.json.id);
      counts.Patient++;
    }
    assertStatus(await a.put(`/Patient/${others[0]}`, { resourceType: 'Patient', id: others[0], active: true }), 200);
    counts.Patient++;
    delId = others[1];
    assertStatus(await a.del(`/Patient/${delId}`), 204);
    counts.Patient++;
    for (let i = 0; i < 3; i++) {
      assertStatus(await a.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: `o${i}` } }), 201);
      counts.Observation++;
    }
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('instance history: Bundle type history, newest first', async () => {
    const r = await a.get(`/Patient/${pid}/_history?_count=20`);
    assertStatus(r, 200);
    assert.equal(r.json.resourceType, 'Bundle');
    assert.equal(r.json.type, 'history');
    const versions = (r.json.entry || []).map((e) => e.resource && e.resource.meta.versionId);
    assert.deepEqual(versions, ['7', '6', '5', '4', '3', '2', '1']);
    assert.equal(r.json.entry[0].resource.name[0].family, 'V7');
    assert.equal(r.json.entry[6].resource.name[0].family, 'V1');
    assert.equal(nextLink(r.json), undefined, 'a next link after the last page');
  });

  it('history_default_count applies without _count', async () => {
    const r = await a.get(`/Patient/${pid}/_history`);
    assertStatus(r, 200);
    assert.equal((r.json.entry || []).length, 5, 'history_default_count = 5');
    assert.ok(nextLink(r.json), 'no next link although more versions exist');
  });

  it('_count above history_max_count is capped', async () => {
    const r = await a.get('/_history?_count=1000');
    if (r.status === 200) {
      assert.ok((r.json.entry || []).length <= 20, `history_max_count = 20 but got ${(r.json.entry || []).length} entries`);
    } else {
      assertOutcome(r, 400, null, null, '_count=1000');
    }
  });

  it('_count=2 gives 2 entries', async () => {
    const r = await a.get(`/Patient/${pid}/_history?_count=2`);
    assert.deepEqual(r.json.entry.map((e) => e.resource.meta.versionId), ['7', '6']);
  });

  it('paging instance history with _count=3 visits every version exactly once, newest first', async () => {
    const { pages, entries } = await allPages(a, `/Patient/${pid}/_history?_count=3`);
    assert.deepEqual(pages.map((p) => (p.entry || []).length), [3, 3, 1]);
    assert.deepEqual(entries.map((e) => e.resource.meta.versionId), ['7', '6', '5', '4', '3', '2', '1']);
  });

  it('paging type history visits every Patient version exactly once', async () => {
    const { pages, entries } = await allPages(a, '/Patient/_history?_count=4');
    const keys = entries.map(entryKey);
    assert.equal(new Set(keys).size, keys.length, `duplicates across pages: ${keys}`);
    assert.equal(keys.length, counts.Patient, `expected ${counts.Patient} Patient versions, got ${keys.length}: ${keys}`);
    assert.ok(pages.every((p) => (p.entry || []).length <= 4), 'a page larger than _count');
    for (const e of entries) if (e.resource) assert.equal(e.resource.resourceType, 'Patient');
    assert.ok(entries.some((e) => e.request && e.request.method === 'DELETE'), 'the deletion is not in the type history');
  });

  it('paging system history visits every version of every type exactly once, newest first', async () => {
    const { entries } = await allPages(a, '/_history?_count=5');
    const keys = entries.map(entryKey);
    assert.equal(new Set(keys).size, keys.length, `duplicates across pages: ${keys}`);
    assert.equal(keys.length, counts.Patient + counts.Observation, `got ${keys}`);
    const times = entries.filter((e) => e.resource).map((e) => Date.parse(e.resource.meta.lastUpdated));
    for (let i = 1; i < times.length; i++) assert.ok(times[i] <= times[i - 1], `not newest first at ${i}: ${keys}`);
    assert.equal(entries[0].resource && entries[0].resource.resourceType, 'Observation', 'newest entry should be the last Observation');
  });

  it('deleted resource: instance history shows the deletion as the newest entry', async () => {
    const r = await a.get(`/Patient/${delId}/_history`);
    assertStatus(r, 200, 'history of a deleted resource');
    assert.equal(r.json.entry.length, 2);
    assert.equal(r.json.entry[0].request && r.json.entry[0].request.method, 'DELETE', JSON.stringify(r.json.entry[0]));
    assert.equal(r.json.entry[1].resource.meta.versionId, '1');
  });

  it('the _cursor parameter is opaque', async () => {
    const r = await a.get(`/Patient/${pid}/_history?_count=3`);
    const next = nextLink(r.json);
    const cur = cursorOf(next);
    assert.ok(cur, `next link without _cursor: ${next}`);
    assert.ok(!/^\d+$/.test(cur), `_cursor is a plain number: ${cur}`);
    assert.ok(cur.length >= 16, `_cursor too short to be opaque: ${cur}`);
    for (const enc of ['base64url', 'base64', 'hex']) {
      const dec = Buffer.from(cur, enc).toString('latin1');
      assert.ok(!/seq|before|Patient|_history|"[a-z]":/.test(dec), `_cursor decodes (${enc}) to readable state: ${JSON.stringify(dec)}`);
    }
    assert.ok(!/seq|before|Patient/.test(cur), `_cursor is readable: ${cur}`);
  });

  it('a tampered cursor -> 400', async () => {
    const r = await a.get(`/Patient/${pid}/_history?_count=3`);
    const next = nextLink(r.json);
    const cur = cursorOf(next);
    const i = Math.floor(cur.length / 2);
    const flipped = cur.slice(0, i) + (cur[i] === 'A' ? 'B' : 'A') + cur.slice(i + 1);
    for (const [what, bad] of [['one char changed', flipped], ['truncated', cur.slice(0, cur.length - 4)], ['garbage', 'AAAAAAAAAAAAAAAAAAAAAAAA'], ['empty', '']]) {
      const t = await a.get(withCursor(next, bad));
      assertOutcome(t, 400, null, null, `cursor ${what}`);
      assert.ok(!t.json.entry, 'data returned for a bad cursor');
    }
    assertStatus(await a.get(linkPath(next)), 200, 'the untampered cursor still works');
  });

  it("a cursor used with another subject's token -> 400 or 403, never data", async () => {
    for (const path of [`/Patient/${pid}/_history?_count=3`, '/Patient/_history?_count=3', '/_history?_count=3']) {
      const r = await a.get(path);
      const next = nextLink(r.json);
      assert.ok(next, `no next link for ${path}`);
      const t = await b.get(linkPath(next));
      assert.ok([400, 403].includes(t.status), `cursor of hist-a used by hist-b on ${path}: ${describeRes(t)}`);
      assert.equal(t.json && t.json.resourceType, 'OperationOutcome', describeRes(t));
    }
  });

  it('_since filters (inclusive, by meta.lastUpdated)', async () => {
    await sleep(1100);
    const s1 = await a.post('/Patient', { resourceType: 'Patient', name: [{ family: 'SinceOld' }] });
    await sleep(1100);
    const s2 = await a.post('/Patient', { resourceType: 'Patient', name: [{ family: 'SinceNew' }] });
    const since = s2.json.meta.lastUpdated;
    const r = await a.get(`/Patient/_history?_count=20&_since=${encodeURIComponent(since)}`);
    assertStatus(r, 200, `_since=${since}`);
    const ids = (r.json.entry || []).map((e) => e.resource && e.resource.id);
    assert.deepEqual(ids, [s2.json.id], `_since=${since} on /Patient/_history`);
    const sys = await a.get(`/_history?_since=${encodeURIComponent(s1.json.meta.lastUpdated)}`);
    const sysIds = (sys.json.entry || []).map((e) => e.resource && e.resource.id);
    assert.deepEqual(sysIds, [s2.json.id, s1.json.id], `_since=${s1.json.meta.lastUpdated} on /_history`);
    const inst = await a.get(`/Patient/${pid}/_history?_since=${encodeURIComponent(since)}`);
    assertStatus(inst, 200);
    assert.equal((inst.json.entry || []).length, 0, 'instance history _since after its last change');
  });

  it('update_create = false: PUT of a new id is refused and creates nothing', async () => {
    const r = await a.put('/Patient/no-create', { resourceType: 'Patient', id: 'no-create' });
    assert.ok(r.status >= 400 && r.status < 500, `PUT new id with update_create=false: ${describeRes(r)}`);
    assert.equal(r.json && r.json.resourceType, 'OperationOutcome');
    assertStatus(await a.get('/Patient/no-create'), 404, 'resource created despite update_create=false');
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv);
  });
});
