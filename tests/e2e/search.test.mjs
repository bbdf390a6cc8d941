// End to end with a third-party FHIR client (fhir-kit-client 1.x): a
// transaction with urn:uuid references, searches by name (accent- and
// case-insensitive, blind-indexed) and identifier, paging with the client's
// nextPage/prevPage over sealed cursors, compartment search with _include,
// conditional update and JSON Patch.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { startServer, stopAndClean, diagnose, mintToken } from '../integration/lib.mjs';
import { runFlow, okStep } from './fkc-harness.mjs';

const flow = fileURLToPath(new URL('./fkc-search-flow.mjs', import.meta.url));

describe('fhir-kit-client search, transaction and patch against fhirward', { timeout: 90000 }, () => {
  let srv;
  let out;
  before(async () => {
    srv = await startServer({ name: 'e2e-search' });
    const token = mintToken(srv, { sub: 'e2e-user', scope: 'user/*.cruds' });
    out = runFlow(flow, srv, token);
  });
  after(async () => { await stopAndClean(srv); });
  afterEach((t) => {
    if (t.passed === false && out) console.log(`# fhir-kit-client results: ${JSON.stringify(out, null, 1).split('\n').join('\n# ')}`);
    diagnose(() => [srv])(t);
  });

  const ok = (name) => okStep(out, name);


  it('transaction: every entry created, references resolved', () => {
    const v = ok('transaction');
    assert.equal(v.type, 'transaction-response');
    assert.deepEqual(v.statuses, Array(6).fill('201 Created'));
  });

  it('search by name (lower case) and by identifier find the patient', () => {
    assert.deepEqual(ok('searchByName'), { total: 1, ids: [out.patientId] });
    assert.deepEqual(ok('searchByIdentifier').ids, [out.patientId]);
  });

  it('paging with nextPage/prevPage walks every match once, in order', () => {
    const v = ok('pagedSearch');
    assert.deepEqual(v.values, [72, 83, 94, 105]);
    assert.equal(v.pages, 2);
    assert.deepEqual(v.back, [72, 83]);
  });

  it('compartment search with _include', () => {
    assert.deepEqual(ok('compartmentSearch'), { matches: [94, 105], included: ['Patient'] });
  });

  it('conditional update by identifier updates the one match', () => {
    const v = ok('conditionalUpdate');
    assert.equal(v.id, out.patientId);
    assert.equal(v.versionId, '2');
    assert.deepEqual(v.given, ['Émile', 'Updated']);
  });

  it('JSON Patch', () => {
    assert.deepEqual(ok('patch'), { versionId: '3', active: true });
  });
});
