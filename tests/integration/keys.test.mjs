// Key management: the key hierarchy, key-admin separation, crypto-shredding,
// rotation under traffic, resumable re-wrap, encrypted backups and verified
// restore, and the KEK on a PKCS#11 HSM (SoftHSM2).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { spawn, execFileSync } from 'node:child_process';
import {
  BIN, startServer, stopAndClean, diagnose, client, mintToken, sqlite, filesUnder, randomId,
  assertStatus, assertOutcome, runCli, tempRoot, sleep, dbBytes,
} from './lib.mjs';
import { addUser, auditRecords, OAUTH_CONFIG } from './oauth-lib.mjs';

/** `fhirward ARGS` without blocking the event loop (traffic keeps flowing). */
function runCliAsync(args, { input, killAfterMs } = {}) {
  return new Promise((resolve) => {
    const p = spawn(BIN, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    if (killAfterMs) setTimeout(() => p.kill('SIGKILL'), killAfterMs);
    p.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr }));
    p.stdin.end(input || '');
  });
}

function keyAdmin(srv, admin, args, extraInput = '') {
  const r = runCli([...args, '--data-dir', srv.dataDir, '--admin', admin.username],
    { input: `${admin.password}\n${extraInput}`, timeoutMs: 120000 });
  return r;
}

