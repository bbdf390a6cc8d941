// The audit trail through the API: BALP AuditEvents for auditors, the
// patients' accounting of disclosures, read-only everywhere, and the Merkle
// log (signed tree heads, inclusion and consistency proofs) checked with an
// independent RFC 9162 verifier written here on node:crypto.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  startServer, stopAndClean, diagnose, client, runCli, sqlite, assertStatus, assertOutcome, request,
  linkPath, randomId,
  mintToken,
} from './lib.mjs';
import { auditRecords } from './oauth-lib.mjs';

// ---- an independent RFC 6962 / RFC 9162 verifier ----------------------------
const sha256 = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts)).digest();
const leafHash = (data) => sha256(Buffer.from([0]), Buffer.from(data, 'utf8'));
const nodeHash = (l, r) => sha256(Buffer.from([1]), l, r);

function verifyInclusion(leaf, index, size, proof, root) {
  if (index >= size) return false;
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      if ((fn & 1n) === 0n) { while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n && r.equals(root);
}

function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
  if (first === second) return proof.length === 0 && firstRoot.equals(secondRoot);
  if (first > second || proof.length === 0) return false;
  const c = ((first & (first - 1)) === 0) ? [firstRoot, ...proof] : [...proof];
  let fn = BigInt(first - 1);
  let sn = BigInt(second - 1);
  while ((fn & 1n) === 1n) { fn >>= 1n; sn >>= 1n; }
  let fr = c[0];
  let sr = c[0];
  for (const p of c.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(p, fr);
      sr = nodeHash(p, sr);
      if ((fn & 1n) === 0n) { while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
    } else {
      sr = nodeHash(sr, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  return sn === 0n && fr.equals(firstRoot) && sr.equals(secondRoot);
}

/** Checks a tree head's ES256 signature with a pinned JWK; returns its payload. */
function checkHead(head, jwk) {
  const [h, p, s] = head.jws.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  assert.equal(header.alg, 'ES256');
  assert.equal(header.typ, 'fhirward-sth');
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const ok = crypto.verify('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' },
    Buffer.from(s, 'base64url'));
  assert.ok(ok, 'tree head signature');
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  assert.equal(payload.tree_size, head.tree_size);
  assert.equal(Buffer.from(payload.root_hash, 'base64url').toString('base64'), head.root_hash);
  return payload;
}

describe('audit trail through the API', { timeout: 180000 }, () => {
  let srv;
  let clin;
  let auditor;
  let patA;
  let patB;
  let app;
  const ids = {};
  const family = `Trail${randomId()}`;

  before(async () => {
    srv = await startServer({ name: 'audit-trail', config: '[rate_limit]\nper_second = 100000\nburst = 100000\n' });
    const admin = client(srv, mintToken(srv, { sub: 'registrar', scope: 'user/*.cruds' }));
    for (const k of ['A', 'B']) {
      const r = await admin.post('/Patient', { resourceType: 'Patient', name: [{ family, given: [k] }] });
      assertStatus(r, 201);
      ids[k] = r.json.id;
      const o = await admin.post('/Observation', {
        resourceType: 'Observation', status: 'final', code: { text: 'weight' },
        subject: { reference: `Patient/${r.json.id}` },
      });
      assertStatus(o, 201);
      ids[`obs${k}`] = o.json.id;
    }
    clin = client(srv, mintToken(srv, { sub: 'dr-house', scope: 'user/*.rs', purpose: 'TREAT', clientId: 'ehr-app' }));
    auditor = client(srv, mintToken(srv, { sub: 'ann-auditor', scope: 'user/*.rs', roles: 'auditor' }));
    patA = client(srv, mintToken(srv, { sub: 'pat-a', scope: 'patient/*.rs', roles: 'patient', patient: ids.A, fhirUser: `Patient/${ids.A}` }));
    patB = client(srv, mintToken(srv, { sub: 'pat-b', scope: 'patient/*.rs', roles: 'patient', patient: ids.B, fhirUser: `Patient/${ids.B}` }));
    app = client(srv, mintToken(srv, { sub: 'some-app', scope: 'user/*.rs' }));
    assertStatus(await clin.get(`/Patient/${ids.A}`), 200);
    assertStatus(await clin.get(`/Observation?subject=Patient/${ids.B}`), 200);
    assertStatus(await clin.get(`/Patient?family=${family}`), 200);  // both patients
    assertStatus(await client(srv, mintToken(srv, { sub: 'dr-house', scope: 'user/Observation.rs' })).get(`/Patient/${ids.A}`), 403);
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('no API writes the trail: create, update, patch, delete, _search POST and bundles are refused', async () => {
    const ev = { resourceType: 'AuditEvent', type: { code: 'rest' }, recorded: '2026-01-01T00:00:00Z', agent: [], source: { observer: {} } };
    for (const [m, p] of [['POST', '/AuditEvent'], ['PUT', '/AuditEvent/1'], ['PATCH', '/AuditEvent/1'], ['DELETE', '/AuditEvent/1']]) {
      const r = await auditor(m, p, { body: m === 'DELETE' ? undefined : ev });
      assertOutcome(r, 405, undefined, undefined, `${m} ${p}`);
      assert.match(r.text, /read-only/);
    }
    const tx = await auditor.post('/', {
      resourceType: 'Bundle', type: 'batch',
      entry: [{ resource: ev, request: { method: 'POST', url: 'AuditEvent' } }],
    });
    assertStatus(tx, 200);
    assert.match(tx.json.entry[0].response.status, /^405/);
    const before = Number(sqlite(`${srv.dataDir}/db/fhir.db`, "SELECT count(*) FROM resource_versions WHERE type = 'AuditEvent';").trim() || 0);
    assert.equal(before, 0, 'no AuditEvent in the resource store');
    // The CapabilityStatement says so: read and search only, with the parameters served.
    const cs = (await request(srv, 'GET', '/metadata')).json;
    const ae = cs.rest[0].resource.find((r) => r.type === 'AuditEvent');
    assert.deepEqual(ae.interaction.map((i) => i.code), ['read', 'search-type']);
    assert.equal(ae.conditionalDelete, 'not-supported');
    assert.deepEqual(ae.searchParam.map((p) => p.name).sort(),
      ['action', 'agent', 'date', 'entity', 'entity-type', 'outcome', 'patient', 'subtype']);
    const pat = cs.rest[0].resource.find((r) => r.type === 'Patient');
    assert.ok(pat.interaction.some((i) => i.code === 'create'), 'other types keep their interactions');
  });

  it('auditors search by patient and get BALP AuditEvents with who, what, where and why', async () => {
    const r = await auditor.get(`/AuditEvent?patient=${ids.A}&agent=dr-house`);
    assertStatus(r, 200);
    assert.equal(r.json.resourceType, 'Bundle');
    const events = r.json.entry.map((e) => e.resource);
    const read = events.find((e) => e.subtype[0].code === 'read' && e.outcome === '0');
    assert.ok(read, `a read of A by dr-house in ${JSON.stringify(events.map((e) => e.subtype))}`);
    assert.deepEqual(read.meta.profile, ['https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead']);
    assert.equal(read.type.code, 'rest');
    assert.equal(read.action, 'R');
    const user = read.agent.find((a) => a.requestor);
    assert.equal(user.who.identifier.value, 'dr-house');
    assert.equal(user.network.address, '127.0.0.1');
    assert.ok(read.agent.some((a) => a.who.identifier.value === 'ehr-app'), 'the client app is an agent');
    assert.equal(read.purposeOfEvent[0].coding[0].code, 'TREAT');
    assert.ok(read.entity.some((e) => e.what?.reference === `Patient/${ids.A}` && e.role.code === '1'));
    const tx = read.entity.find((e) => e.type.code === 'XrequestId');
    assert.ok(tx.detail.some((d) => d.type === 'decision' && /allow/.test(d.valueString)));
    assert.ok(!JSON.stringify(events).includes(family), 'no resource content in AuditEvents');
    // The search across both patients lists both, with its query.
    const both = await auditor.get(`/AuditEvent?patient=${ids.B}&subtype=search-type&agent=dr-house`);
    assertStatus(both, 200);
    const q = both.json.entry.map((e) => e.resource).find((e) => e.entity.some((x) => x.role?.code === '24'));
    assert.ok(q, 'a query entity');
    assert.match(Buffer.from(q.entity.find((x) => x.role?.code === '24').query, 'base64').toString(), /family=|subject=/);
  });

  it('auditors filter by outcome, action, date, entity and page with _count', async () => {
    const denied = await auditor.get('/AuditEvent?outcome=4&agent=dr-house');
    assertStatus(denied, 200);
    assert.ok(denied.json.entry.length >= 1);
    for (const e of denied.json.entry) assert.equal(e.resource.outcome, '4');
    const today = new Date().toISOString().slice(0, 10);
    const future = await auditor.get('/AuditEvent?date=gt2999-01-01');
    assertStatus(future, 200);
    assert.equal(future.json.entry.length, 0);
    const creates = await auditor.get(`/AuditEvent?action=C&date=${today}`);
    assertStatus(creates, 200);
    assert.ok(creates.json.entry.length >= 4, 'the 4 creates');
    for (const e of creates.json.entry) assert.equal(e.resource.action, 'C');
    const entity = await auditor.get(`/AuditEvent?entity=Observation/${ids.obsA}`);
    assertStatus(entity, 200);
    assert.equal(entity.json.entry.length, 1);
    const seen = new Set();
    let page = await auditor.get('/AuditEvent?_count=2');
    for (let i = 0; i < 4; i++) {
      assertStatus(page, 200);
      assert.ok(page.json.entry.length <= 2);
      for (const e of page.json.entry) {
        assert.ok(!seen.has(e.resource.id), `id ${e.resource.id} twice`);
        seen.add(e.resource.id);
      }
      const next = page.json.link.find((l) => l.relation === 'next');
      assert.ok(next, 'a next link');
      page = await auditor.get(linkPath(next.url));
    }
    assert.equal(seen.size, 8);
    assertOutcome(await auditor.get('/AuditEvent?bogus=1'), 400);
    assertOutcome(await auditor.get('/AuditEvent?date=yesterday'), 400);
  });

  it('principals without an audit reader role are refused', async () => {
    assertOutcome(await app.get('/AuditEvent'), 403);
    assertOutcome(await clin.get(`/AuditEvent?patient=${ids.A}`), 403);
    assertOutcome(await app.get('/AuditEvent/$tree-head'), 403);
  });

  it('a patient sees who accessed their record, when and why, and nothing else', async () => {
    const r = await patA.get('/AuditEvent');
    assertStatus(r, 200);
    const events = r.json.entry.map((e) => e.resource);
    assert.ok(events.length >= 2, 'the read of A and the search that returned A');
    const text = JSON.stringify(events);
    assert.ok(text.includes('dr-house'), 'who');
    assert.ok(text.includes('TREAT'), 'why');
    assert.ok(!text.includes('"network"'), 'no staff network addresses');
    assert.ok(!text.includes(ids.B), 'no other patient');
    assert.ok(!text.includes('user/*.rs'), 'no scopes');
    assert.ok(!text.includes('decision'), 'no policy internals');
    for (const e of events) {
      assert.equal(e.outcome, '0', 'only accesses that happened');
      assert.ok(!e.entity.some((x) => x.query), 'no queries');
      assert.ok(e.entity.some((x) => x.what?.reference === `Patient/${ids.A}`));
      assert.ok(e.recorded);
    }
    // B's events are not A's business.
    const b = await patB.get('/AuditEvent');
    assertStatus(b, 200);
    const bIds = new Set(b.json.entry.map((e) => e.resource.id));
    const aOnly = events.find((e) => e.subtype[0].code === 'read');
    assert.ok(aOnly);
    assert.ok(!bIds.has(aOnly.id));
    assertOutcome(await patB.get(`/AuditEvent/${aOnly.id}`), 404);
    assertStatus(await patA.get(`/AuditEvent/${aOnly.id}`), 200);
    assertOutcome(await patA.get(`/AuditEvent?patient=${ids.B}`), 400);
    assertOutcome(await patA.get('/AuditEvent?agent=dr-house'), 400);
    assertOutcome(await patA.get('/AuditEvent/$tree-head'), 403);
  });

  it('signed tree heads, inclusion and consistency proofs verify independently', async () => {
    const h1 = await auditor.post('/AuditEvent/$tree-head', undefined);
    assertStatus(h1, 200);
    const jwk = h1.json.key;
    assert.equal(jwk.kty, 'EC');
    assert.equal(jwk.d, undefined, 'no private key material');
    checkHead(h1.json, jwk);
    const root1 = Buffer.from(h1.json.root_hash, 'base64');
    fs.writeFileSync(`${srv.root}/held-head.json`, JSON.stringify(h1.json));

    // Every record so far is in the signed tree.
    for (const id of [1, Math.ceil(h1.json.tree_size / 2), h1.json.tree_size]) {
      const p = await auditor.get(`/AuditEvent/$inclusion-proof?id=${id}&tree_size=${h1.json.tree_size}`);
      assertStatus(p, 200);
      const leaf = leafHash(p.json.record);
      assert.equal(leaf.toString('base64'), p.json.leaf_hash);
      const path = p.json.audit_path.map((x) => Buffer.from(x, 'base64'));
      assert.ok(verifyInclusion(leaf, id - 1, h1.json.tree_size, path, root1), `inclusion of ${id}`);
      // An edited record does not verify.
      const edited = leafHash(p.json.record.replace('"time":"2', '"time":"1'));
      assert.ok(!verifyInclusion(edited, id - 1, h1.json.tree_size, path, root1));
    }

    // More traffic, a new head, and the old one is a prefix of it.
    for (let i = 0; i < 5; i++) assertStatus(await clin.get(`/Patient/${ids.B}`), 200);
    const h2 = await auditor.post('/AuditEvent/$tree-head', undefined);
    assertStatus(h2, 200);
    checkHead(h2.json, jwk);
    assert.ok(h2.json.tree_size > h1.json.tree_size);
    const c = await auditor.get(`/AuditEvent/$consistency-proof?first=${h1.json.tree_size}&second=${h2.json.tree_size}`);
    assertStatus(c, 200);
    const proof = c.json.consistency.map((x) => Buffer.from(x, 'base64'));
    const root2 = Buffer.from(h2.json.root_hash, 'base64');
    assert.ok(verifyConsistency(h1.json.tree_size, h2.json.tree_size, root1, root2, proof));
    // A rewritten history (another root at the old size) is not consistent.
    const fake = Buffer.from(root1);
    fake[0] ^= 1;
    assert.ok(!verifyConsistency(h1.json.tree_size, h2.json.tree_size, fake, root2, proof));
    // The stored head at the old size is the one we hold.
    const again = await auditor.get(`/AuditEvent/$tree-head?tree_size=${h1.json.tree_size}`);
    assertStatus(again, 200);
    assert.equal(again.json.jws, h1.json.jws);
    assertOutcome(await auditor.get('/AuditEvent/$inclusion-proof?id=0'), 400);
    assertOutcome(await auditor.get(`/AuditEvent/$consistency-proof?first=${h2.json.tree_size + 10}`), 400);
    assertOutcome(await auditor.get('/AuditEvent/$tree-head?tree_size=999999999'), 404);
  });

  it('audit verify checks the tree and every signed head, and a held head', async () => {
    const r = runCli(['audit', 'verify', '--data-dir', srv.dataDir, '--head', `${srv.root}/held-head.json`]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /Merkle tree intact, root [0-9a-f]{64}, \d+ signed tree heads verified/);
    // A copy whose held head no longer matches: a record below it rewritten
    // (chain and tree recomputed would still not match the held root).
    const dir = `${srv.root}/tampered`;
    fs.cpSync(srv.dataDir, dir, { recursive: true });
    sqlite(`${dir}/audit/audit.db`, "DROP TRIGGER IF EXISTS audit_nodes_no_update; UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 2;");
    const t = runCli(['audit', 'verify', '--data-dir', dir, '--head', `${srv.root}/held-head.json`]);
    assert.equal(t.code, 2, t.stdout + t.stderr);
    assert.match(t.stdout, /broken at record 3: Merkle node 0\/2/);
    fs.rmSync(dir, { recursive: true, force: true });
    // A head signed by another log's key is refused.
    const h = JSON.parse(fs.readFileSync(`${srv.root}/held-head.json`, 'utf8'));
    const [a, b] = h.jws.split('.');
    fs.writeFileSync(`${srv.root}/forged-head.jws`, `${a}.${b}.${Buffer.alloc(64, 7).toString('base64url')}`);
    const f = runCli(['audit', 'verify', '--data-dir', srv.dataDir, '--head', `${srv.root}/forged-head.jws`]);
    assert.notEqual(f.code, 0);
    assert.match(f.stderr + f.stdout, /held head is not valid: tree head: bad signature/);
  });

  it('the audit records carry roles, purpose, every patient touched and the response size', () => {
    const rows = sqlite(`${srv.dataDir}/audit/audit.db`,
      "SELECT record FROM audit_records WHERE json_extract(record, '$.subject') = 'dr-house' AND json_extract(record, '$.query') LIKE 'family=%';")
      .trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(rows.length, 1);
    assert.deepEqual([...rows[0].patients].sort(), [ids.A, ids.B].sort());
    // Identifying search values are pseudonymised: the name is nowhere in the trail.
    assert.match(rows[0].query, /^family=~[0-9a-f]{16}$/);
    for (const f of ['audit.db', 'audit.db-wal']) {
      const p = `${srv.dataDir}/audit/${f}`;
      if (fs.existsSync(p)) assert.equal(fs.readFileSync(p).indexOf(family), -1, `${family} in clear in ${f}`);
    }
    assert.equal(rows[0].purpose_of_use, 'TREAT');
    assert.ok(rows[0].bytes > 0);
    assert.ok(rows[0].node.length > 0);
    const a = sqlite(`${srv.dataDir}/audit/audit.db`,
      "SELECT record FROM audit_records WHERE json_extract(record, '$.subject') = 'ann-auditor' LIMIT 1;").trim();
    assert.equal(JSON.parse(a).roles, 'auditor');
  });

  it('administrative commands are on the trail, with who ran them and no secret', async () => {
    const d = ['--data-dir', srv.dataDir];
    const run = (args) => {
      const r = runCli(args);
      assert.equal(r.code, 0, `fhirward ${args.join(' ')}: ${r.stderr}${r.stdout}`);
      return r.stdout;
    };
    const secrets = [];
    const grab = (out, label) => {
      const m = out.match(new RegExp(`${label}: (\\S+)`));
      assert.ok(m, `${label} in ${out}`);
      secrets.push(m[1]);
    };
    const before = auditRecords(srv).length;
    grab(run(['users', 'add', ...d, '--username', 'temp-nurse', '--fhir-user', 'Practitioner/tn1', '--roles', 'clinician']), 'password');
    run(['users', 'disable', ...d, '--username', 'temp-nurse']);
    run(['users', 'enable', ...d, '--username', 'temp-nurse']);
    grab(run(['users', 'reset-password', ...d, '--username', 'temp-nurse']), 'password');
    grab(run(['clients', 'add', ...d, '--client-id', 'lab-feed', '--auth', 'client_secret_basic', '--scope', 'system/Observation.cr',
      '--grant-type', 'client_credentials']), 'client_secret');
    run(['clients', 'disable', ...d, '--client-id', 'lab-feed']);
    run(['clients', 'enable', ...d, '--client-id', 'lab-feed']);
    grab(run(['clients', 'rotate-secret', ...d, '--client-id', 'lab-feed', '--grace', '60']), 'client_secret');
    secrets.push(run(['launch', 'create', ...d, '--patient', ids.A, '--client-id', 'ehr-app']).trim());
    const kid = run(['keys', 'rotate-signing', ...d]).match(/key (\S+) published/)[1];

    const recs = auditRecords(srv).slice(before);
    assert.deepEqual(recs.map((r) => `${r.action} ${r.resource_type}/${r.resource_id} ${r.outcome}`), [
      'user.add User/temp-nurse success', 'user.disable User/temp-nurse success', 'user.enable User/temp-nurse success',
      'user.reset-password User/temp-nurse success', 'client.add Client/lab-feed success', 'client.disable Client/lab-feed success',
      'client.enable Client/lab-feed success', 'client.rotate-secret Client/lab-feed success', 'launch.create Launch/ success',
      `key.rotate-signing SigningKey/${kid} success`]);
    for (const r of recs) {
      assert.equal(r.subject, 'fhirward-cli');
      assert.match(r.user_agent, /^fhirward-cli uid=\d+\(\S+\)$/);
    }
    assert.equal(recs[0].decision, 'fhir_user=Practitioner/tn1 roles=clinician');
    assert.equal(recs[1].decision, 'grants revoked');
    assert.equal(recs[4].decision, 'auth=client_secret_basic grants=client_credentials scope=system/Observation.cr redirect_uris=0');
    assert.equal(recs[8].patient_id, ids.A);
    assert.equal(recs[8].client_id, 'ehr-app');
    // Passwords, client secrets and the launch id are printed once and kept nowhere in the trail.
    for (const f of ['audit.db', 'audit.db-wal']) {
      const p = `${srv.dataDir}/audit/${f}`;
      if (!fs.existsSync(p)) continue;
      const bytes = fs.readFileSync(p);
      for (const sec of secrets) assert.equal(bytes.indexOf(sec), -1, `a secret printed by the CLI is in ${f}`);
    }
    // Auditors find them like any other event.
    const found = await auditor.get('/AuditEvent?subtype=client.add,client.rotate-secret');
    assertStatus(found, 200);
    assert.equal(found.json.entry.length, 2, JSON.stringify(found.json));
  });
});

describe('an administrative change whose record cannot be appended', { timeout: 60000 }, () => {
  it('is made, prints its secret once, and the command fails saying it was not audited', async () => {
    const srv = await startServer({ name: 'audit-down' });
    const dir = srv.dataDir;
    await srv.stop();
    // An anchor that no longer matches the records: the log refuses to open.
    sqlite(`${dir}/audit/audit.db`, "UPDATE audit_anchor SET mac = zeroblob(32) WHERE id = 1;");
    try {
      const r = runCli(['clients', 'add', '--data-dir', dir, '--client-id', 'orphan-app', '--auth', 'client_secret_basic',
        '--scope', 'system/Patient.r', '--grant-type', 'client_credentials']);
      assert.notEqual(r.code, 0, r.stdout);
      assert.match(r.stdout, /^client orphan-app added \(client_secret_basic\)\nclient_secret: \S+\n$/);
      assert.match(r.stderr, /the change was made but could not be audited: audit: refusing to open/);
      const list = runCli(['clients', 'list', '--data-dir', dir]);
      assert.match(list.stdout, /^orphan-app\t/m);
    } finally {
      fs.rmSync(srv.root, { recursive: true, force: true });
    }
  });
});
