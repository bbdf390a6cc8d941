// Transport: TLS versions, plain HTTP, the security headers on every response.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { spawnSync } from 'node:child_process';
import {
  startServer, stopAndClean, diagnose, request, mintToken, assertSecurityHeaders, assertFhirJson, waitFor,
} from './lib.mjs';
import { auditRecords } from './oauth-lib.mjs';

function handshake(srv, opts = {}) {
  return new Promise((resolve) => {
    const s = tls.connect({
      host: '127.0.0.1', port: srv.port, servername: 'localhost', ca: srv.ca, ...opts,
    });
    const timer = setTimeout(() => { s.destroy(); resolve({ ok: false, error: 'timeout' }); }, 10000);
    s.once('secureConnect', () => {
      clearTimeout(timer);
      const r = { ok: true, protocol: s.getProtocol(), authorized: s.authorized, cipher: s.getCipher(), authError: s.authorizationError };
      s.end();
      resolve(r);
    });
    s.once('error', (e) => { clearTimeout(timer); resolve({ ok: false, error: `${e.code || ''} ${e.message}` }); });
  });
}

function sClient(srv, flag) {
  const r = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-servername', 'localhost', flag],
    { input: '', encoding: 'utf8', timeout: 15000 });
  return { code: r.status, out: `${r.stdout}\n${r.stderr}` };
}

function plainHttp(srv) {
  return new Promise((resolve) => {
    const s = net.connect(srv.port, '127.0.0.1');
    let data = Buffer.alloc(0);
    const done = (why) => { clearTimeout(timer); s.destroy(); resolve({ why, data }); };
    const timer = setTimeout(() => done('timeout'), 5000);
    s.on('connect', () => s.write('GET /metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\n\r\n'));
    s.on('data', (d) => { data = Buffer.concat([data, d]); });
    s.on('end', () => done('end'));
    s.on('close', () => done('close'));
    s.on('error', (e) => done(`error ${e.code}`));
  });
}