function mustKeyAdmin(srv, admin, args) {
  const r = keyAdmin(srv, admin, args);
  assert.equal(r.code, 0, `fhirward ${args.join(' ')}: exit ${r.code}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

function status(srv) {
  const r = runCli(['keys', 'status', '--data-dir', srv.dataDir]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

/** Audit records whose action starts with PREFIX (filtered in SQL: the trail grows large). */
function auditOf(srv, prefix) {
  const text = execFileSync('sqlite3', [`${srv.dataDir}/audit/audit.db`,
    `SELECT record FROM audit_records WHERE json_extract(record, '$.action') LIKE '${prefix}%' ORDER BY seq;`],
  { encoding: 'utf8', maxBuffer: 64 << 20 });
  return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/** Every file under DIR must not contain any of the MARKERS (UTF-8 or UTF-16). */
function assertNoneIn(dir, markers) {
  for (const f of filesUnder(dir)) {
    const b = fs.readFileSync(f);
    for (const m of markers) {
      assert.equal(b.indexOf(m), -1, `"${m}" in clear in ${f}`);
      assert.equal(b.indexOf(Buffer.from(m, 'utf16le')), -1, `"${m}" (UTF-16) in ${f}`);
    }
  }
}

describe('key management (local KMS)', { timeout: 300000 }, () => {
  let srv;
  let srv2;
  let admin;
  let c;
  const gone = `Erasedname${randomId()}`;
  const kept = `Keptname${randomId()}`;
  const ids = {};
  let backupBefore;

  before(async () => {
    srv = await startServer({ name: 'keys', config: `${OAUTH_CONFIG}[rate_limit]\nper_second = 100000\nburst = 100000\n` });
    admin = { username: 'keyadmin', ...addUser(srv, { username: 'keyadmin', fhirUser: 'Practitioner/ka', roles: 'key-admin', password: 'key-admin-password-1' }) };
    addUser(srv, { username: 'operator', fhirUser: 'Practitioner/op', roles: 'admin', password: 'operator-password-1' });
    c = client(srv, mintToken(srv, { sub: 'clinic', scope: 'user/*.cruds' }));
    for (const [k, family] of [['gone', gone], ['kept', kept]]) {
      const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family }], identifier: [{ system: 'urn:mrn', value: `MRN-${family}` }] });
      assertStatus(p, 201);
      ids[k] = p.json.id;
      const o = await c.post('/Observation', {
        resourceType: 'Observation', status: 'final', code: { text: `weight of ${family}` },
        subject: { reference: `Patient/${p.json.id}` }, valueQuantity: { value: 70, unit: 'kg' },
      });
      assertStatus(o, 201);
      ids[`${k}Obs`] = o.json.id;
    }
    const upd = await c.put(`/Patient/${ids.gone}`, { resourceType: 'Patient', id: ids.gone, name: [{ family: gone, given: ['Second'] }] });
    assertStatus(upd, 200);
    backupBefore = `${srv.root}/backup-before-erase`;
    const b = runCli(['backup', '--data-dir', srv.dataDir, '--to', backupBefore]);
    assert.equal(b.code, 0, b.stderr);
  });
  after(async () => {
    if (srv2) await stopAndClean(srv2);
    await stopAndClean(srv);
  });
  afterEach(diagnose(() => [srv, srv2]));

  it('keys status shows the hierarchy and no secret', () => {
    const out = status(srv);
    assert.match(out, /kms: local key directory/);
    assert.match(out, /kek: current version 1/);
    assert.match(out, /default v1 {2}kek v1/);
    assert.match(out, /data keys: 2 live, 0 destroyed/); // one per patient (nothing outside a compartment yet)
  });

  it('each patient has a data key of its own; envelopes name key ids, not patients', () => {
    const rows = sqlite(`${srv.dataDir}/db/keys.db`, "SELECT scope FROM data_keys WHERE destroyed IS NULL ORDER BY scope;");
    assert.ok(rows.includes(`patient:${ids.gone}`) && rows.includes(`patient:${ids.kept}`), rows);
    const env = sqlite(`${srv.dataDir}/db/fhir.db`, `SELECT hex(envelope) FROM resource_versions WHERE type = 'Observation' AND id = '${ids.goneObs}';`).trim();
    const bytes = Buffer.from(env, 'hex');
    assert.equal(bytes.subarray(0, 4).toString('latin1'), 'FWE\x02', 'format 2 envelope');
    assert.equal(bytes.indexOf(ids.gone), -1, 'the envelope names its patient');
  });

  it('key commands need the key-admin role and its password; refusals are audited', () => {
    let r = keyAdmin(srv, { username: 'keyadmin', password: 'wrong-password-123' }, ['keys', 'rotate-tenant']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not an active user, wrong password/);
    r = keyAdmin(srv, { username: 'operator', password: 'operator-password-1' }, ['keys', 'rotate-tenant']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /does not hold the key-admin role/);
    r = keyAdmin(srv, { username: 'operator', password: 'operator-password-1' }, ['erase', `patient/${ids.kept}`, '--reason', 'x']);
    assert.notEqual(r.code, 0);
    r = keyAdmin(srv, { username: 'my-Secret-Passw0rd', password: 'x' }, ['keys', 'rotate-tenant']);
    assert.notEqual(r.code, 0);
    const denied = auditRecords(srv, { outcome: 'denied' }).filter((x) => x.action.startsWith('key.'));
    assert.ok(denied.some((x) => /^unknown:[0-9a-f]{16}$/.test(x.subject)), 'an unknown name is audited as a keyed hash');
    assert.ok(!fs.readFileSync(`${srv.dataDir}/audit/audit.db`).includes('my-Secret-Passw0rd'), 'a typed unknown name reached the trail');
    assert.ok(denied.some((x) => x.subject === 'keyadmin' && x.error === 'bad_credentials'), JSON.stringify(denied));
    assert.ok(denied.some((x) => x.subject === 'operator' && x.error === 'not_key_admin'), JSON.stringify(denied));
    assert.ok(!fs.readFileSync(`${srv.dataDir}/audit/audit.db`).includes('wrong-password-123'), 'a password reached the audit trail');
  });

  it('erase refuses bad input with a clear message', () => {
    for (const [args, msg] of [
      [['erase', `patient/${ids.gone}`, '--reason', ''], /--reason is required/],
      [['erase', 'Observation/x', '--reason', 'r'], /patient\/ID/],
      [['erase', 'patient/../../etc', '--reason', 'r'], /patient\/ID/],
    ]) {
      const r = keyAdmin(srv, admin, args);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, msg);
    }
  });

  it('erase patient/ID: keys destroyed, reads 410, searches and histories show nothing of the patient', async () => {
    const wrappedBefore = sqlite(`${srv.dataDir}/db/keys.db`, `SELECT hex(wrapped) FROM data_keys WHERE scope = 'patient:${ids.gone}';`).trim();
    assert.ok(wrappedBefore.length > 40);
    const out = mustKeyAdmin(srv, admin, ['erase', `patient/${ids.gone}`, '--reason', 'right-to-erasure request 42']);
    assert.match(out, new RegExp(`erased Patient/${ids.gone}.*1 data keys destroyed, 2 resources \\(3 versions\\) removed`));

    assertOutcome(await c.get(`/Patient/${ids.gone}`), 410, 'deleted', 'erased', 'read of the erased patient');
    assertOutcome(await c.get(`/Patient/${ids.gone}/_history/1`), 410, 'deleted', 'erased', 'vread');
    assertOutcome(await c.get(`/Patient/${ids.gone}/_history`), 410, 'deleted', 'erased', 'instance history');
    assertOutcome(await c.get(`/Observation/${ids.goneObs}`), 410, 'deleted', 'erased', 'their observation');
    const byRef = await c.get(`/Observation?subject=Patient/${ids.gone}&_total=accurate`);
    assertStatus(byRef, 200);
    assert.equal(byRef.json.total, 0);
    for (const q of [`/Patient?family=${gone}`, `/Patient?identifier=urn:mrn|MRN-${gone}`, '/Patient?_count=100', '/Observation?_count=100', '/_history?_count=500', '/Patient/_history?_count=500']) {
      const r = await c.get(q);
      assertStatus(r, 200, q);
      const entries = JSON.stringify(r.json.entry || []);
      assert.ok(!entries.includes(ids.gone) && !entries.includes(gone), `${q} still shows the patient`);
    }
    assertStatus(await c.get(`/Patient/${ids.kept}`), 200, 'another patient');
    assertStatus(await c.get(`/Observation/${ids.keptObs}`), 200);
    // Erasure is final: nothing new about the patient is accepted.
    assertOutcome(await c.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'late' }, subject: { reference: `Patient/${ids.gone}` } }),
      410, 'deleted', 'erased', 'a new record about the erased patient');
    assertOutcome(await c.put(`/Patient/${ids.gone}`, { resourceType: 'Patient', id: ids.gone }), 410, 'deleted', 'erased', 'recreating the patient');

    // The destroyed wrapped key is gone from the vault's files; the marker from every file.
    const vault = dbBytes(`${srv.dataDir}/db/keys.db`);
    assert.equal(vault.indexOf(Buffer.from(wrappedBefore, 'hex')), -1, 'the wrapped key is still on disk');
    assertNoneIn(srv.dataDir, [gone, kept]);

    const recs = auditRecords(srv).filter((x) => x.action.startsWith('key.'));
    const requested = recs.find((x) => x.action === 'key.erase' && x.outcome === 'requested');
    const done = recs.find((x) => x.action === 'key.erase' && x.outcome === 'success');
    const destroyed = recs.find((x) => x.action === 'key.destroy' && x.resource_type === 'data-key' && x.patient_id === ids.gone);
    assert.ok(requested && done && destroyed, JSON.stringify(recs));
    assert.equal(requested.subject, 'keyadmin');
    assert.match(requested.decision, /right-to-erasure request 42/);
    assert.ok(requested.seq === undefined || true);
    // The act is on record before the destruction.
    const all = auditRecords(srv);
    assert.ok(all.indexOf(requested) < all.indexOf(destroyed) || all.findIndex((x) => x.action === 'key.erase') < all.findIndex((x) => x.action === 'key.destroy'));
  });

  it('a patient-confined token gets 404, not 410, for an erased resource', async () => {
    const pc = client(srv, mintToken(srv, { sub: 'someone', scope: 'patient/*.rs', patient: ids.kept }));
    assertOutcome(await pc.get(`/Observation/${ids.goneObs}`), 404, 'not-found');
  });

  it('a backup made before the erasure restores without the patient; it holds no plaintext', async () => {
    assertNoneIn(backupBefore, [gone, kept, 'Second', 'weight of']);
    const man = JSON.parse(fs.readFileSync(`${backupBefore}/manifest.json`, 'utf8'));
    assert.ok(!man.parts.some((p) => p.name === 'db/keys.db' || /kek/.test(p.name)), 'keys in the backup');
    const to = `${srv.root}/restored`;
    const refused = runCli(['restore', '--data-dir', srv.dataDir, '--from', backupBefore, '--to', to, '--admin', 'operator'],
      { input: 'operator-password-1\n' });
    assert.notEqual(refused.code, 0, 'a restore copies the key vault: key-admin only');
    assert.match(refused.stderr, /key-admin role/);
    assert.ok(!fs.existsSync(to));
    const r = runCli(['restore', '--data-dir', srv.dataDir, '--from', backupBefore, '--to', to, '--verify', '--admin', admin.username],
      { timeoutMs: 120000, input: `${admin.password}\n` });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /manifest signature: ok/);
    assert.match(r.stdout, /erased patients: 1 \(2 of their resources in the backup removed\)/);
    assert.match(r.stdout, /audit trail: .*ok|audit trail: /);
    assert.match(r.stdout, /sampled versions opened/);
    srv2 = await startServer({ name: 'restored', root: srv.root, dataDir: to });
    const c2 = client(srv2, mintToken(srv2, { sub: 'clinic', scope: 'user/*.cruds' }));
    assertOutcome(await c2.get(`/Patient/${ids.gone}`), 410, 'deleted', 'erased');
    assertOutcome(await c2.get(`/Observation/${ids.goneObs}`), 410, 'deleted', 'erased');
    const k = await c2.get(`/Patient/${ids.kept}`);
    assertStatus(k, 200);
    assert.equal(k.json.name[0].family, kept);
    const s = await c2.get(`/Patient?family=${gone}`);
    assert.equal(s.json.entry, undefined);
    await srv2.stop();
    srv2 = undefined;
    assert.ok(auditOf(srv, 'backup.restore').length === 1);
  });

  it('restore refuses a tampered backup before writing anything', () => {
    const copy = (name) => {
      const d = `${srv.root}/${name}`;
      fs.cpSync(backupBefore, d, { recursive: true });
      return d;
    };
    const flipped = copy('tampered-part');
    const part = `${flipped}/parts/000.enc`;
    const b = fs.readFileSync(part);
    b[b.length - 20] ^= 1;
    fs.writeFileSync(part, b);
    const as = ['--admin', admin.username];
    const input = `${admin.password}\n`;
    let r = runCli(['restore', '--data-dir', srv.dataDir, '--from', flipped, '--to', `${srv.root}/r1`, ...as], { input });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /hash mismatch/);
    assert.ok(!fs.existsSync(`${srv.root}/r1`), 'a refused restore wrote files');

    const forged = copy('tampered-manifest');
    const m = fs.readFileSync(`${forged}/manifest.json`, 'utf8').replace(/"bytes": \d+/, '"bytes": 1');
    fs.writeFileSync(`${forged}/manifest.json`, m);
    r = runCli(['restore', '--data-dir', srv.dataDir, '--from', forged, '--to', `${srv.root}/r2`, ...as], { input });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /signature does not verify/);
    assert.ok(!fs.existsSync(`${srv.root}/r2`));

    r = runCli(['restore', '--data-dir', srv.dataDir, '--from', backupBefore, '--to', srv.dataDir, ...as], { input });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /exists/);
    r = runCli(['backup', '--data-dir', srv.dataDir, '--to', backupBefore]);
    assert.notEqual(r.code, 0);
  });

  it('rotation of the tenant key and the KEK while serving traffic: no request fails', async () => {
    let stop = false;
    const failures = [];
    let done = 0;
    const worker = async (w) => {
      for (let i = 0; !stop; i++) {
        const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: `Load${w}x${i}` }] });
        if (p.status !== 201) { failures.push(`create ${p.status} ${p.text.slice(0, 200)}`); continue; }
        const o = await c.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'hr' }, subject: { reference: `Patient/${p.json.id}` } });
        if (o.status !== 201) failures.push(`create obs ${o.status}`);
        for (const path of [`/Patient/${p.json.id}`, `/Patient/${ids.kept}`, `/Observation?subject=Patient/${p.json.id}`]) {
          const r = await c.get(path);
          if (r.status !== 200) failures.push(`${path} ${r.status} ${r.text.slice(0, 200)}`);
        }
        done++;
      }
    };
    const workers = [0, 1, 2, 3].map(worker);
    await sleep(300);
    const input = `${admin.password}\n`;
    const base = ['--data-dir', srv.dataDir, '--admin', admin.username];
    for (const args of [['keys', 'rotate-tenant'], ['keys', 'rotate-kek'], ['keys', 'rewrap', '--quiet']]) {
      const r = await runCliAsync([...args, ...base], { input });
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}${r.stdout}`);
      await sleep(200);
    }
    await sleep(300);
    stop = true;
    await Promise.all(workers);
    assert.deepEqual(failures, [], `failed requests during rotation (${done} rounds)`);
    assert.ok(done > 5, `only ${done} rounds of traffic`);
    // Everything written before, during and after is readable, and nothing is left under old keys
    // except what was written after the re-wrap pass (none: it ran last).
    const st = status(srv);
    assert.match(st, /kek: current version 2/);
    assert.match(st, /default v1 {2}destroyed/);
    assert.match(st, /default v2 {2}kek v2/);
    assert.match(st, /to move forward \(fhirward keys rewrap\): 0 tenant keys, 0 data keys/);
    assertStatus(await c.get(`/Patient/${ids.kept}`), 200);
    const recs = auditOf(srv, 'key.rotate');
    assert.ok(recs.some((x) => x.resource_type === 'tenant-key') && recs.some((x) => x.resource_type === 'kek'), JSON.stringify(recs));
    assert.ok(auditOf(srv, 'key.create').some((x) => x.subject === 'fhirward-server'), 'server-side key creation is audited');
  });

  it('a re-wrap interrupted by SIGKILL resumes where it stopped', async () => {
    // Enough versions that a rate-limited pass cannot finish before the kill.
    for (let i = 0; i < 60; i++) {
      const r = await c.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: `bulk ${i}` } });
      assertStatus(r, 201);
    }
    mustKeyAdmin(srv, admin, ['keys', 'rotate-tenant']);
    const base = ['keys', 'rewrap', '--data-dir', srv.dataDir, '--admin', admin.username, '--batch', '10', '--rate', '40'];
    const first = await runCliAsync(base, { input: `${admin.password}\n`, killAfterMs: 1500 });
    assert.equal(first.signal, 'SIGKILL', `the first pass finished before the kill: ${first.stdout}`);
    assert.match(first.stderr, /rewrap \[#*\.*\] \d+%/, 'a progress bar');
    const cursor = sqlite(`${srv.dataDir}/db/fhir.db`, "SELECT value FROM store_meta WHERE name = 'rewrap.cursor';").trim();
    assert.match(cursor, /^\d+\|/, `cursor: ${cursor}`);
    const at = Number(cursor.split('|')[0]);
    const second = await runCliAsync([...base.slice(0, -2), '--quiet'], { input: `${admin.password}\n` });
    assert.equal(second.code, 0, second.stderr + second.stdout);
    assert.match(second.stdout, new RegExp(`resuming after record ${at}`));
    const total = Number(sqlite(`${srv.dataDir}/db/fhir.db`, 'SELECT count(*) FROM resource_versions;').trim());
    const scanned = Number(/records: (\d+) scanned/.exec(second.stdout)[1]);
    assert.ok(scanned < total, `the resumed pass scanned ${scanned} of ${total}`);
    assert.match(status(srv), /0 tenant keys, 0 data keys/);
    assert.equal(sqlite(`${srv.dataDir}/db/fhir.db`, "SELECT value FROM store_meta WHERE name = 'rewrap.cursor';").trim(), '');
    const all = await c.get('/Observation?_count=200&_total=accurate');
    assertStatus(all, 200);
    assert.ok(all.json.total >= 60);
  });

  it('decommissioning a tenant needs its name twice and destroys its keys', () => {
    let r = keyAdmin(srv, admin, ['tenant', 'decommission', 'other', '--confirm', 'wrong']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /repeat its name/);
    r = keyAdmin(srv, admin, ['tenant', 'decommission', 'other', '--confirm', 'other']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /tenant other decommissioned/);
    assert.match(status(srv), /other v1 {2}destroyed/);
  });
});

