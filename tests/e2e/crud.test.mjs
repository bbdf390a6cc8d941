// End to end with a third-party FHIR client (fhir-kit-client 1.x):
// create -> read -> update -> vread -> history -> delete -> read 410.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { startServer, stopAndClean, diagnose, mintToken } from '../integration/lib.mjs';
import { runFlow, okStep } from './fkc-harness.mjs';

const flow = fileURLToPath(new URL('./fkc-flow.mjs', import.meta.url));

describe('fhir-kit-client CRUD against fhirward', { timeout: 90000 }, () => {
  let srv;
  let out;
  let r;
  before(async () => {
    srv = await startServer({ name: 'e2e' });
    const token = mintToken(srv, { sub: 'e2e-user', scope: 'user/*.cruds' });
    out = runFlow(flow, srv, token);
    r = out.results;
  });
  after(async () => { await stopAndClean(srv); });
  afterEach((t) => {
    if (t.passed === false && out) console.log(`# fhir-kit-client results: ${JSON.stringify(out, null, 1).split('\n').join('\n# ')}`);
    diagnose(() => [srv])(t);
  });

  const ok = (name) => okStep(out, name);


  it('capabilityStatement', () => {
    const v = ok('capabilities');
    assert.equal(v.resourceType, 'CapabilityStatement');
    assert.equal(v.fhirVersion, '4.0.1');
  });

  it('create', () => {
    const v = ok('create');
    assert.equal(v.resourceType, 'Patient');
    assert.ok(v.id);
    assert.equal(v.meta.versionId, '1');
  });

  it('read', () => {
    const v = ok('read');
    assert.equal(v.id, out.id);
    assert.equal(v.name[0].family, out.family);
    assert.equal(v.meta.versionId, '1');
  });

  it('update', () => {
    const v = ok('update');
    assert.equal(v.meta.versionId, '2');
    assert.equal(v.active, false);
  });

  it('vread version 1', () => {
    const v = ok('vread');
    assert.equal(v.meta.versionId, '1');
    assert.deepEqual(v.name[0].given, ['Fhir', 'Kit']);
  });

  it('history', () => {
    const v = ok('history');
    assert.equal(v.resourceType, 'Bundle');
    assert.equal(v.type, 'history');
    assert.deepEqual(v.entry.map((e) => e.resource.meta.versionId), ['2', '1']);
  });

  it('history paged with nextPage()', () => {
    assert.deepEqual(ok('historyPaged'), ['2', '1']);
  });

  it('delete', () => {
    ok('delete');
  });

  it('read after delete -> 410', () => {
    assert.ok(r.readAfterDelete, 'step did not run');
    assert.equal(r.readAfterDelete.ok, false, `read after delete succeeded: ${JSON.stringify(r.readAfterDelete.value)}`);
    assert.equal(r.readAfterDelete.error.status, 410, JSON.stringify(r.readAfterDelete.error));
    assert.equal(r.readAfterDelete.error.data.resourceType, 'OperationOutcome');
  });

  it('vread of version 2 after delete -> 200', () => {
    assert.equal(ok('vreadAfterDelete').meta.versionId, '2');
  });
});
