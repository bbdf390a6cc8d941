// SIEM export against a real rsyslog server started here: RFC 5424 over TCP
// and over TLS (rsyslog's ossl driver), plus the JSON-lines file sink. Every
// record arrives, in order, with its Merkle position; a receiver that is down
// loses nothing; a receiver whose certificate does not verify gets nothing.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { spawn, execFileSync } from 'node:child_process';
import {
  startServer, stopAndClean, diagnose, client, mintToken, sqlite, assertStatus, tempRoot, sleep,
  logEvents, waitFor,
} from './lib.mjs';

const RSYSLOGD = ['/usr/sbin/rsyslogd', '/sbin/rsyslogd'].find((p) => fs.existsSync(p));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A CA and a certificate for localhost / 127.0.0.1 signed by it, in DIR. */
function makePki(dir, prefix) {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', `${prefix}ca.key`, '-out', `${prefix}ca.pem`, '-subj', `/CN=${prefix}test ca`, '-days', '2'], dir);
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', `${prefix}srv.key`, '-out', `${prefix}srv.csr`, '-subj', '/CN=localhost'], dir);
  fs.writeFileSync(`${dir}/${prefix}ext`, 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  openssl(['x509', '-req', '-in', `${prefix}srv.csr`, '-CA', `${prefix}ca.pem`, '-CAkey', `${prefix}ca.key`,
    '-CAcreateserial', '-out', `${prefix}srv.pem`, '-days', '2', '-extfile', `${prefix}ext`], dir);
}

class Rsyslog {
  constructor(dir, tlsPort, tcpPort) {
    this.dir = dir;
    this.out = `${dir}/received.log`;
    fs.writeFileSync(`${dir}/rsyslog.conf`, `
global(workDirectory="${dir}" maxMessageSize="64k"
  DefaultNetstreamDriverCAFile="${dir}/ca.pem"
  DefaultNetstreamDriverCertFile="${dir}/srv.pem"
  DefaultNetstreamDriverKeyFile="${dir}/srv.key")
module(load="imtcp" MaxSessions="50")
input(type="imtcp" port="${tlsPort}" name="tls" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="${tcpPort}" name="tcp")
template(name="raw" type="string" string="%inputname% %rawmsg%\\n")
action(type="omfile" file="${this.out}" template="raw")
`);
  }

  async start() {
    this.proc = spawn(RSYSLOGD, ['-n', '-f', `${this.dir}/rsyslog.conf`, '-i', `${this.dir}/rsyslog.pid`],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    this.stderr = '';
    this.proc.stderr.on('data', (d) => { this.stderr += d; });
    this.proc.stdout.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((r) => this.proc.on('exit', r));
    await sleep(700);
    assert.equal(this.proc.exitCode, null, `rsyslogd exited: ${this.stderr}`);
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    await this.exited;
    fs.rmSync(`${this.dir}/rsyslog.pid`, { force: true });
  }

  /** {tls: [{seq, leafHash, record, pri}], tcp: [...]}, in arrival order. */
  received() {
    const out = { tls: [], tcp: [] };
    if (!fs.existsSync(this.out)) return out;
    for (const line of fs.readFileSync(this.out, 'utf8').split('\n')) {
      const m = /^(tls|tcp) <(\d+)>1 (\S+) (\S+) fhirward - (audit|alert) \[fhirward@32473 seq="(\d+)" leaf_hash="([^"]+)"\] (\{.*\})$/.exec(line);
      if (!m) continue;
      out[m[1]].push({ pri: Number(m[2]), seq: Number(m[6]), leafHash: m[7], record: m[8], msgid: m[5] });
    }
    return out;
  }
}

const leafHash = (record) => crypto.createHash('sha256').update(Buffer.concat([Buffer.from([0]), Buffer.from(record, 'utf8')])).digest('base64');

function records(srv) {
  return sqlite(`${srv.dataDir}/audit/audit.db`, 'SELECT seq, record FROM audit_records ORDER BY seq;')
    .trim().split('\n').map((l) => {
      const i = l.indexOf('|');
      return { seq: Number(l.slice(0, i)), record: l.slice(i + 1) };
    });
}

/** Seqs 1..N each at least once, first arrivals in increasing order (duplicates allowed). */
function assertComplete(got, want, what) {
  const seen = new Map();
  let last = 0;
  for (const m of got) {
    if (!seen.has(m.seq)) {
      assert.ok(m.seq > last, `${what}: seq ${m.seq} arrived after ${last}`);
      last = m.seq;
      seen.set(m.seq, m);
    }
  }
  for (const r of want) {
    const m = seen.get(r.seq);
    assert.ok(m, `${what}: record ${r.seq} missing (got ${seen.size} of ${want.length})`);
    assert.equal(m.record, r.record, `${what}: record ${r.seq} differs`);
    assert.equal(m.leafHash, leafHash(r.record), `${what}: leaf hash of ${r.seq}`);
  }
}

describe('SIEM export to rsyslog', { timeout: 180000, skip: RSYSLOGD ? false : 'rsyslogd is not installed (scripts/bootstrap installs it)' }, () => {
  let srv;
  let rs;
  let root;
  let c;

  before(async () => {
    root = tempRoot('fhirward-siem-');
    makePki(root, '');
    makePki(root, 'other-');
    const tlsPort = await freePort();
    const tcpPort = await freePort();
    rs = new Rsyslog(root, tlsPort, tcpPort);
    await rs.start();
    srv = await startServer({
      name: 'siem', root,
      config: `[audit]
tree_head_seconds = 1
[[audit.sink]]
name = "file"
type = "file"
path = "${root}/audit.jsonl"
[[audit.sink]]
name = "siem-tls"
type = "syslog"
host = "127.0.0.1"
port = ${tlsPort}
transport = "tls"
ca_file = "${root}/ca.pem"
server_name = "localhost"
[[audit.sink]]
name = "siem-tcp"
type = "syslog"
host = "127.0.0.1"
port = ${tcpPort}
transport = "tcp"
[[audit.sink]]
name = "wrong-ca"
type = "syslog"
host = "127.0.0.1"
port = ${tlsPort}
transport = "tls"
ca_file = "${root}/other-ca.pem"
server_name = "localhost"
`,
    });
    c = client(srv, mintToken(srv, { sub: 'siem-user', scope: 'user/*.cruds' }));
  });
  after(async () => {
    await rs?.stop();
    await stopAndClean(srv);
  });
  afterEach(diagnose(() => [srv]));

  it('every record reaches rsyslog over TLS and TCP and the file, in order, with its Merkle position', async () => {
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Siem' }] });
    assertStatus(p, 201);
    assertStatus(await c.get(`/Patient/${p.json.id}`), 200);
    assertStatus(await c.get('/Patient/nope'), 404);
    const want = records(srv);
    const n = want[want.length - 1].seq;
    await waitFor('rsyslog to receive everything', () => {
      const got = rs.received();
      return got.tls.some((m) => m.seq >= n) && got.tcp.some((m) => m.seq >= n);
    });
    const got = rs.received();
    assertComplete(got.tls, want, 'tls');
    assertComplete(got.tcp, want, 'tcp');
    const refused = got.tcp.find((m) => JSON.parse(m.record).status_code === 404);
    assert.equal(refused.pri, 13 * 8 + 4, 'a refusal is a warning from facility log audit');
    await waitFor('the file sink', () => fs.existsSync(`${root}/audit.jsonl`)
      && fs.readFileSync(`${root}/audit.jsonl`, 'utf8').split('\n').filter(Boolean).length >= n);
    const lines = fs.readFileSync(`${root}/audit.jsonl`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    lines.slice(0, n).forEach((l, i) => {
      assert.equal(l.seq, i + 1);
      assert.equal(JSON.stringify(l.record), want[i].record);
      assert.equal(l.leaf_hash, leafHash(want[i].record));
    });
    assert.equal((fs.statSync(`${root}/audit.jsonl`).mode & 0o777), 0o600);
  });

  it('a receiver whose certificate does not verify gets nothing, and the operator is told', async () => {
    const down = await waitFor('audit_sink_down for wrong-ca', () => logEvents(srv, 'audit_sink_down').find((e) => e.sink === 'wrong-ca'));
    assert.match(down.detail, /TLS handshake with 127\.0\.0\.1 failed: (self-signed certificate in certificate chain|unable to get local issuer|certificate verify failed)/);
    assert.ok(!fs.existsSync(`${srv.dataDir}/audit/sinks/wrong-ca.cursor`));
  });

  it('while rsyslog is down requests succeed and records queue; when it is back they all arrive, in order', async () => {
    await rs.stop();
    const before = records(srv).length;
    for (let i = 0; i < 10; i++) assertStatus(await c.get('/metadata'), 200);
    const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'WhileDown' }] });
    assertStatus(p, 201);
    await waitFor('audit_sink_down for siem-tcp', () => logEvents(srv, 'audit_sink_down').some((e) => e.sink === 'siem-tcp'));
    const want = records(srv);
    assert.ok(want.length > before + 10);
    await rs.start();
    const n = want[want.length - 1].seq;
    await waitFor('the queued records after the restart', () => {
      const got = rs.received();
      return got.tls.some((m) => m.seq >= n) && got.tcp.some((m) => m.seq >= n);
    }, 40000);
    const got = rs.received();
    assertComplete(got.tls, want, 'tls after the outage');
    assertComplete(got.tcp, want, 'tcp after the outage');
    // The sink reports itself up after it saved its cursor, which is after
    // rsyslog took the batch: wait for the log line rather than race it.
    await waitFor('audit_sink_up for siem-tcp', () => logEvents(srv, 'audit_sink_up').some((e) => e.sink === 'siem-tcp'));
    // Sink errors in the server log carry no record content.
    for (const e of logEvents(srv, 'audit_sink_down')) assert.ok(!JSON.stringify(e).includes('WhileDown'));
  });

  it('cursors survive a restart of the server: records are not all sent again', async () => {
    const e = await srv.stop();
    assert.deepEqual(e, { code: 0, signal: null });
    const cursor = Number(fs.readFileSync(`${srv.dataDir}/audit/sinks/siem-tcp.cursor`, 'utf8'));
    const last = records(srv).at(-1).seq;
    assert.equal(cursor, last, 'the stop record and everything before it was delivered at shutdown');
  });
});