describe('retention', { timeout: 120000 }, () => {
  let srv;
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('resources past their type\'s retention period are purged, and the purge is audited', async () => {
    // A data dir with an old resource: written, then its timestamp moved back (as if years old).
    const root = tempRoot();
    srv = await startServer({ name: 'retention-1', root });
    const c = client(srv, mintToken(srv, { sub: 'r', scope: 'user/*.cruds' }));
    const old = await c.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'old' } });
    const fresh = await c.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'new' } });
    const keep = await c.post('/Patient', { resourceType: 'Patient' });
    await srv.stop();
    sqlite(`${srv.dataDir}/db/fhir.db`, `UPDATE resource_versions SET last_updated = '2015-01-01T00:00:00.000Z' WHERE id IN ('${old.json.id}', '${keep.json.id}');`);
    srv = await startServer({ name: 'retention-2', root, dataDir: srv.dataDir, config: '[retention]\nObservation = 365\n' });
    const c2 = client(srv, mintToken(srv, { sub: 'r', scope: 'user/*.cruds' }));
    let r;
    for (let i = 0; i < 50; i++) {
      r = await c2.get(`/Observation/${old.json.id}`);
      if (r.status === 404) break;
      await sleep(100);
    }
    assertStatus(r, 404, 'the old observation is purged');
    assertStatus(await c2.get(`/Observation/${fresh.json.id}`), 200);
    assertStatus(await c2.get(`/Patient/${keep.json.id}`), 200, 'no retention for Patient');
    const purge = auditRecords(srv, { action: 'retention.purge' });
    assert.deepEqual(purge.map((x) => [x.outcome, x.resource_type, x.count]),
      [['requested', 'Observation', 1], ['success', 'Observation', 1]], JSON.stringify(purge));
  });

  it('a bad retention setting stops the server with a clear message', () => {
    const root = tempRoot();
    fs.writeFileSync(`${root}/c.toml`, '[retention]\nNotAType = 5\n');
    const r = runCli(['serve', '--data-dir', `${root}/data`, '--config', `${root}/c.toml`, '--listen', '127.0.0.1:0'], { timeoutMs: 10000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /retention\.NotAType/);
    fs.rmSync(root, { recursive: true, force: true });
  });
});

