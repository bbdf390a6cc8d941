// Transactions and batches (POST /), conditional create / update / delete,
// conditional references, JSON Patch, and a Synthea-style import.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  startServer, stopAndClean, diagnose, client, mintToken, randomId, tempRoot, sqlite,
  assertOutcome, assertStatus, assertFhirJson, assertAllResponses, describeRes,
} from './lib.mjs';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const XHTML = 'http://www.w3.org/1999/xhtml';
const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;

// ---------------------------------------------------------------------------
// Bundle builders

const urn = () => `urn:uuid:${crypto.randomUUID()}`;
const tx = (entry) => ({ resourceType: 'Bundle', type: 'transaction', entry });
const batch = (entry) => ({ resourceType: 'Bundle', type: 'batch', entry });

/** One Bundle entry: ent('POST', 'Patient', { resource, fullUrl, ifNoneExist, ifMatch }). */
function ent(method, url, { resource, fullUrl, ifNoneExist, ifMatch } = {}) {
  const e = {};
  if (fullUrl) e.fullUrl = fullUrl;
  if (resource) e.resource = resource;
  e.request = { method, url };
  if (ifNoneExist) e.request.ifNoneExist = ifNoneExist;
  if (ifMatch) e.request.ifMatch = ifMatch;
  return e;
}

const patient = (extra = {}) => ({ resourceType: 'Patient', ...extra });
const ident = (system, value) => ({ identifier: [{ system, value }] });
const obs = (subjectRef, extra = {}) => ({
  resourceType: 'Observation',
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }], text: 'Heart rate' },
  ...(subjectRef ? { subject: { reference: subjectRef } } : {}),
  ...extra,
});
const encounter = (subjectRef, extra = {}) => ({
  resourceType: 'Encounter',
  status: 'finished',
  class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB', display: 'ambulatory' },
  subject: { reference: subjectRef },
  ...extra,
});

/** "Type/id/_history/v" of a transaction-response entry -> { type, id, version, ref }. */
function loc(entry, what = '') {
  const l = entry && entry.response && entry.response.location;
  const m = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})\/_history\/(\d+)$/.exec(l || '');
  assert.ok(m, `${what}: response.location ${JSON.stringify(l)} is not Type/id/_history/v; entry ${JSON.stringify(entry)}`);
  return { type: m[1], id: m[2], version: Number(m[3]), ref: `${m[1]}/${m[2]}` };
}

/** Every value of a `reference` member anywhere in v. */
function referencesIn(v, out = []) {
  if (Array.isArray(v)) {
    for (const x of v) referencesIn(x, out);
  } else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (k === 'reference' && typeof x === 'string') out.push(x);
      else referencesIn(x, out);
    }
  }
  return out;
}

function assertTxResponse(r, n, what) {
  assertStatus(r, 200, what);
  assertFhirJson(r, what);
  assert.equal(r.json.resourceType, 'Bundle', `${what}: ${describeRes(r)}`);
  assert.equal(r.json.type, 'transaction-response', `${what}: ${describeRes(r)}`);
  assert.equal((r.json.entry || []).length, n, `${what}: entry count; ${describeRes(r)}`);
  return r.json.entry;
}

function assertDiagnostics(r, prefix, what) {
  const d = (r.json && r.json.issue && r.json.issue[0] && r.json.issue[0].diagnostics) || '';
  assert.ok(d.startsWith(prefix), `${what}: diagnostics should start with ${JSON.stringify(prefix)}; ${describeRes(r)}`);
}

// ---------------------------------------------------------------------------

