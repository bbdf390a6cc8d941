// Audit trail: `fhirward audit verify` on an intact and on tampered copies of
// the audit database; no tokens or payloads in it.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  startServer, stopAndClean, diagnose, client, mintToken, request, runCli, sqlite, dbBytes,
  randomId, assertStatus,
} from './lib.mjs';

const DROP_TRIGGERS = 'DROP TRIGGER IF EXISTS audit_records_no_update; DROP TRIGGER IF EXISTS audit_records_no_delete;';

describe('audit trail', { timeout: 120000 }, () => {
  let srv;
  let token;
  let nRecords;
  const canary = `Audit-Canary-${randomId()}`;
  const copies = [];

  before(async () => {
    srv = await startServer({ name: 'audit' });
    token = mintToken(srv, { sub: 'audit-user', scope: 'user/*.cruds' });
    const c = client(srv, token);
    assertStatus(await request(srv, 'GET', '/metadata'), 200);
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: canary }] });
    assertStatus(p, 201);
    assertStatus(await c.get(`/Patient/${p.json.id}`), 200);
    assertStatus(await c.put(`/Patient/${p.json.id}`, { resourceType: 'Patient', id: p.json.id, name: [{ family: canary, given: ['Two'] }] }), 200);
    assertStatus(await request(srv, 'GET', `/Patient/${p.json.id}`), 401);
    assertStatus(await request(srv, 'GET', `/Patient/${p.json.id}`, { token: `${token}x` }), 401);
    assertStatus(await c.get('/Patient/missing'), 404);
    assertStatus(await c.get(`/Patient/${p.json.id}/_history`), 200);
    assertStatus(await c.del(`/Patient/${p.json.id}`), 204);
    assertStatus(await client(srv, mintToken(srv, { sub: 'audit-ro', scope: 'user/Observation.rs' })).get('/Patient/x'), 403);
    const e = await srv.stop();
    assert.deepEqual(e, { code: 0, signal: null }, 'SIGTERM exit');
  });
  after(async () => {
    for (const d of copies) fs.rmSync(d, { recursive: true, force: true });
    await stopAndClean(srv);
  });
  afterEach(diagnose(() => [srv]));

  const auditDb = (dir) => `${dir}/audit/audit.db`;

  /** A copy of the data dir (verify needs the keys) with `sql` applied to its audit db. */
  function tamperedCopy(sql) {
    const dir = `${srv.root}/copy-${copies.length}`;
    fs.cpSync(srv.dataDir, dir, { recursive: true });
    copies.push(dir);
    sqlite(auditDb(dir), `${DROP_TRIGGERS} ${sql}`);
    return dir;
  }

  it('verify on the intact log: exit 0, one line containing "intact"', () => {
    const r = runCli(['audit', 'verify', '--data-dir', srv.dataDir]);
    assert.equal(r.code, 0, `audit verify: ${r.stdout}${r.stderr}`);
    const lines = r.stdout.split('\n').filter((l) => l.trim());
    assert.equal(lines.length, 1, `expected one line, got: ${JSON.stringify(r.stdout)}`);
    assert.match(lines[0], /intact/);
  });

  it('one record per request, including the 401s and the 403', () => {
    const rows = sqlite(auditDb(srv.dataDir), 'SELECT seq, record FROM audit_records ORDER BY seq;').trim().split('\n');
    nRecords = rows.length;
    assert.ok(nRecords >= 11, `only ${nRecords} audit records for 11 requests`);
    const recs = rows.map((l) => JSON.parse(l.slice(l.indexOf('|') + 1)));
    const statuses = recs.map((r) => r.status_code ?? r.status);
    for (const s of [200, 201, 204, 401, 403, 404]) {
      assert.ok(statuses.includes(s), `no audit record with status ${s}: ${statuses}`);
    }
    assert.equal(statuses.filter((s) => s === 401).length, 2, `two 401s expected: ${statuses}`);
  });

  it('the audit db holds no token and no resource payload', () => {
    const bytes = dbBytes(auditDb(srv.dataDir));
    assert.ok(bytes.length > 0);
    assert.equal(bytes.indexOf(token), -1, 'the bearer token is in the audit db');
    assert.equal(bytes.indexOf(token.split('.')[2]), -1, 'the token signature is in the audit db');
    assert.equal(bytes.indexOf(canary), -1, 'the resource payload (family name) is in the audit db');
    const dump = sqlite(auditDb(srv.dataDir), 'SELECT record FROM audit_records;');
    assert.ok(!dump.includes(canary) && !dump.includes(token), 'payload or token in the records');
  });

  it('an altered record -> non-zero exit naming "seq 3"', () => {
    const dir = tamperedCopy("UPDATE audit_records SET record = replace(record, '\"', ' \"') WHERE seq = 3;");
    const r = runCli(['audit', 'verify', '--data-dir', dir]);
    assert.notEqual(r.code, 0, `verify passed an altered record: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout + r.stderr, /\bseq 3\b/, `output does not name seq 3: ${r.stdout}${r.stderr}`);
  });

  it('a minimally altered record (one status digit) -> names "seq 5"', () => {
    const rec = sqlite(auditDb(srv.dataDir), 'SELECT record FROM audit_records WHERE seq = 5;').trim();
    const changed = rec.replace(/("status_code"\s*:\s*)(\d)/, (m, k, d) => `${k}${d === '4' ? '5' : '4'}`);
    assert.notEqual(changed, rec, `cannot find status_code in ${rec}`);
    const dir = tamperedCopy(`UPDATE audit_records SET record = '${changed.replace(/'/g, "''")}' WHERE seq = 5;`);
    const r = runCli(['audit', 'verify', '--data-dir', dir]);
    assert.notEqual(r.code, 0, `verify passed an altered record: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout + r.stderr, /\bseq 5\b/, `${r.stdout}${r.stderr}`);
  });

  it('a removed middle record -> names "seq 4"', () => {
    const dir = tamperedCopy('DELETE FROM audit_records WHERE seq = 4;');
    const r = runCli(['audit', 'verify', '--data-dir', dir]);
    assert.notEqual(r.code, 0, `verify passed a removed record: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout + r.stderr, /\bseq 4\b/, `${r.stdout}${r.stderr}`);
  });

  it('two records swapped -> names "seq 3"', () => {
    const dir = tamperedCopy('UPDATE audit_records SET seq = -3 WHERE seq = 3; UPDATE audit_records SET seq = 3 WHERE seq = 4; UPDATE audit_records SET seq = 4 WHERE seq = -3;');
    const r = runCli(['audit', 'verify', '--data-dir', dir]);
    assert.notEqual(r.code, 0, `verify passed reordered records: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout + r.stderr, /\bseq 3\b/, `${r.stdout}${r.stderr}`);
  });

  it('the last record removed -> names the last seq', () => {
    const dir = tamperedCopy(`DELETE FROM audit_records WHERE seq = ${nRecords};`);
    const r = runCli(['audit', 'verify', '--data-dir', dir]);
    assert.notEqual(r.code, 0, `verify passed a truncated log: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout + r.stderr, new RegExp(`\\bseq ${nRecords}\\b`), `${r.stdout}${r.stderr}`);
  });

  it('the original is still intact after the tampering of copies', () => {
    const r = runCli(['audit', 'verify', '--data-dir', srv.dataDir]);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  });

  it('stderr contains neither the token nor the payload', () => {
    const log = srv.stderrText();
    assert.ok(!log.includes(token), 'token in server log');
    assert.ok(!log.includes(canary), 'payload in server log');
  });
});