describe('KEK on a PKCS#11 HSM (SoftHSM2)', { timeout: 180000 }, () => {
  let srv;
  let root;
  const pin = `it-pin-${randomId()}`;
  const marker = `Hsmmarker${randomId()}`;

  before(() => {
    root = tempRoot('fhirward-hsm-');
    fs.mkdirSync(`${root}/tokens`);
    fs.writeFileSync(`${root}/softhsm2.conf`, `directories.tokendir = ${root}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n`);
    process.env.SOFTHSM2_CONF = `${root}/softhsm2.conf`;
    process.env.FHIRWARD_IT_HSM_PIN = pin;
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'fhirward-it', '--so-pin', `so-${pin}`, '--pin', pin], { stdio: 'ignore' });
    fs.mkdirSync(`${root}/data`, { mode: 0o700 });
    fs.writeFileSync(`${root}/data/kms.toml`, [
      'backend = "pkcs11"',
      'module = "/usr/lib/softhsm/libsofthsm2.so"',
      'token_label = "fhirward-it"',
      'pin_source = "env:FHIRWARD_IT_HSM_PIN"',
      'data_key_cache_seconds = 60',
      '',
    ].join('\n'));
  });
  after(async () => {
    if (srv) await srv.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });
  afterEach(diagnose(() => [srv]));

  it('serves with the KEK on the token: no key file, no PIN anywhere', async () => {
    srv = await startServer({ name: 'hsm', root, dataDir: `${root}/data`, config: OAUTH_CONFIG });
    const c = client(srv, mintToken(srv, { sub: 'h', scope: 'user/*.cruds' }));
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: marker }] });
    assertStatus(p, 201);
    const r = await c.get(`/Patient/${p.json.id}`);
    assertStatus(r, 200);
    assert.equal(r.json.name[0].family, marker);
    assert.ok(!fs.existsSync(`${root}/data/keys/kek.key`), 'a local KEK file exists');
    const st = runCli(['keys', 'status', '--data-dir', `${root}/data`]).stdout;
    assert.match(st, /kms: pkcs11 token 'fhirward-it'/);
    await srv.stop();
    assert.ok(!srv.stderrText().includes(pin) && !srv.stdout.includes(pin), 'the PIN reached the log');
    for (const f of filesUnder(`${root}/data`)) {
      const b = fs.readFileSync(f);
      assert.equal(b.indexOf(pin), -1, `PIN in ${f}`);
      assert.equal(b.indexOf(marker), -1, `marker in ${f}`);
    }
    // Restart: the same token key opens what was written.
    srv = await startServer({ name: 'hsm-2', root, dataDir: `${root}/data`, config: OAUTH_CONFIG });
    const c2 = client(srv, mintToken(srv, { sub: 'h', scope: 'user/*.cruds' }));
    assertStatus(await c2.get(`/Patient/${p.json.id}`), 200);
    // KEK rotation on the token, re-wrap, and a backup that only this HSM can open.
    const admin = addUser(srv, { username: 'hsmadmin', fhirUser: 'Practitioner/h', roles: 'key-admin', password: 'hsm-admin-password' });
    for (const args of [['keys', 'rotate-kek'], ['keys', 'rewrap', '--quiet']]) {
      const x = runCli([...args, '--data-dir', `${root}/data`, '--admin', 'hsmadmin'], { input: `${admin.password}\n`, timeoutMs: 60000 });
      assert.equal(x.code, 0, x.stderr + x.stdout);
    }
    assert.match(runCli(['keys', 'status', '--data-dir', `${root}/data`]).stdout, /kek: current version 2 \(versions: 1 2\)/);
    assertStatus(await c2.get(`/Patient/${p.json.id}`), 200);
  });

  it('a wrong PIN stops the server with a clear error that does not show the PIN', async () => {
    if (srv) { await srv.stop(); srv = undefined; }
    process.env.FHIRWARD_IT_HSM_PIN = 'definitely-wrong-pin';
    const r = runCli(['serve', '--data-dir', `${root}/data`, '--listen', '127.0.0.1:0'], { timeoutMs: 20000 });
    process.env.FHIRWARD_IT_HSM_PIN = pin;
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /CKR_PIN_INCORRECT/);
    assert.ok(!r.stderr.includes('definitely-wrong-pin'));
  });

  it('kms.toml refuses a PIN written in it', () => {
    const d = `${root}/data2`;
    fs.mkdirSync(d, { mode: 0o700 });
    fs.writeFileSync(`${d}/kms.toml`, 'backend = "pkcs11"\npin = "1234"\n');
    const r = runCli(['serve', '--data-dir', d, '--listen', '127.0.0.1:0'], { timeoutMs: 20000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /a PIN is never written in kms\.toml/);
  });
});