describe('transactions, batches, conditional writes and patch', { timeout: 55000 }, () => {
  let srv;
  let c; // user/*.cruds
  let DB;
  before(async () => {
    srv = await startServer({ name: 'transaction' });
    c = client(srv, mintToken(srv, { sub: 'tx-admin', scope: 'user/*.cruds' }));
    DB = `${srv.dataDir}/db/fhir.db`;
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  const versionRows = () => Number(sqlite(DB, 'SELECT count(*) FROM resource_versions;').trim());

  /** total of a search (`_summary=count`). */
  async function total(query, cl = c) {
    const r = await cl.get(`/${query}${query.includes('?') ? '&' : '?'}_summary=count`);
    assertStatus(r, 200, `count ${query}`);
    assert.equal(typeof r.json.total, 'number', `no total for ${query}: ${describeRes(r)}`);
    return r.json.total;
  }

  async function read(ref) {
    const r = await c.get(`/${ref}`);
    assertStatus(r, 200, `GET ${ref}`);
    return r.json;
  }

  // -------------------------------------------------------------------------
  describe('transaction happy path', () => {
    it('urn:uuid fullUrls are replaced in references (nested too) and in narrative hrefs; entries answered in order', async () => {
      const P = urn(); const E = urn(); const D = urn(); const O1 = urn(); const O2 = urn(); const O3 = urn();
      const mrn = randomId('mrn-');
      const div = `<div xmlns="${XHTML}"><a href="${P}">self</a> <a href='${E}'>visit</a></div>`;
      const bundle = tx([
        ent('POST', 'Patient', { fullUrl: P, resource: patient({ text: { status: 'generated', div }, ...ident('http://tx.example/mrn', mrn) }) }),
        ent('POST', 'Encounter', { fullUrl: E, resource: encounter(P, { participant: [{ individual: { reference: D } }] }) }),
        ent('POST', 'Observation', { fullUrl: O1, resource: obs(P, { encounter: { reference: E } }) }),
        ent('POST', 'Observation', { fullUrl: O2, resource: obs(P, { encounter: { reference: E }, hasMember: [{ reference: O1 }, { reference: O3 }] }) }),
        ent('POST', 'Observation', { fullUrl: O3, resource: obs(P, { encounter: { reference: E }, derivedFrom: [{ reference: O1 }], performer: [{ reference: D }] }) }),
        ent('POST', 'Practitioner', { fullUrl: D, resource: { resourceType: 'Practitioner', name: [{ family: 'Tx' }] } }),
      ]);
      const r = await c.post('/', bundle);
      const entries = assertTxResponse(r, 6, 'happy transaction');
      const types = ['Patient', 'Encounter', 'Observation', 'Observation', 'Observation', 'Practitioner'];
      const got = entries.map((e, i) => {
        assert.equal(e.response.status, '201 Created', `entry ${i} status: ${JSON.stringify(e)}`);
        const l = loc(e, `entry ${i}`);
        assert.equal(l.type, types[i], `entry ${i} answered out of order: ${JSON.stringify(e)}`);
        assert.equal(l.version, 1);
        assert.equal(e.response.etag, 'W/"1"', `entry ${i} etag`);
        assert.ok(e.response.lastModified && !Number.isNaN(Date.parse(e.response.lastModified)), `entry ${i} lastModified: ${JSON.stringify(e)}`);
        if (e.fullUrl) assert.ok(e.fullUrl.endsWith(`/${l.ref}`), `entry ${i} fullUrl ${e.fullUrl}`);
        return l;
      });
      const [p, e, o1, o2, o3, d] = got;
      assert.equal(new Set(got.map((x) => x.id)).size, 6, 'ids not distinct');
      for (const x of got) assert.match(x.id, ID_RE);

      const pat = await read(p.ref);
      assert.equal(pat.meta.lastUpdated, entries[0].response.lastModified, 'lastModified differs from meta.lastUpdated');
      assert.equal(pat.text.div, `<div xmlns="${XHTML}"><a href="${p.ref}">self</a> <a href='${e.ref}'>visit</a></div>`, 'narrative hrefs not resolved');
      const enc = await read(e.ref);
      assert.equal(enc.subject.reference, p.ref);
      assert.equal(enc.participant[0].individual.reference, d.ref, 'Encounter.participant.individual');
      const r1 = await read(o1.ref);
      assert.deepEqual([r1.subject.reference, r1.encounter.reference], [p.ref, e.ref]);
      const r2 = await read(o2.ref);
      assert.deepEqual(r2.hasMember.map((x) => x.reference), [o1.ref, o3.ref], 'Observation.hasMember');
      const r3 = await read(o3.ref);
      assert.deepEqual(r3.derivedFrom.map((x) => x.reference), [o1.ref], 'Observation.derivedFrom');
      assert.deepEqual(r3.performer.map((x) => x.reference), [d.ref], 'Observation.performer');
      for (const res of [pat, enc, r1, r2, r3]) {
        assert.ok(!JSON.stringify(res).includes('urn:uuid:'), `urn:uuid left in ${res.resourceType}/${res.id}: ${JSON.stringify(res)}`);
      }
      const s = await c.get(`/Observation?subject=${p.ref}&_total=accurate`);
      assertStatus(s, 200);
      assert.equal(s.json.total, 3, `Observation?subject=${p.ref}: ${s.text.slice(0, 500)}`);
      assert.deepEqual((s.json.entry || []).map((x) => x.resource.id).sort(), [o1.id, o2.id, o3.id].sort());
      assert.equal(await total(`Observation?encounter=${e.ref}`), 3, 'search by the resolved encounter reference');
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 1);
    });

    it('an empty transaction -> transaction-response without entries', async () => {
      const r = await c.post('/', tx([]));
      assertStatus(r, 200, 'empty transaction');
      assert.equal(r.json.type, 'transaction-response');
      assert.equal((r.json.entry || []).length, 0);
    });

    it('PUT by id (create and update) and GET entries; GETs run after the writes', async () => {
      const id = randomId('txput-');
      const mrn = randomId('m-');
      const first = await c.post('/', tx([
        ent('GET', `Patient?identifier=http://tx.example/mrn|${mrn}`),
        ent('PUT', `Patient/${id}`, { fullUrl: urn(), resource: patient({ id, ...ident('http://tx.example/mrn', mrn) }) }),
      ]));
      const [g, w] = assertTxResponse(first, 2, 'PUT create + GET');
      assert.equal(w.response.status, '201 Created', JSON.stringify(w));
      assert.deepEqual(loc(w), { type: 'Patient', id, version: 1, ref: `Patient/${id}` });
      assert.ok(String(g.response.status).startsWith('200'), `GET entry: ${JSON.stringify(g)}`);
      assert.equal(g.resource && g.resource.resourceType, 'Bundle', `GET entry has no searchset: ${JSON.stringify(g)}`);
      assert.deepEqual((g.resource.entry || []).map((x) => x.resource.id), [id], 'the search in the transaction ran before the PUT');
      const second = await c.post('/', tx([
        ent('PUT', `Patient/${id}`, { resource: patient({ id, active: true, ...ident('http://tx.example/mrn', mrn) }), ifMatch: 'W/"1"' }),
        ent('GET', `Patient/${id}`),
      ]));
      const [w2, g2] = assertTxResponse(second, 2, 'PUT update + GET');
      assert.equal(w2.response.status, '200 OK', JSON.stringify(w2));
      assert.equal(loc(w2).version, 2);
      assert.equal(w2.response.etag, 'W/"2"');
      assert.equal(g2.resource && g2.resource.meta.versionId, '2', `GET entry: ${JSON.stringify(g2)}`);
      assert.equal(g2.resource.active, true);
    });
  });

  // -------------------------------------------------------------------------
  describe('atomicity', () => {
    const invalid = {
      'Observation without status': () => ({ resourceType: 'Observation', code: { text: 'x' } }),
      'Observation with status "bogus"': (p) => obs(p, { status: 'bogus' }),
      'Observation with an unknown element': (p) => obs(p, { notAnElement: true }),
    };
    for (const [name, make] of Object.entries(invalid)) {
      it(`5 valid entries + 1 invalid (${name}) -> 422 naming the entry, nothing written`, async () => {
        const mrn = randomId('atom-');
        const P = urn();
        const putId = randomId('atom-put-');
        const rows = versionRows();
        const obsBefore = await total('Observation');
        const r = await c.post('/', tx([
          ent('POST', 'Patient', { fullUrl: P, resource: patient(ident('http://tx.example/mrn', mrn)) }),
          ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P) }),
          ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P) }),
          ent('POST', 'Encounter', { fullUrl: urn(), resource: encounter(P) }),
          ent('PUT', `Patient/${putId}`, { resource: patient({ id: putId }) }),
          ent('POST', 'Observation', { fullUrl: urn(), resource: make(P) }),
        ]));
        assertOutcome(r, 422, null, null, `transaction with ${name}`);
        assertDiagnostics(r, 'entry 5', name);
        assert.equal(versionRows(), rows, 'resource_versions rows were added by a failed transaction');
        assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 0, 'the Patient of a failed transaction exists');
        assert.equal(await total('Observation'), obsBefore, 'Observations of a failed transaction exist');
        assertStatus(await c.get(`/Patient/${putId}`), 404, 'the PUT of a failed transaction was applied');
      });
    }

    it('a failure inside the store (stale ifMatch on the last PUT) rolls back the DELETE and POSTs already applied', async () => {
      const x = randomId('atx-');
      const y = randomId('aty-');
      assertStatus(await c.put(`/Patient/${x}`, patient({ id: x })), 201);
      assertStatus(await c.put(`/Patient/${y}`, patient({ id: y })), 201);
      const rows = versionRows();
      const r = await c.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient/${x}`) }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient/${x}`) }),
        ent('DELETE', `Patient/${y}`),
        ent('PUT', `Patient/${x}`, { resource: patient({ id: x, active: false }), ifMatch: 'W/"9"' }),
      ]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'stale ifMatch in a transaction');
      assertDiagnostics(r, 'entry 3: ', 'stale ifMatch');
      assert.match(r.json.issue[0].diagnostics, /W\/"1"/, 'diagnostics should name the current version');
      assert.equal(versionRows(), rows, 'a rolled-back transaction left rows behind');
      assert.equal((await read(`Patient/${y}`)).meta.versionId, '1', 'the DELETE was not rolled back');
      assert.equal((await read(`Patient/${x}`)).meta.versionId, '1');
      assert.equal(await total(`Observation?subject=Patient/${x}`), 0, 'the POSTs were not rolled back');
    });

    it('ifMatch that is not W/"n" -> 400; ifMatch on an absent resource -> 412', async () => {
      const x = randomId('im-');
      assertStatus(await c.put(`/Patient/${x}`, patient({ id: x })), 201);
      const bad = await c.post('/', tx([ent('PUT', `Patient/${x}`, { resource: patient({ id: x }), ifMatch: 'banana' })]));
      assertOutcome(bad, 400, 'invalid', 'invalid_request', 'ifMatch banana');
      const absent = randomId('absent-');
      const r = await c.post('/', tx([ent('PUT', `Patient/${absent}`, { resource: patient({ id: absent }), ifMatch: 'W/"1"' })]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'ifMatch on an absent resource');
      assertStatus(await c.get(`/Patient/${absent}`), 404);
    });

    it('stale ifMatch on a DELETE -> 412 and the resource survives', async () => {
      const x = randomId('imd-');
      assertStatus(await c.put(`/Patient/${x}`, patient({ id: x })), 201);
      assertStatus(await c.put(`/Patient/${x}`, patient({ id: x, active: true })), 200);
      const r = await c.post('/', tx([ent('DELETE', `Patient/${x}`, { ifMatch: 'W/"1"' })]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'stale ifMatch on DELETE');
      assert.equal((await read(`Patient/${x}`)).meta.versionId, '2');
      const ok = await c.post('/', tx([ent('DELETE', `Patient/${x}`, { ifMatch: 'W/"2"' })]));
      const [d] = assertTxResponse(ok, 1, 'DELETE with current ifMatch');
      assert.equal(d.response.status, '204 No Content', JSON.stringify(d));
      assertStatus(await c.get(`/Patient/${x}`), 410);
    });
  });

  // -------------------------------------------------------------------------
  describe('conditional create and conditional references', () => {
    it('ifNoneExist run twice: no duplicate; references to its fullUrl point at the existing resource', async () => {
      const mrn = randomId('cc-');
      const make = () => {
        const P = urn();
        return tx([
          ent('POST', 'Patient', { fullUrl: P, resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: `identifier=http://tx.example/mrn|${mrn}` }),
          ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P) }),
        ]);
      };
      const [p1, o1] = assertTxResponse(await c.post('/', make()), 2, 'first run');
      assert.equal(p1.response.status, '201 Created', JSON.stringify(p1));
      const pid = loc(p1).id;
      const rows = versionRows();
      const [p2, o2] = assertTxResponse(await c.post('/', make()), 2, 'second run');
      assert.equal(p2.response.status, '200 OK', `matched conditional create: ${JSON.stringify(p2)}`);
      assert.deepEqual(loc(p2), { type: 'Patient', id: pid, version: 1, ref: `Patient/${pid}` }, 'the match is not the first Patient');
      assert.equal(p2.response.etag, 'W/"1"');
      assert.equal(o2.response.status, '201 Created');
      assert.equal(versionRows(), rows + 1, 'the second run should write exactly one row (the Observation)');
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 1, 'duplicate Patient');
      for (const o of [o1, o2]) {
        assert.equal((await read(loc(o).ref)).subject.reference, `Patient/${pid}`, 'reference to the conditional create fullUrl');
      }
      assert.equal(await total(`Observation?subject=Patient/${pid}`), 2);
      // The full-URL form of the condition is accepted too.
      const [p3] = assertTxResponse(await c.post('/', tx([
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: `Patient?identifier=http://tx.example/mrn|${mrn}` }),
      ])), 1, 'ifNoneExist with Patient?...');
      assert.equal(loc(p3).id, pid);
    });

    it('ifNoneExist matching two resources -> 412 and nothing written', async () => {
      const mrn = randomId('cc2-');
      for (let i = 0; i < 2; i++) assertStatus(await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn))), 201);
      const rows = versionRows();
      const r = await c.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(null) }),
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: `identifier=http://tx.example/mrn|${mrn}` }),
      ]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'ifNoneExist with 2 matches');
      assertDiagnostics(r, 'entry 1: ', 'ifNoneExist with 2 matches');
      assert.equal(versionRows(), rows);
    });

    it('a conditional reference to a Practitioner by identifier is resolved', async () => {
      const npi = randomId('npi-');
      const pr = await c.post('/Practitioner', { resourceType: 'Practitioner', ...ident('http://hl7.org/fhir/sid/us-npi', npi) });
      assertStatus(pr, 201);
      const P = urn();
      const cond = `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|${npi}`;
      const [p, e, o] = assertTxResponse(await c.post('/', tx([
        ent('POST', 'Patient', { fullUrl: P, resource: patient({ generalPractitioner: [{ reference: cond }] }) }),
        ent('POST', 'Encounter', { fullUrl: urn(), resource: encounter(P, { participant: [{ individual: { reference: cond } }] }) }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P, { performer: [{ reference: cond }] }) }),
      ])), 3, 'conditional references');
      const want = `Practitioner/${pr.json.id}`;
      assert.equal((await read(loc(p).ref)).generalPractitioner[0].reference, want);
      assert.equal((await read(loc(e).ref)).participant[0].individual.reference, want);
      assert.equal((await read(loc(o).ref)).performer[0].reference, want);
      assert.equal(await total(`Observation?performer=${want}`), 1, 'the resolved reference is indexed');
    });

    it('a conditional reference matching zero or two resources -> 412 and nothing written', async () => {
      const npi = randomId('npi2-');
      for (let i = 0; i < 2; i++) {
        assertStatus(await c.post('/Practitioner', { resourceType: 'Practitioner', ...ident('http://hl7.org/fhir/sid/us-npi', npi) }), 201);
      }
      for (const [label, ref] of [
        ['zero', `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|${randomId('none-')}`],
        ['two', `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|${npi}`],
      ]) {
        const rows = versionRows();
        const P = urn();
        const mrn = randomId('cr-');
        const r = await c.post('/', tx([
          ent('POST', 'Patient', { fullUrl: P, resource: patient(ident('http://tx.example/mrn', mrn)) }),
          ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P, { performer: [{ reference: ref }] }) }),
        ]));
        assertOutcome(r, 412, 'conflict', 'precondition_failed', `conditional reference matching ${label}`);
        assertDiagnostics(r, 'entry 1: ', `conditional reference matching ${label}`);
        assert.match(r.json.issue[0].diagnostics, /conditional reference/, describeRes(r));
        assert.equal(versionRows(), rows, `${label}: rows written`);
        assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 0, `${label}: Patient written`);
      }
    });

    it('two identical ifNoneExist entries in one bundle: references to either fullUrl point at the one resource', {
    }, async () => {
      const mrn = randomId('dupine-');
      const U1 = urn(); const U2 = urn();
      const ine = `identifier=http://tx.example/mrn|${mrn}`;
      const [p1, p2, o] = assertTxResponse(await c.post('/', tx([
        ent('POST', 'Patient', { fullUrl: U1, resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: ine }),
        ent('POST', 'Patient', { fullUrl: U2, resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: ine }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(U2) }),
      ])), 3, 'duplicate ifNoneExist');
      assert.equal(loc(p1).id, loc(p2).id, 'two Patients for one ifNoneExist');
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 1);
      const subject = (await read(loc(o).ref)).subject.reference;
      assert.equal(subject, loc(p1).ref, 'the reference to the second fullUrl');
      assertStatus(await c.get(`/${subject}`), 200, 'the referenced Patient does not exist');
    });

    it('a conditional reference to an unknown type -> 400', async () => {
      const r = await c.post('/', tx([ent('POST', 'Observation', { fullUrl: urn(), resource: obs('Bogus?identifier=a|b') })]));
      assertOutcome(r, 400, 'invalid', null, 'Bogus?identifier=...');
      assertDiagnostics(r, 'entry 0: ', 'unknown type');
    });
  });

  // -------------------------------------------------------------------------
  describe('conditional update and delete in a transaction; processing order', () => {
    it('PUT Type?query: 0 matches -> 201, 1 match -> 200 (same id, version 2), 2 matches -> 412', async () => {
      const mrn = randomId('cu-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const [a] = assertTxResponse(await c.post('/', tx([ent('PUT', q, { resource: patient({ ...ident('http://tx.example/mrn', mrn), active: true }) })])), 1, 'conditional update, no match');
      assert.equal(a.response.status, '201 Created', JSON.stringify(a));
      const id = loc(a).id;
      const [b] = assertTxResponse(await c.post('/', tx([ent('PUT', q, { resource: patient({ ...ident('http://tx.example/mrn', mrn), active: false }) })])), 1, 'conditional update, one match');
      assert.equal(b.response.status, '200 OK', JSON.stringify(b));
      assert.deepEqual(loc(b), { type: 'Patient', id, version: 2, ref: `Patient/${id}` });
      const cur = await read(`Patient/${id}`);
      assert.equal(cur.active, false);
      assert.equal(await total(q), 1);
      assert.equal(await total(`Patient?_id=${id}&identifier=http://tx.example/mrn|${mrn}`), 1, 'conditionally updated resource not found by _id');
      assertStatus(await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn))), 201);
      const rows = versionRows();
      const r = await c.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(null) }),
        ent('PUT', q, { resource: patient(ident('http://tx.example/mrn', mrn)) }),
      ]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'conditional update, two matches');
      assertDiagnostics(r, 'entry 1: ', 'conditional update, two matches');
      assert.equal(versionRows(), rows);
    });

    it('a reference to the fullUrl of a conditional update points at the matched resource', {
    }, async () => {
      const mrn = randomId('cuf-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const existing = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(existing, 201);
      const P = urn();
      const [p, o] = assertTxResponse(await c.post('/', tx([
        ent('PUT', q, { fullUrl: P, resource: patient({ ...ident('http://tx.example/mrn', mrn), active: true }) }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P) }),
      ])), 2, 'conditional update + reference to it');
      assert.equal(loc(p).id, existing.json.id, JSON.stringify(p));
      assert.equal((await read(loc(o).ref)).subject.reference, `Patient/${existing.json.id}`,
        'the reference names an id that was never written (the one assigned before the condition matched)');
    });

    it('DELETE Type?query deletes the match (204); 0 matches -> 204; 2 matches -> 412', async () => {
      const mrn = randomId('cd-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const p = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(p, 201);
      const [d] = assertTxResponse(await c.post('/', tx([ent('DELETE', q)])), 1, 'conditional delete');
      assert.equal(d.response.status, '204 No Content', JSON.stringify(d));
      assertOutcome(await c.get(`/Patient/${p.json.id}`), 410, 'deleted', 'gone', 'after conditional delete');
      assert.equal(await total(q), 0);
      const [none] = assertTxResponse(await c.post('/', tx([ent('DELETE', q)])), 1, 'conditional delete, no match');
      assert.equal(none.response.status, '204 No Content', JSON.stringify(none));
      for (let i = 0; i < 2; i++) assertStatus(await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn))), 201);
      const rows = versionRows();
      const r = await c.post('/', tx([ent('DELETE', q)]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'conditional delete, two matches');
      assert.equal(versionRows(), rows);
      assert.equal(await total(q), 2);
    });

    it('DELETE is processed before POST: delete X and create Y with the same identifier in one bundle', async () => {
      const mrn = randomId('ord-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const x = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(x, 201);
      // Listed POST first: were it applied first, the DELETE's condition would match two.
      const [y, d] = assertTxResponse(await c.post('/', tx([
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient({ ...ident('http://tx.example/mrn', mrn), active: true }) }),
        ent('DELETE', q),
      ])), 2, 'POST + conditional DELETE');
      assert.equal(y.response.status, '201 Created', 'entries answered in request order');
      assert.equal(d.response.status, '204 No Content', 'entries answered in request order');
      assertStatus(await c.get(`/Patient/${x.json.id}`), 410, 'X was not deleted');
      const yr = await read(loc(y).ref);
      assert.equal(yr.active, true);
      assert.equal(await total(q), 1);
    });

    it('PUT Type?query in a transaction whose body id is not the match\'s -> 400 id_mismatch', {
    }, async () => {
      const mrn = randomId('cui-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const p = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(p, 201);
      const r = await c.post('/', tx([ent('PUT', q, { resource: patient({ id: 'not-the-match', ...ident('http://tx.example/mrn', mrn) }) })]));
      assertOutcome(r, 400, 'invalid', 'id_mismatch', 'conditional update with another id in a transaction');
      assertDiagnostics(r, 'entry 0: ', 'id mismatch');
      assert.equal((await read(`Patient/${p.json.id}`)).meta.versionId, '1');
    });

    it('two conditional updates resolving to the same resource -> 400 (identities overlap)', async () => {
      const mrn = randomId('dupc-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const p = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(p, 201);
      const r = await c.post('/', tx([
        ent('PUT', q, { resource: patient({ ...ident('http://tx.example/mrn', mrn), active: true }) }),
        ent('PUT', `${q}&_id=${p.json.id}`, { resource: patient({ ...ident('http://tx.example/mrn', mrn), active: false }) }),
      ]));
      assertOutcome(r, 400, 'invalid', 'invalid_request', 'two conditional updates of one resource');
      assert.equal((await read(`Patient/${p.json.id}`)).meta.versionId, '1');
    });

    it('a conditional update and a PUT by id of the same resource -> 400', async () => {
      const mrn = randomId('dupd-');
      const q = `Patient?identifier=http://tx.example/mrn|${mrn}`;
      const p = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(p, 201);
      const r = await c.post('/', tx([
        ent('PUT', q, { resource: patient({ ...ident('http://tx.example/mrn', mrn), active: true }) }),
        ent('PUT', `Patient/${p.json.id}`, { resource: patient({ id: p.json.id, ...ident('http://tx.example/mrn', mrn), active: false }) }),
      ]));
      assertOutcome(r, 400, 'invalid', 'invalid_request', 'conditional update + update by id');
      assert.equal((await read(`Patient/${p.json.id}`)).meta.versionId, '1');
    });
  });

  // -------------------------------------------------------------------------
  describe('malformed transactions -> 400, nothing written', () => {
    const cases = {
      'two entries writing the same resource': () => {
        const id = randomId('dup-');
        return [tx([
          ent('PUT', `Patient/${id}`, { resource: patient({ id }) }),
          ent('PUT', `Patient/${id}`, { resource: patient({ id, active: true }) }),
        ]), 'invalid_request', /two entries write Patient\//];
      },
      'DELETE and PUT of the same resource': () => {
        const id = randomId('dup2-');
        return [tx([
          ent('DELETE', `Patient/${id}`),
          ent('PUT', `Patient/${id}`, { resource: patient({ id }) }),
        ]), 'invalid_request', /two entries write/];
      },
      'a fullUrl used twice': () => {
        const U = urn();
        return [tx([
          ent('POST', 'Patient', { fullUrl: U, resource: patient() }),
          ent('POST', 'Patient', { fullUrl: U, resource: patient() }),
        ]), 'invalid_request', /used twice/];
      },
      'a POST entry without a resource': () => [tx([
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient() }),
        ent('POST', 'Patient', { fullUrl: urn() }),
      ]), 'invalid_request', /^entry 1: /],
      'a PUT entry without a resource': () => [tx([ent('PUT', `Patient/${randomId('nr-')}`)]), 'invalid_request', /^entry 0: /],
      'resourceType differs from the url': () => [tx([
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient() }),
        ent('POST', 'Patient', { fullUrl: urn(), resource: obs(null) }),
      ]), 'resource_type_mismatch', /^entry 1: /],
      'PUT body id differs from the url id': () => [tx([
        ent('PUT', `Patient/${randomId('u-')}`, { resource: patient({ id: 'another-id' }) }),
      ]), 'id_mismatch', /^entry 0: /],
      'POST with a query in the url': () => [tx([ent('POST', 'Patient?identifier=a|b', { resource: patient() })]), 'invalid_request', /^entry 0: /],
      'request.method PATCHY': () => [tx([{ resource: patient(), request: { method: 'PATCHY', url: 'Patient' } }]), 'invalid_request', /^entry 0: /],
      'request.url missing': () => [tx([{ resource: patient(), request: { method: 'POST' } }]), 'invalid_request', /^entry 0: /],
      'request missing': () => [tx([{ resource: patient() }]), 'invalid_request', /^entry 0: /],
      'entry not an object': () => [tx([42]), 'invalid_request', /^entry 0: /],
      'entry not an array': () => [{ resourceType: 'Bundle', type: 'transaction', entry: { request: {} } }, ['invalid_resource', 'invalid_request'], null],
    };
    for (const [name, make] of Object.entries(cases)) {
      it(name, async () => {
        const [bundle, code, diag] = make();
        const rows = versionRows();
        const r = await c.post('/', bundle);
        assertOutcome(r, 400, 'invalid', code, name);
        if (diag) assert.match(r.json.issue[0].diagnostics || '', diag, describeRes(r));
        assert.equal(versionRows(), rows, 'rows written');
      });
    }

    it('PATCH inside a transaction -> 501 not_implemented', async () => {
      const p = await c.post('/Patient', patient());
      const r = await c.post('/', tx([ent('PATCH', `Patient/${p.json.id}`, {
        resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify([{ op: 'add', path: '/active', value: true }])).toString('base64') },
      })]));
      assertOutcome(r, 501, 'not-supported', 'not_implemented', 'PATCH in a transaction');
      assertDiagnostics(r, 'entry 0: ', 'PATCH in a transaction');
    });
  });

  // -------------------------------------------------------------------------
  describe('authorization in transactions', () => {
    let P; let Q;
    before(async () => {
      P = randomId('authp-');
      Q = randomId('authq-');
      assertStatus(await c.put(`/Patient/${P}`, patient({ id: P, ...ident('http://tx.example/mrn', `${P}-mrn`) })), 201);
      assertStatus(await c.put(`/Patient/${Q}`, patient({ id: Q, ...ident('http://tx.example/mrn', `${Q}-mrn`) })), 201);
    });

    it('patient/*.cruds for P: an Observation for Q -> 403, nothing written (not even the one for P)', async () => {
      const pt = client(srv, mintToken(srv, { sub: 'tx-pat', scope: 'patient/*.cruds', patient: P }));
      const rows = versionRows();
      const r = await pt.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient/${P}`) }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient/${Q}`) }),
      ]));
      assertOutcome(r, 403, 'forbidden', 'forbidden', 'Observation for Q with a P token');
      assertDiagnostics(r, 'entry 1: ', 'Observation for Q');
      assert.equal(versionRows(), rows);
      assert.equal(await total(`Observation?subject=Patient/${P}`), 0);
      assert.equal(await total(`Observation?subject=Patient/${Q}`), 0);

      const ok = await pt.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient/${P}`) }),
        ent('PUT', `Patient/${P}`, { resource: patient({ id: P, active: true, ...ident('http://tx.example/mrn', `${P}-mrn`) }) }),
      ]));
      const [o, p] = assertTxResponse(ok, 2, 'Observation for P with a P token');
      assert.equal(o.response.status, '201 Created');
      assert.equal(p.response.status, '200 OK');
      assert.equal(await total(`Observation?subject=Patient/${P}`), 1);
    });

    it('patient/*.cruds for P: updating or deleting Q -> refused, Q unchanged', async () => {
      const pt = client(srv, mintToken(srv, { sub: 'tx-pat2', scope: 'patient/*.cruds', patient: P }));
      const put = await pt.post('/', tx([ent('PUT', `Patient/${Q}`, { resource: patient({ id: Q, active: false }) })]));
      assert.ok([403, 404].includes(put.status), `PUT Patient/Q with a P token: ${describeRes(put)}`);
      const del = await pt.post('/', tx([ent('DELETE', `Patient/${Q}`)]));
      assert.ok([403, 404].includes(del.status), `DELETE Patient/Q with a P token: ${describeRes(del)}`);
      assert.equal((await read(`Patient/${Q}`)).meta.versionId, '1');
    });

    it("patient/*.cruds for P: a conditional reference to Q's identifier does not resolve (412)", async () => {
      const pt = client(srv, mintToken(srv, { sub: 'tx-pat3', scope: 'patient/*.cruds', patient: P }));
      const r = await pt.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient?identifier=http://tx.example/mrn|${Q}-mrn`) }),
      ]));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', "conditional reference to Q's identifier with a P token");
      assert.ok(!r.text.includes(`Patient/${Q}`), `the response names Q: ${r.text}`);
      assert.equal(await total(`Observation?subject=Patient/${Q}`), 0);
      const own = await pt.post('/', tx([
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(`Patient?identifier=http://tx.example/mrn|${P}-mrn`) }),
      ]));
      const [o] = assertTxResponse(own, 1, "conditional reference to P's own identifier");
      assert.equal((await read(loc(o).ref)).subject.reference, `Patient/${P}`);
    });

    it('system/Patient.cruds: a transaction posting an Observation -> 403 insufficient_scope; Patients only -> 200', async () => {
      const sys = client(srv, mintToken(srv, { sub: 'tx-sys', scope: 'system/Patient.cruds' }));
      const mrn = randomId('sys-');
      const rows = versionRows();
      const r = await sys.post('/', tx([
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient(ident('http://tx.example/mrn', mrn)) }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(null) }),
      ]));
      assertOutcome(r, 403, 'forbidden', 'insufficient_scope', 'Observation with system/Patient.cruds');
      assertDiagnostics(r, 'entry 1: ', 'insufficient scope');
      assert.equal(versionRows(), rows);
      const ok = await sys.post('/', tx([ent('POST', 'Patient', { fullUrl: urn(), resource: patient(ident('http://tx.example/mrn', mrn)) })]));
      assertTxResponse(ok, 1, 'Patient with system/Patient.cruds');
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 1);
    });

    it('a read-only token cannot write through a transaction', async () => {
      const ro = client(srv, mintToken(srv, { sub: 'tx-ro', scope: 'user/*.rs' }));
      const r = await ro.post('/', tx([ent('POST', 'Patient', { fullUrl: urn(), resource: patient() })]));
      assertOutcome(r, 403, 'forbidden', 'insufficient_scope', 'create with user/*.rs');
    });
  });

  // -------------------------------------------------------------------------
  describe('batch', () => {
    it('3 entries, the middle invalid -> 201, 422 with outcome, 201; the valid ones exist', async () => {
      const mrn = randomId('b-');
      const rows = versionRows();
      const r = await c.post('/', batch([
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient(ident('http://tx.example/mrn', mrn)) }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: { resourceType: 'Observation', code: { text: 'no status' } } }),
        ent('POST', 'Patient', { fullUrl: urn(), resource: patient(ident('http://tx.example/mrn', mrn)) }),
      ]));
      assertStatus(r, 200, 'batch');
      assertFhirJson(r, 'batch');
      assert.equal(r.json.type, 'batch-response');
      const [a, b, d] = r.json.entry;
      assert.equal(r.json.entry.length, 3);
      assert.equal(a.response.status, '201', JSON.stringify(a));
      assert.equal(d.response.status, '201', JSON.stringify(d));
      assert.equal(b.response.status, '422', JSON.stringify(b));
      assert.equal(b.response.outcome && b.response.outcome.resourceType, 'OperationOutcome', JSON.stringify(b));
      assert.equal(b.response.outcome.issue[0].severity, 'error');
      assert.equal(b.resource, undefined);
      for (const e of [a, d]) {
        assert.match(e.response.location || '', /Patient\/[A-Za-z0-9\-.]+\/_history\/1$/, JSON.stringify(e));
        assert.equal(e.response.etag, 'W/"1"');
        const id = /Patient\/([^/]+)\/_history/.exec(e.response.location)[1];
        assertStatus(await c.get(`/Patient/${id}`), 200, `batch-created Patient/${id}`);
      }
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 2);
      assert.equal(versionRows(), rows + 2);
    });

    it('batch-response lastModified is a FHIR instant (not an HTTP date)', {
    }, async () => {
      const r = await c.post('/', batch([ent('POST', 'Patient', { resource: patient() })]));
      assertStatus(r, 200);
      const lm = r.json.entry[0].response.lastModified;
      assert.match(lm || '', /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/, `lastModified ${lm}`);
      const id = /Patient\/([^/]+)\/_history/.exec(r.json.entry[0].response.location)[1];
      assert.equal(lm, (await read(`Patient/${id}`)).meta.lastUpdated);
    });

    it('GET entries (read, search, missing) return resources or outcomes; a 403 entry does not stop the others', async () => {
      const mrn = randomId('bg-');
      const p = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(p, 201);
      const r = await c.post('/', batch([
        ent('GET', `Patient/${p.json.id}`),
        ent('GET', `Patient?identifier=http://tx.example/mrn|${mrn}`),
        ent('GET', 'Patient/no-such-patient'),
        ent('GET', 'Foo/1'),
      ]));
      assertStatus(r, 200);
      const [read1, search, missing, unknown] = r.json.entry;
      assert.equal(read1.response.status, '200');
      assert.equal(read1.resource && read1.resource.id, p.json.id, JSON.stringify(read1));
      assert.equal(read1.response.etag, 'W/"1"');
      assert.equal(search.response.status, '200');
      assert.equal(search.resource && search.resource.type, 'searchset', JSON.stringify(search));
      assert.deepEqual(search.resource.entry.map((x) => x.resource.id), [p.json.id]);
      assert.equal(missing.response.status, '404');
      assert.equal(missing.response.outcome && missing.response.outcome.resourceType, 'OperationOutcome');
      assert.equal(unknown.response.status, '404');

      const pt = client(srv, mintToken(srv, { sub: 'b-pat', scope: 'patient/*.cruds', patient: p.json.id }));
      const r2 = await pt.post('/', batch([
        ent('POST', 'Observation', { resource: obs('Patient/someone-else') }),
        ent('POST', 'Observation', { resource: obs(`Patient/${p.json.id}`) }),
      ]));
      assertStatus(r2, 200);
      assert.equal(r2.json.entry[0].response.status, '403', JSON.stringify(r2.json.entry[0]));
      assert.equal(r2.json.entry[1].response.status, '201', JSON.stringify(r2.json.entry[1]));
    });

    it('batch entries: PUT, conditional create, DELETE and a PATCH carried as Binary', async () => {
      const id = randomId('bp-');
      const mrn = randomId('bc-');
      assertStatus(await c.put(`/Patient/${id}`, patient({ id, active: true })), 201);
      const del = await c.post('/Patient', patient());
      const patch = [{ op: 'replace', path: '/active', value: false }];
      const r = await c.post('/', batch([
        ent('PUT', `Patient/${id}`, { resource: patient({ id, active: true, gender: 'female' }) }),
        ent('POST', 'Patient', { resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: `identifier=http://tx.example/mrn|${mrn}` }),
        ent('POST', 'Patient', { resource: patient(ident('http://tx.example/mrn', mrn)), ifNoneExist: `identifier=http://tx.example/mrn|${mrn}` }),
        ent('DELETE', `Patient/${del.json.id}`),
        ent('PATCH', `Patient/${id}`, { resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from(JSON.stringify(patch)).toString('base64') } }),
      ]));
      assertStatus(r, 200);
      assert.deepEqual(r.json.entry.map((e) => e.response.status), ['200', '201', '200', '204', '200'], JSON.stringify(r.json.entry.map((e) => e.response)));
      const cur = await read(`Patient/${id}`);
      assert.equal(cur.active, false);
      assert.equal(cur.gender, 'female');
      assert.equal(cur.meta.versionId, '3');
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 1);
      assertStatus(await c.get(`/Patient/${del.json.id}`), 410);
    });

    it('a batch entry referencing another entry\'s fullUrl is refused; the others succeed', {
    }, async () => {
      const P = urn();
      const r = await c.post('/', batch([
        ent('POST', 'Patient', { fullUrl: P, resource: patient() }),
        ent('POST', 'Observation', { fullUrl: urn(), resource: obs(P) }),
      ]));
      assertStatus(r, 200);
      assert.equal(r.json.entry[0].response.status, '201');
      assert.match(r.json.entry[1].response.status, /^4\d\d/, JSON.stringify(r.json.entry[1]));
      assert.equal(r.json.entry[1].response.outcome && r.json.entry[1].response.outcome.resourceType, 'OperationOutcome');
    });
  });

  // -------------------------------------------------------------------------
  describe('single-request conditional create / update / delete', () => {
    it('POST with If-None-Exist: 201 new, then 200 with the existing one; 2 matches -> 412', async () => {
      const mrn = randomId('ine-');
      const h = { 'If-None-Exist': `identifier=http://tx.example/mrn|${mrn}` };
      const a = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)), { headers: h });
      assertStatus(a, 201, 'first conditional create');
      assert.match(a.headers.location || '', new RegExp(`/Patient/${a.json.id}/_history/1$`));
      const b = await c.post('/Patient', patient({ ...ident('http://tx.example/mrn', mrn), active: true }), { headers: h });
      assertStatus(b, 200, 'matched conditional create');
      assert.equal(b.json.id, a.json.id, 'the existing resource is returned');
      assert.equal(b.json.active, undefined, 'the existing resource was changed');
      assert.equal(b.headers.etag, 'W/"1"');
      assert.equal(await total(`Patient?identifier=http://tx.example/mrn|${mrn}`), 1);
      assertStatus(await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn))), 201);
      const rows = versionRows();
      const r = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)), { headers: h });
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'If-None-Exist with 2 matches');
      assert.equal(versionRows(), rows);
      const bad = await c.post('/Patient', patient(), { headers: { 'If-None-Exist': 'nosuchparam=1' } });
      assertOutcome(bad, 400, 'invalid', null, 'If-None-Exist with an unknown parameter');
    });

    it('PUT Type?query: 0 matches -> 201, 1 -> 200 update, >1 -> 412', async () => {
      const mrn = randomId('cpu-');
      const q = `/Patient?identifier=http://tx.example/mrn|${mrn}`;
      const a = await c.put(q, patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(a, 201, 'conditional update, no match');
      const b = await c.put(q, patient({ ...ident('http://tx.example/mrn', mrn), active: true }));
      assertStatus(b, 200, 'conditional update, one match');
      assert.equal(b.json.id, a.json.id);
      assert.equal(b.json.meta.versionId, '2');
      assert.equal(b.headers.etag, 'W/"2"');
      assertStatus(await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn))), 201);
      const r = await c.put(q, patient(ident('http://tx.example/mrn', mrn)));
      assertOutcome(r, 412, 'conflict', 'precondition_failed', 'conditional update, two matches');
      assert.equal((await read(`Patient/${a.json.id}`)).meta.versionId, '2');
    });

    it('PUT Type?query whose body id is not the matched resource\'s -> 400 id_mismatch', {
    }, async () => {
      const mrn = randomId('cpi-');
      const q = `/Patient?identifier=http://tx.example/mrn|${mrn}`;
      const a = await c.put(q, patient(ident('http://tx.example/mrn', mrn)));
      assertStatus(a, 201);
      const idm = await c.put(q, patient({ id: 'not-the-match', ...ident('http://tx.example/mrn', mrn) }));
      assertOutcome(idm, 400, 'invalid', 'id_mismatch', 'conditional update with another id in the body');
      assert.equal((await read(`Patient/${a.json.id}`)).meta.versionId, '1');
      assertStatus(await c.get('/Patient/not-the-match'), 404);
    });

    it('DELETE Type?query -> 204 and gone; >1 match -> 412', async () => {
      const mrn = randomId('cpd-');
      const q = `/Patient?identifier=http://tx.example/mrn|${mrn}`;
      const a = await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn)));
      const d = await c.del(q);
      assertStatus(d, 204, 'conditional delete');
      assertStatus(await c.get(`/Patient/${a.json.id}`), 410);
      assertStatus(await c.del(q), 204, 'conditional delete, no match');
      for (let i = 0; i < 2; i++) assertStatus(await c.post('/Patient', patient(ident('http://tx.example/mrn', mrn))), 201);
      assertOutcome(await c.del(q), 412, 'conflict', 'precondition_failed', 'conditional delete, two matches');
      assert.equal(await total(q.slice(1)), 2);
    });
  });

  // -------------------------------------------------------------------------
  describe('PATCH (JSON Patch)', () => {
    const JP = 'application/json-patch+json';
    const patchReq = (id, ops, opts = {}) => c('PATCH', `/Patient/${id}`, { body: typeof ops === 'string' ? ops : JSON.stringify(ops), contentType: JP, ...opts });
    let id;
    before(async () => {
      const p = await c.post('/Patient', patient({
        active: true,
        name: [{ family: 'Patch', given: ['Ann'] }],
        telecom: [{ system: 'phone', value: '555-0100' }],
      }));
      assertStatus(p, 201);
      id = p.json.id;
    });

    it('add / replace / remove / test -> 200 with the patched resource, version 2', async () => {
      const r = await patchReq(id, [
        { op: 'test', path: '/active', value: true },
        { op: 'replace', path: '/active', value: false },
        { op: 'add', path: '/name/0/given/-', value: 'Beth' },
        { op: 'add', path: '/gender', value: 'female' },
        { op: 'remove', path: '/telecom' },
      ]);
      assertStatus(r, 200, 'PATCH');
      assertFhirJson(r, 'PATCH');
      assert.equal(r.json.meta.versionId, '2');
      assert.equal(r.headers.etag, 'W/"2"');
      assert.equal(r.json.active, false);
      assert.deepEqual(r.json.name, [{ family: 'Patch', given: ['Ann', 'Beth'] }]);
      assert.equal(r.json.gender, 'female');
      assert.equal(r.json.telecom, undefined);
      const g = await read(`Patient/${id}`);
      assert.deepEqual(g, r.json, 'read differs from the PATCH response');
    });

    it('a failing test op -> 422 patch-failed, nothing changed', async () => {
      const r = await patchReq(id, [
        { op: 'test', path: '/active', value: true },
        { op: 'replace', path: '/gender', value: 'male' },
      ]);
      assertOutcome(r, 422, 'processing', 'patch-failed', 'failing test');
      assert.equal((await read(`Patient/${id}`)).meta.versionId, '2');
    });

    it('a path that does not resolve -> 422', async () => {
      const r = await patchReq(id, [{ op: 'replace', path: '/birthDate', value: '2000-01-01' }]);
      assertOutcome(r, 422, 'processing', null, 'replace of an absent member');
    });

    it('malformed patches -> 400', async () => {
      for (const [name, body] of [
        ['not JSON', '[{"op":'],
        ['not an array', { op: 'add', path: '/active', value: true }],
        ['unknown op', [{ op: 'frobnicate', path: '/active', value: true }]],
        ['add without value', [{ op: 'add', path: '/active' }]],
        ['bad pointer', [{ op: 'add', path: 'active', value: true }]],
      ]) {
        const r = await patchReq(id, typeof body === 'string' ? body : body);
        assertOutcome(r, 400, 'invalid', null, `malformed patch: ${name}`);
      }
      assert.equal((await read(`Patient/${id}`)).meta.versionId, '2');
    });

    it('a patch making the resource invalid -> 422 validation', async () => {
      for (const ops of [
        [{ op: 'replace', path: '/gender', value: 'robot' }],
        [{ op: 'add', path: '/notAnElement', value: 1 }],
        [{ op: 'replace', path: '/active', value: 'yes' }],
      ]) {
        const r = await patchReq(id, ops);
        assertOutcome(r, 422, null, null, `invalid result: ${JSON.stringify(ops)}`);
      }
      assert.equal((await read(`Patient/${id}`)).meta.versionId, '2');
    });

    it('a patch changing id or resourceType -> 400', async () => {
      for (const ops of [
        [{ op: 'replace', path: '/id', value: 'other-id' }],
        [{ op: 'remove', path: '/id' }],
        [{ op: 'replace', path: '/resourceType', value: 'Practitioner' }],
      ]) {
        const r = await patchReq(id, ops);
        assertOutcome(r, 400, 'invalid', 'invalid_request', `patch ${JSON.stringify(ops)}`);
      }
      assertStatus(await c.get('/Patient/other-id'), 404);
      assert.equal((await read(`Patient/${id}`)).meta.versionId, '2');
    });

    it('If-Match stale -> 412; current -> 200', async () => {
      const stale = await patchReq(id, [{ op: 'replace', path: '/active', value: true }], { headers: { 'If-Match': 'W/"1"' } });
      assertOutcome(stale, 412, 'conflict', 'precondition_failed', 'stale If-Match');
      const ok = await patchReq(id, [{ op: 'replace', path: '/active', value: true }], { headers: { 'If-Match': 'W/"2"' } });
      assertStatus(ok, 200, 'current If-Match');
      assert.equal(ok.json.meta.versionId, '3');
    });

    it('a content type other than application/json-patch+json -> 415', async () => {
      for (const ct of ['application/fhir+json', 'application/json', 'application/merge-patch+json']) {
        const r = await c('PATCH', `/Patient/${id}`, { body: JSON.stringify([{ op: 'replace', path: '/active', value: false }]), contentType: ct });
        assertOutcome(r, 415, 'not-supported', 'unsupported_media_type', `PATCH as ${ct}`);
      }
      assert.equal((await read(`Patient/${id}`)).meta.versionId, '3');
    });

    it('PATCH of a missing resource -> 404; of a deleted one -> 410', async () => {
      assertOutcome(await patchReq('no-such-patient', [{ op: 'add', path: '/active', value: true }]), 404, 'not-found', 'not_found', 'PATCH missing');
      const p = await c.post('/Patient', patient());
      assertStatus(await c.del(`/Patient/${p.json.id}`), 204);
      assertOutcome(await patchReq(p.json.id, [{ op: 'add', path: '/active', value: true }]), 410, 'deleted', 'gone', 'PATCH deleted');
    });

    it('a patient-compartment token cannot PATCH a Patient outside it (404) nor move its Observation out (403)', async () => {
      const own = randomId('pp-');
      assertStatus(await c.put(`/Patient/${own}`, patient({ id: own })), 201);
      const o = await c.post('/Observation', obs(`Patient/${own}`));
      assertStatus(o, 201);
      const pt = client(srv, mintToken(srv, { sub: 'patch-pat', scope: 'patient/*.cruds', patient: own }));
      const r = await pt('PATCH', `/Patient/${id}`, { body: JSON.stringify([{ op: 'replace', path: '/active', value: false }]), contentType: JP });
      assertOutcome(r, 404, 'not-found', null, 'PATCH of another patient');
      const mv = await pt('PATCH', `/Observation/${o.json.id}`, { body: JSON.stringify([{ op: 'replace', path: '/subject/reference', value: `Patient/${id}` }]), contentType: JP });
      assertOutcome(mv, 403, 'forbidden', null, 'PATCH moving an Observation to another patient');
      assert.equal((await read(`Observation/${o.json.id}`)).subject.reference, `Patient/${own}`);
    });
  });

  // -------------------------------------------------------------------------
  describe('bundle shape', () => {
    it('a non-Bundle body -> 400; Bundle type collection / searchset / missing -> 400; invalid JSON -> 400', async () => {
      assertOutcome(await c.post('/', patient()), 400, 'invalid', 'resource_type_mismatch', 'Patient posted to /');
      for (const type of ['collection', 'searchset', 'document', 'transaction-response', undefined]) {
        const b = { resourceType: 'Bundle', entry: [ent('POST', 'Patient', { resource: patient() })] };
        if (type) b.type = type;
        assertOutcome(await c.post('/', b), 400, 'invalid', 'invalid_request', `Bundle type ${type}`);
      }
      assertOutcome(await c.post('/', '{"resourceType":"Bundle",'), 400, 'invalid', 'invalid_json', 'truncated JSON');
    });

    it('more than the default max_entries (1000) -> 400 too-costly, nothing written; 1000 are accepted', async () => {
      const mk = (n, type) => ({ resourceType: 'Bundle', type, entry: Array.from({ length: n }, () => ent('GET', 'Patient/none')) });
      const rows = versionRows();
      for (const type of ['transaction', 'batch']) {
        const r = await c.post('/', { ...mk(1001, type), entry: [ent('POST', 'Patient', { resource: patient() }), ...mk(1000, type).entry] });
        assertOutcome(r, 400, 'too-costly', 'too_costly', `${type} of 1001`);
      }
      assert.equal(versionRows(), rows);
      const ok = await c.post('/', mk(1000, 'batch'));
      assertStatus(ok, 200, 'batch of 1000');
      assert.equal(ok.json.entry.length, 1000);
    });

    it('a transaction without a token -> 401', async () => {
      const r = await client(srv)('POST', '/', { body: tx([]) });
      assertOutcome(r, 401, 'login', 'missing_token', 'no token');
    });
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv, { min: 50 });
  });

  it('stderr contains no bearer token', () => {
    for (const tok of srv.secrets) assert.ok(!srv.stderrText().includes(tok), 'token in server log');
  });
});