describe('TLS (default config: 1.3 only)', { timeout: 120000 }, () => {
  let srv;
  before(async () => { srv = await startServer({ name: 'tls-default' }); });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('TLS 1.3 handshake with a certificate valid for localhost under DATA/tls/ca.pem', async () => {
    const r = await handshake(srv);
    assert.ok(r.ok, `TLS 1.3 handshake failed: ${r.error}`);
    assert.equal(r.protocol, 'TLSv1.3');
    assert.equal(r.authorized, true, `certificate not trusted: ${r.authError}`);
  });

  it('the certificate is valid for 127.0.0.1 too', async () => {
    const r = await handshake(srv, { servername: undefined });
    assert.ok(r.ok, `handshake without SNI failed: ${r.error}`);
    assert.equal(r.authorized, true, `certificate not valid for 127.0.0.1: ${r.authError}`);
  });

  it('TLS 1.2 is refused (maxVersion TLSv1.2)', async () => {
    const r = await handshake(srv, { maxVersion: 'TLSv1.2' });
    assert.equal(r.ok, false, `a TLS 1.2 handshake succeeded (${r.protocol}, ${JSON.stringify(r.cipher)})`);
  });

  it('TLS 1.1 is refused (maxVersion TLSv1.1)', async () => {
    const r = await handshake(srv, { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1' });
    assert.equal(r.ok, false, `a TLS 1.1 handshake succeeded (${r.protocol})`);
  });

  it('openssl s_client: -tls1_3 connects, -tls1_2 and -tls1_1 fail', () => {
    const ok = sClient(srv, '-tls1_3');
    assert.equal(ok.code, 0, `openssl s_client -tls1_3 should connect (sanity check of the tool):\n${ok.out}`);
    assert.match(ok.out, /TLSv1\.3/);
    const t12 = sClient(srv, '-tls1_2');
    assert.notEqual(t12.code, 0, `openssl s_client -tls1_2 connected:\n${t12.out}`);
    const t11 = sClient(srv, '-tls1_1');
    assert.notEqual(t11.code, 0, `openssl s_client -tls1_1 connected:\n${t11.out}`);
  });

  it('plain HTTP to the port gets no HTTP 200', async () => {
    const r = await plainHttp(srv);
    const text = r.data.toString('latin1');
    assert.ok(!/^HTTP\/1\.[01] 200/.test(text), `plain HTTP got a 200: ${text.slice(0, 300)}`);
    assert.ok(!text.includes('CapabilityStatement'), 'plain HTTP got data');
  });

  it('the server still serves after the refused handshakes', async () => {
    const r = await request(srv, 'GET', '/metadata');
    assert.equal(r.status, 200, `GET /metadata: ${r.status} ${r.text.slice(0, 300)}`);
  });

  it('security headers on 200, 401, 404 and 406 responses', async () => {
    const tok = mintToken(srv, { sub: 'hdr' });
    const rs = [
      ['GET /metadata', await request(srv, 'GET', '/metadata')],
      ['GET /Patient/x without token', await request(srv, 'GET', '/Patient/x')],
      ['GET /Patient/x', await request(srv, 'GET', '/Patient/x', { token: tok })],
      ['GET /Patient/x Accept xml', await request(srv, 'GET', '/Patient/x', { token: tok, accept: 'application/xml' })],
    ];
    assert.deepEqual(rs.map(([, r]) => r.status), [200, 401, 404, 406]);
    for (const [what, r] of rs) {
      assertSecurityHeaders(r, what);
      assertFhirJson(r, what);
    }
  });
});

describe('TLS with [tls] min_version = "1.2"', { timeout: 60000 }, () => {
  let srv;
  before(async () => { srv = await startServer({ name: 'tls-12', config: '[tls]\nmin_version = "1.2"\n' }); });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('TLS 1.2 is accepted, with an ECDHE AEAD suite', async () => {
    const r = await handshake(srv, { maxVersion: 'TLSv1.2' });
    assert.ok(r.ok, `TLS 1.2 handshake failed with min_version 1.2: ${r.error}`);
    assert.equal(r.protocol, 'TLSv1.2');
    assert.match(r.cipher.name, /^ECDHE-.*(GCM|CHACHA20)/, `cipher ${JSON.stringify(r.cipher)}`);
  });

  it('TLS 1.2 with a CBC suite is refused', async () => {
    const r = await handshake(srv, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA' });
    assert.equal(r.ok, false, `CBC suite accepted: ${JSON.stringify(r.cipher)}`);
  });

  it('TLS 1.3 still works and TLS 1.1 is refused', async () => {
    const r13 = await handshake(srv);
    assert.equal(r13.protocol, 'TLSv1.3');
    const r11 = await handshake(srv, { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1' });
    assert.equal(r11.ok, false, 'TLS 1.1 accepted');
  });
});

describe('TLS certificate rotation while serving', { timeout: 120000 }, () => {
  let srv;
  before(async () => { srv = await startServer({ name: 'tls-rotate' }); });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  /** The fingerprint (SHA-256) of the certificate a new handshake gets. */
  const servedFingerprint = () => new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: srv.port, servername: 'localhost', ca: srv.ca });
    s.once('secureConnect', () => { const fp = s.getPeerCertificate().fingerprint256; s.end(); resolve(fp); });
    s.once('error', reject);
  });
  const fileFingerprint = (pem) => new crypto.X509Certificate(pem).fingerprint256;
  const sha256 = (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');
  const tlsRecords = () => auditRecords(srv, { action: 'tls.reload' });
  const openssl = (args) => {
    const r = spawnSync('openssl', args, { encoding: 'utf8' });
    assert.equal(r.status, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
  };

  it('SIGHUP serves a new certificate from the same CA and puts it on the trail; a broken one is refused and recorded', async () => {
    const dir = `${srv.dataDir}/tls`;
    const t = `${srv.root}/newcert`;
    fs.mkdirSync(t);
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${t}/server.key`]);
    openssl(['req', '-new', '-key', `${t}/server.key`, '-subj', '/CN=localhost', '-out', `${t}/server.csr`]);
    fs.writeFileSync(`${t}/ext`, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    openssl(['x509', '-req', '-in', `${t}/server.csr`, '-CA', `${dir}/ca.pem`, '-CAkey', `${dir}/ca.key`,
      '-CAcreateserial', '-days', '2', '-extfile', `${t}/ext`, '-out', `${t}/server.pem`]);
    const before = await servedFingerprint();
    const pem = fs.readFileSync(`${t}/server.pem`);
    assert.notEqual(fileFingerprint(pem), before);
    // Key, then certificate, each replaced atomically; then SIGHUP.
    fs.copyFileSync(`${t}/server.key`, `${dir}/server.key.new`);
    fs.renameSync(`${dir}/server.key.new`, `${dir}/server.key`);
    fs.copyFileSync(`${t}/server.pem`, `${dir}/server.pem.new`);
    fs.renameSync(`${dir}/server.pem.new`, `${dir}/server.pem`);
    srv.term('SIGHUP');
    await waitFor('the new certificate served', async () => (await servedFingerprint()) === fileFingerprint(pem));
    const ok = await waitFor('tls.reload success on the trail', () => tlsRecords().find((r) => r.outcome === 'success'
      && r.decision === `${dir}/server.pem sha256=${sha256(pem)}`));
    assert.equal(ok.subject, 'fhirward-server');
    assert.equal(ok.resource_type, 'Certificate');
    // A certificate that does not parse: refused, the new one stays, the refusal is recorded.
    fs.writeFileSync(`${dir}/server.pem.new`, '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
    fs.renameSync(`${dir}/server.pem.new`, `${dir}/server.pem`);
    srv.term('SIGHUP');
    const bad = await waitFor('tls.reload failed on the trail', () => tlsRecords().find((r) => r.outcome === 'failed'));
    assert.equal(bad.error, 'certificate_refused');
    assert.match(bad.decision, /server\.pem sha256=[0-9a-f]{64}; kept the previous one: /);
    assert.equal(await servedFingerprint(), fileFingerprint(pem));
    // The private key never reaches the trail.
    const raw = fs.readFileSync(`${srv.dataDir}/audit/audit.db`);
    const keyBody = fs.readFileSync(`${t}/server.key`, 'utf8').split('\n')[1];
    assert.equal(raw.indexOf(keyBody), -1);
    // Put a valid certificate back so that the server stops cleanly.
    fs.copyFileSync(`${t}/server.pem`, `${dir}/server.pem`);
  });

  it('server-start names the configuration and certificate digests', () => {
    const [start] = auditRecords(srv, { action: 'server-start' });
    assert.match(start.decision, /^tls_cert .*\/tls\/server\.pem sha256=[0-9a-f]{64}$/);
  });
});
