// Security alerts end to end: rules from the configuration evaluated over the
// audit trail by the running server, each alert an audit record of its own
// (searchable as an AuditEvent), shipped to a file sink and to a signed
// webhook (an HTTP endpoint started here), and `fhirward alerts test`
// proving every rule fires and reaches every sink.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { spawn } from 'node:child_process';
import {
  BIN, startServer, stopAndClean, diagnose, client, runCli, request, assertStatus, tempRoot, sleep,
  mintToken, waitFor,
} from './lib.mjs';

/** `fhirward ARGS` without blocking this process (the webhook endpoint runs in it). */
function runCliAsync(args, timeoutMs = 90000) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`fhirward ${args[0]} timed out`)); }, timeoutMs);
    p.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

/** An HTTP endpoint on 127.0.0.1 that keeps every POST. */
function startHook() {
  const got = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      got.push({ method: req.method, url: req.url, headers: req.headers, body });
      res.writeHead(204);
      res.end();
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, got, port: server.address().port }));
  });
}

const SECRET = 'webhook-shared-secret-0001';

describe('security alerts', { timeout: 180000 }, () => {
  let srv;
  let hook;
  let root;
  let config;
  let auditor;

  before(async () => {
    root = tempRoot('fhirward-alerts-');
    hook = await startHook();
    fs.writeFileSync(`${root}/hook.secret`, `${SECRET}\n`, { mode: 0o600 });
    config = `[rate_limit]
per_second = 100000
burst = 100000
[[audit.alert]]
name = "mass-read"
kind = "mass_access"
patients = 3
window_seconds = 300
[[audit.alert]]
name = "denials"
kind = "denial_spike"
by = "address"
threshold = 5
window_seconds = 60
[[audit.alert]]
name = "btg"
kind = "break_glass"
[[audit.alert]]
name = "logins"
kind = "failed_login"
by = "address"
threshold = 10
[[audit.alert]]
name = "odd-client"
kind = "anomaly"
bucket_seconds = 60
warmup_buckets = 30
[[audit.sink]]
name = "file"
type = "file"
path = "${root}/audit.jsonl"
[[audit.sink]]
name = "pager"
type = "webhook"
url = "http://127.0.0.1:${hook.port}/fhirward-alerts"
secret_file = "${root}/hook.secret"
`;
    fs.writeFileSync(`${root}/server.toml`, config);
    srv = await startServer({ name: 'alerts', root, config });
    auditor = client(srv, mintToken(srv, { sub: 'ann-auditor', scope: 'user/*.rs', roles: 'auditor' }));
  });
  after(async () => {
    await stopAndClean(srv);
    hook?.server.close();
  });
  afterEach(diagnose(() => [srv]));

  const fileAlerts = () => (fs.existsSync(`${root}/audit.jsonl`)
    ? fs.readFileSync(`${root}/audit.jsonl`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
      .filter((l) => l.record.action.startsWith('alert.'))
    : []);

  it('one principal reading more than N patients raises mass_access: in the trail, the file, the webhook', async () => {
    const admin = client(srv, mintToken(srv, { sub: 'registrar', scope: 'user/*.cruds' }));
    const ids = [];
    for (let i = 0; i < 4; i++) {
      const p = await admin.post('/Patient', { resourceType: 'Patient', name: [{ family: `Mass${i}` }] });
      assertStatus(p, 201);
      ids.push(p.json.id);
    }
    const reader = client(srv, mintToken(srv, { sub: 'curious-clerk', scope: 'user/*.rs', clientId: 'ehr-app' }));
    for (const id of ids.slice(0, 3)) assertStatus(await reader.get(`/Patient/${id}`), 200);
    await sleep(1500);
    assert.equal(fileAlerts().filter((l) => l.record.action === 'alert.mass-read').length, 0, 'three patients: not more than 3');
    assertStatus(await reader.get(`/Patient/${ids[3]}`), 200);

    const line = await waitFor('alert.mass-read in the file sink',
      () => fileAlerts().find((l) => l.record.action === 'alert.mass-read'));
    const a = line.record;
    assert.equal(a.subject, 'curious-clerk');
    assert.equal(a.client_id, 'ehr-app');
    assert.equal(a.count, 4);
    assert.match(a.decision, /^rule=mass-read kind=mass_access by=principal key=curious-clerk value=4 threshold=3 window=300s first_seq=\d+ last_seq=\d+ measure=patients$/);
    assert.equal(a.resource_type, 'AuditEvent');

    // The webhook: signed, alerts only, no patient ids.
    const post = await waitFor('the webhook', () => hook.got.find((g) => JSON.parse(g.body).alert === 'mass-read'));
    assert.equal(post.method, 'POST');
    assert.equal(post.url, '/fhirward-alerts');
    assert.equal(post.headers['content-type'], 'application/json');
    const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(post.headers['x-fhirward-signature']);
    assert.ok(m, post.headers['x-fhirward-signature']);
    assert.ok(Math.abs(Number(m[1]) - Date.now() / 1000) < 120, 'signature timestamp is now');
    const want = crypto.createHmac('sha256', SECRET).update(`${m[1]}.${post.body}`).digest('hex');
    assert.equal(m[2], want, 'HMAC-SHA256 over t.body');
    const body = JSON.parse(post.body);
    assert.equal(body.seq, line.seq);
    assert.equal(post.headers['x-fhirward-seq'], String(line.seq));
    assert.equal(body.leaf_hash, line.leaf_hash);
    assert.equal(body.kind, 'mass_access');
    assert.equal(body.subject, 'curious-clerk');
    assert.equal(body.audit_event, `AuditEvent/${line.seq}`);
    assert.equal(body.test, false);
    for (const id of ids) assert.ok(!post.body.includes(id), 'no patient id in the webhook body');
    for (const g of hook.got) assert.ok(JSON.parse(g.body).alert, 'only alerts reach the webhook');

    // Auditors find it through the FHIR API.
    const s = await auditor.get(`/AuditEvent?subtype=alert.mass-read`);
    assertStatus(s, 200);
    const ev = s.json.entry.map((e) => e.resource).find((e) => e.id === String(line.seq));
    assert.ok(ev, `AuditEvent/${line.seq} in ${JSON.stringify(s.json.entry?.map((e) => e.resource.id))}`);
    assert.equal(ev.type.code, '110113');
    assert.equal(ev.subtype[0].code, 'alert.mass-read');
    // And the server log names the rule, never who or which patients.
    const logged = srv.stderrLines.filter((l) => l.includes('"security_alert"')).map((l) => JSON.parse(l));
    assert.ok(logged.some((l) => l.rule === 'mass-read' && l.audit_seq === line.seq));
    for (const l of logged) assert.ok(!JSON.stringify(l).includes('curious-clerk'));
  });

  it('a burst of refusals from one address raises denial_spike once per window', async () => {
    for (let i = 0; i < 8; i++) assertStatus(await request(srv, 'GET', '/Patient'), 401);
    const line = await waitFor('alert.denials', () => fileAlerts().find((l) => l.record.action === 'alert.denials'));
    assert.equal(line.record.client_address, '127.0.0.1');
    assert.match(line.record.decision, /kind=denial_spike by=address key=127\.0\.0\.1 value=6 threshold=5 window=60s/);
    await sleep(1500);
    assert.equal(fileAlerts().filter((l) => l.record.action === 'alert.denials').length, 1, 'quiet for the window');
  });

  it('`fhirward alerts test` fires every rule and confirms each alert at every sink', async () => {
    const before = hook.got.length;
    const r = await runCliAsync(['alerts', 'test', '--data-dir', srv.dataDir, '--config', `${root}/server.toml`, '--timeout', '60']);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    for (const rule of ['mass-read', 'denials', 'btg', 'logins', 'odd-client']) {
      assert.match(r.stdout, new RegExp(`rule ${rule} \\(\\w+\\): fired; alert appended as AuditEvent/\\d+`));
      assert.match(r.stdout, new RegExp(`sink file \\(file\\): alert\\.${rule} AuditEvent/\\d+ confirmed: the line is in`));
      assert.match(r.stdout, new RegExp(`sink pager \\(webhook\\): alert\\.${rule} AuditEvent/\\d+ confirmed: the endpoint answered 2xx`));
    }
    assert.match(r.stdout, /ok: 5 rules fired, every alert reached all 2 sinks/);
    const tests = hook.got.slice(before).map((g) => JSON.parse(g.body)).filter((b) => b.test);
    assert.deepEqual(tests.map((b) => b.alert).sort(), ['btg', 'denials', 'logins', 'mass-read', 'odd-client']);
    // Marked as tests in the trail too.
    const marked = fileAlerts().filter((l) => / test=1$/.test(l.record.decision));
    assert.equal(marked.length, 5);
  });

  it('`alerts test` fails when a sink does not deliver, and names it', async () => {
    const bad = `${config}[[audit.sink]]\nname = "nobody"\ntype = "file"\npath = "${root}/never.jsonl"\n`;
    fs.writeFileSync(`${root}/bad.toml`, bad);
    const r = await runCliAsync(['alerts', 'test', '--data-dir', srv.dataDir, '--config', `${root}/bad.toml`, '--timeout', '2']);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout, /sink nobody \(file\): alert\.btg AuditEvent\/\d+ NOT delivered/);
    assert.match(r.stdout, /sink file \(file\): alert\.btg AuditEvent\/\d+ confirmed/);
    assert.match(r.stderr, /not every alert was confirmed at every sink/);
    // A configuration without rules is refused.
    fs.writeFileSync(`${root}/none.toml`, '[audit]\ntree_head_seconds = 60\n');
    const n = runCli(['alerts', 'test', '--data-dir', srv.dataDir, '--config', `${root}/none.toml`]);
    assert.notEqual(n.code, 0);
    assert.match(n.stderr, /no \[\[audit\.alert\]\] rules/);
  });

  it('rules are checked at start: an unknown kind or setting is a clear error', () => {
    for (const [toml, msg] of [
      ['[[audit.alert]]\nname = "x"\nkind = "geo"\n', /kind is mass_access, failed_login/],
      ['[[audit.alert]]\nname = "x"\nkind = "failed_login"\n', /threshold must be at least 1/],
      ['[[audit.alert]]\nname = "x"\nkind = "break_glass"\ncolour = "red"\n', /audit\.alert\.colour: unknown setting/],
      ['[[audit.sink]]\nname = "w"\ntype = "webhook"\nurl = "http://example.org/x"\n', /http only to a loopback host/],
    ]) {
      fs.writeFileSync(`${root}/check.toml`, toml);
      const r = runCli(['alerts', 'test', '--data-dir', srv.dataDir, '--config', `${root}/check.toml`]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, msg);
    }
  });
});