// ---------------------------------------------------------------------------

describe('[bundle] max_entries = 3', {
  timeout: 30000,
}, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'bundle-limit', config: '[bundle]\nmax_entries = 3\n' });
    c = client(srv, mintToken(srv, { sub: 'limit-user', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  const entries = (n) => Array.from({ length: n }, () => ent('POST', 'Patient', { fullUrl: urn(), resource: patient() }));

  it('4 entries -> 400 too-costly (transaction and batch), nothing written; 3 -> 200', async () => {
    for (const make of [tx, batch]) {
      const r = await c.post('/', make(entries(4)));
      assertOutcome(r, 400, 'too-costly', 'too_costly', `${make(entries(0)).type} of 4`);
    }
    assert.equal((await c.get('/Patient?_summary=count')).json.total, 0, 'a refused bundle wrote Patients');
    const ok = await c.post('/', tx(entries(3)));
    assertStatus(ok, 200, 'transaction of 3');
    assert.equal(ok.json.entry.length, 3);
    assertStatus(await c.post('/', batch(entries(3))), 200, 'batch of 3');
    assert.equal((await c.get('/Patient?_summary=count')).json.total, 6);
  });
});

// ---------------------------------------------------------------------------

describe('Synthea-style import (tools/synth.mjs --seed 7 --patients 5)', { timeout: 50000 }, () => {
  let srv;
  let c;
  let dir;
  let answers;
  let files;
  before(async () => {
    dir = tempRoot('fhirward-synth-');
    const gen = spawnSync(process.execPath, ['tools/synth.mjs', '--seed', '7', '--patients', '5', '--out', `${dir}/out`, '--answers', `${dir}/answers.json`],
      { cwd: REPO, encoding: 'utf8', timeout: 30000 });
    assert.equal(gen.status, 0, `synth failed: ${gen.stderr}${gen.stdout}`);
    answers = JSON.parse(fs.readFileSync(`${dir}/answers.json`, 'utf8'));
    files = fs.readdirSync(`${dir}/out`).filter((f) => /^bundle-\d+\.json$/.test(f)).sort();
    assert.equal(files.length, 6, `bundles: ${files}`);
    srv = await startServer({ name: 'synth' });
    c = client(srv, mintToken(srv, { sub: 'importer', scope: 'system/*.cruds' }));
  });
  after(async () => {
    await stopAndClean(srv);
    if (dir && process.env.FHIRWARD_KEEP_DATA !== '1') fs.rmSync(dir, { recursive: true, force: true });
  });
  afterEach(diagnose(() => [srv]));

  const bundleOf = (f) => JSON.parse(fs.readFileSync(`${dir}/out/${f}`, 'utf8'));
  const count = async (query) => {
    const r = await c.get(`/${query}${query.includes('?') ? '&' : '?'}_summary=count`);
    assertStatus(r, 200, `count ${query}`);
    return r.json.total;
  };
  async function all(type) {
    const r = await c.get(`/${type}?_count=500&_total=accurate`);
    assertStatus(r, 200, `GET /${type}`);
    assert.ok(r.json.total <= 500, `more than one page of ${type}`);
    return (r.json.entry || []).map((e) => e.resource);
  }

  let providerLocations;
  it('bundle-00000 (Practitioners and Organizations with ifNoneExist) -> 200, all 201', async () => {
    const b = bundleOf(files[0]);
    const r = await c.post('/', b);
    const entries = assertTxResponse(r, b.entry.length, files[0]);
    assert.deepEqual([...new Set(entries.map((e) => e.response.status))], ['201 Created']);
    providerLocations = entries.map((e) => e.response.location);
  });

  it('every patient bundle -> 200 with one 201 per entry', async () => {
    for (const f of files.slice(1)) {
      const b = bundleOf(f);
      const r = await c.post('/', b);
      const entries = assertTxResponse(r, b.entry.length, f);
      entries.forEach((e, i) => {
        assert.equal(e.response.status, '201 Created', `${f} entry ${i}: ${JSON.stringify(e)}`);
        assert.equal(loc(e).type, b.entry[i].resource.resourceType, `${f} entry ${i} out of order`);
      });
    }
  });

  it('bundle-00000 again creates no duplicates (200 OK, same locations)', async () => {
    const b = bundleOf(files[0]);
    const r = await c.post('/', b);
    const entries = assertTxResponse(r, b.entry.length, `${files[0]} again`);
    assert.deepEqual([...new Set(entries.map((e) => e.response.status))], ['200 OK']);
    assert.deepEqual(entries.map((e) => e.response.location), providerLocations, 'the matches are not the first run\'s resources');
    assert.equal(await count('Practitioner'), 20);
    assert.equal(await count('Organization'), 5);
  });

  it('resource counts per type equal what synth reported', async () => {
    for (const [type, n] of Object.entries(answers.resources)) {
      assert.equal(await count(type), n, `${type} count`);
    }
  });

  it('every reference of every stored resource is resolved to a stored resource', async () => {
    const byRef = new Map();
    const stored = {};
    for (const type of ['Practitioner', 'Organization', 'Patient', 'Encounter', 'Observation', 'Condition']) {
      stored[type] = await all(type);
      assert.equal(stored[type].length, answers.resources[type], `${type}: page holds all`);
      for (const res of stored[type]) byRef.set(`${type}/${res.id}`, res);
    }
    const problems = [];
    for (const type of ['Patient', 'Encounter', 'Observation', 'Condition']) {
      for (const res of stored[type]) {
        const refs = referencesIn(res);
        if (type !== 'Patient' && refs.length === 0) problems.push(`${type}/${res.id} has no references`);
        for (const ref of refs) {
          if (ref.includes('urn:uuid:') || ref.includes('?') || !byRef.has(ref)) problems.push(`${type}/${res.id}: ${ref}`);
        }
        if (JSON.stringify(res).includes('urn:uuid:')) problems.push(`${type}/${res.id} still holds urn:uuid:`);
      }
    }
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} unresolved references`);

    // Each patient: the narrative links to itself, the GP is the practitioner of its NPI,
    // and its encounters / observations / conditions are the ones synth made for it.
    const npiOf = (ref) => byRef.get(ref).identifier.find((i) => i.system === 'http://hl7.org/fhir/sid/us-npi').value;
    for (const fact of answers.population) {
      const pat = stored.Patient.find((p) => p.identifier.some((i) => i.value === fact.mrn));
      assert.ok(pat, `no Patient with MRN ${fact.mrn}`);
      const ref = `Patient/${pat.id}`;
      assert.ok(pat.text.div.includes(`href="${ref}"`), `${ref} narrative: ${pat.text.div}`);
      assert.equal(npiOf(pat.generalPractitioner[0].reference), fact.gp, `${ref} general practitioner`);
      const encs = stored.Encounter.filter((e) => e.subject.reference === ref);
      assert.equal(encs.length, fact.encounters, `${ref} encounters`);
      const obsN = Object.values(fact.counts).reduce((s, x) => s + x, 0);
      const mine = stored.Observation.filter((o) => o.subject.reference === ref);
      assert.equal(mine.length, obsN, `${ref} observations`);
      const encIds = new Set(encs.map((e) => `Encounter/${e.id}`));
      for (const o of mine) assert.ok(encIds.has(o.encounter.reference), `Observation/${o.id} points at another patient's encounter`);
      const conds = stored.Condition.filter((x) => x.subject.reference === ref);
      assert.deepEqual(conds.map((x) => x.code.coding[0].code).sort(), [...fact.conditions].sort(), `${ref} conditions`);
      assert.equal(await count(`Observation?subject=${ref}`), obsN, `search Observation?subject=${ref}`);
    }
  });

  it('a patient bundle posted again makes a second, separately linked copy (plain POSTs)', async () => {
    const b = bundleOf(files[1]);
    const fact = answers.population[0];
    const r = await c.post('/', b);
    const entries = assertTxResponse(r, b.entry.length, `${files[1]} again`);
    const pid = loc(entries[0]).ref;
    const obsN = Object.values(fact.counts).reduce((s, x) => s + x, 0);
    assert.equal(await count(`Observation?subject=${pid}`), obsN, 'the second copy\'s Observations');
    assert.equal(await count(`Patient?identifier=http://hospital.example.org/mrn|${fact.mrn}`), 2);
    assert.equal(await count('Practitioner'), 20, 'conditional references created Practitioners');
  });
});
