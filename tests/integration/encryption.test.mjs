// Encryption at rest: no plaintext in the resource db; a tampered envelope is a
// 500 decryption_failed for that resource only. Logs carry no token, no payload.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  startServer, stopAndClean, diagnose, client, mintToken, sqlite, filesUnder, randomId,
  assertStatus, assertOutcome,
} from './lib.mjs';

describe('encryption at rest', { timeout: 120000 }, () => {
  let srv;
  let srv2;
  let token;
  let canaryId;
  let otherId;
  const canary = `Quetzalcoatl-Canary-${randomId()}`;
  const canaryGiven = `Xochiquetzal${randomId()}`;

  before(async () => {
    srv = await startServer({ name: 'encryption' });
    token = mintToken(srv, { sub: 'enc-user', scope: 'user/*.cruds' });
    const c = client(srv, token);
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: canary, given: [canaryGiven] }] });
    assertStatus(p, 201);
    canaryId = p.json.id;
    const o = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Plain' }] });
    assertStatus(o, 201);
    otherId = o.json.id;
    assertStatus(await c.get(`/Patient/${canaryId}`), 200);
    assert.deepEqual(await srv.stop(), { code: 0, signal: null }, 'SIGTERM exit');
  });
  after(async () => {
    if (srv2) await srv2.stop();
    await stopAndClean(srv);
  });
  afterEach(diagnose(() => [srv, srv2]));

  it('the canary is in no file under DATA/db (db, -wal, -shm)', () => {
    const files = filesUnder(`${srv.dataDir}/db`);
    assert.ok(files.some((f) => f.endsWith('fhir.db')), `no fhir.db in ${files}`);
    for (const f of files) {
      const b = fs.readFileSync(f);
      for (const s of [canary, canaryGiven, 'Quetzalcoatl']) {
        assert.equal(b.indexOf(s), -1, `"${s}" found in clear in ${f}`);
        assert.equal(b.indexOf(Buffer.from(s, 'utf16le')), -1, `"${s}" (UTF-16) found in ${f}`);
      }
    }
  });

  it('the canary and the token are in no file of the data dir at all', () => {
    for (const f of filesUnder(srv.dataDir)) {
      const b = fs.readFileSync(f);
      assert.equal(b.indexOf(canary), -1, `canary in ${f}`);
      assert.equal(b.indexOf(token.split('.')[2]), -1, `token in ${f}`);
    }
  });

  it('resource_versions stores sealed envelopes', () => {
    const rows = sqlite(`${srv.dataDir}/db/fhir.db`, `SELECT hex(substr(envelope, 1, 3)) FROM resource_versions WHERE type = 'Patient' AND id = '${canaryId}';`).trim();
    assert.equal(rows, Buffer.from('FWE').toString('hex').toUpperCase(), `envelope prefix: ${rows}`);
  });

  it('a flipped byte in a stored envelope -> 500 decryption_failed for that resource; others still served', async () => {
    const db = `${srv.dataDir}/db/fhir.db`;
    const where = `type = 'Patient' AND id = '${canaryId}' AND version = 1`;
    const hex = sqlite(db, `SELECT hex(envelope) FROM resource_versions WHERE ${where};`).trim();
    assert.ok(hex.length > 100, `envelope hex: ${hex}`);
    const buf = Buffer.from(hex, 'hex');
    buf[buf.length - 24] ^= 0x01; // inside the ciphertext, before the GCM tag
    sqlite(db, `UPDATE resource_versions SET envelope = X'${buf.toString('hex')}' WHERE ${where};`);
    assert.equal(sqlite(db, `SELECT hex(envelope) FROM resource_versions WHERE ${where};`).trim(), buf.toString('hex').toUpperCase());

    srv2 = await startServer({ name: 'encryption-restart', root: srv.root, dataDir: srv.dataDir });
    const c = client(srv2, token);
    const r = await c.get(`/Patient/${canaryId}`);
    assertOutcome(r, 500, 'exception', 'decryption_failed', 'read of the tampered resource');
    assert.ok(!r.text.includes(canary), 'the 500 leaks plaintext');
    const ok = await c.get(`/Patient/${otherId}`);
    assertStatus(ok, 200, 'another resource after the failure');
    assert.equal(ok.json.name[0].family, 'Plain');
    assertOutcome(await c.get(`/Patient/${canaryId}/_history/1`), 500, 'exception', 'decryption_failed', 'vread of the tampered version');
    assert.equal(srv2.exit, null, 'the server died');
    assertStatus(await c.post('/Patient', { resourceType: 'Patient' }), 201, 'writes still work');
  });

  it('the restarted server stops cleanly', async () => {
    assert.deepEqual(await srv2.stop(), { code: 0, signal: null });
  });

  it('stderr (both runs) contains neither the bearer token nor the canary', () => {
    for (const s of [srv, srv2]) {
      const log = s.stderrText();
      assert.ok(!log.includes(token), `${s.name}: token in the log`);
      assert.ok(!log.includes(token.split('.')[2]), `${s.name}: token signature in the log`);
      assert.ok(!log.includes(canary) && !log.includes(canaryGiven), `${s.name}: canary in the log`);
    }
  });
});
