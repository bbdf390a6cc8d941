// CLI surface: --help, version, serve's data-dir layout, config validation, token mint.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import {
  BIN, runCli, startServer, stopAndClean, tempRoot, mintToken, diagnose, request,
} from './lib.mjs';

describe('fhirward CLI', { timeout: 120000 }, () => {
  it('--help exits 0 and lists the subcommands', () => {
    const r = runCli(['--help']);
    assert.equal(r.code, 0, `--help exit code; stderr: ${r.stderr}`);
    const text = r.stdout + r.stderr;
    for (const cmd of ['serve', 'token', 'audit', 'version']) {
      assert.match(text, new RegExp(`\\b${cmd}\\b`), `--help does not mention "${cmd}":\n${text}`);
    }
  });

  it('version exits 0 and prints something', () => {
    const r = runCli(['version']);
    assert.equal(r.code, 0, `version exit code; stderr: ${r.stderr}`);
    assert.ok(r.stdout.trim().length > 0, 'version printed nothing on stdout');
  });

  it('an unknown subcommand fails', () => {
    const r = runCli(['no-such-subcommand']);
    assert.notEqual(r.code, 0, 'unknown subcommand should exit non-zero');
  });

  describe('config validation (serve refuses to start)', () => {
    const roots = [];
    after(() => { for (const r of roots) fs.rmSync(r, { recursive: true, force: true }); });
    const cases = [
      ['an unknown key in a known section', '[http]\nmax_body_byte = 5\n', 'max_body_byte'],
      ['an unknown section', '[bogus_section]\nx = 1\n', 'bogus_section'],
      ['an unknown key in [fhir]', '[fhir]\nupdate_creat = true\n', 'update_creat'],
      ['an unknown key in [rate_limit]', '[rate_limit]\nper_second = 5\nburts = 3\n', 'burts'],
      ['tls.min_version = "1.1"', '[tls]\nmin_version = "1.1"\n', 'min_version'],
    ];
    for (const [what, toml, key] of cases) {
      it(`${what} -> non-zero exit naming "${key}"`, () => {
        const root = tempRoot();
        roots.push(root);
        fs.writeFileSync(`${root}/c.toml`, toml);
        const r = runCli(['serve', '--data-dir', `${root}/data`, '--listen', '127.0.0.1:0', '--config', `${root}/c.toml`], { timeoutMs: 15000 });
        assert.equal(r.signal, null, `serve did not exit by itself within 15 s (it should refuse the config); stdout: ${r.stdout}`);
        assert.notEqual(r.code, 0, `serve accepted config ${JSON.stringify(toml)}; stdout: ${r.stdout}`);
        assert.ok((r.stderr + r.stdout).includes(key), `error output does not name "${key}":\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
        assert.ok(!/listening on/.test(r.stdout), 'serve printed "listening on" with a bad config');
      });
    }
  });

  describe('serve on a fresh data dir', () => {
    let srv;
    before(async () => { srv = await startServer({ name: 'cli' }); });
    after(async () => { await stopAndClean(srv); });
    afterEach(diagnose(() => [srv]));

    it('prints exactly "listening on https://127.0.0.1:PORT"', () => {
      assert.match(srv.stdout, /^listening on https:\/\/127\.0\.0\.1:\d+\s*$/m);
      assert.ok(srv.port > 0 && srv.port < 65536);
    });

    it('creates the data-dir layout', () => {
      const d = srv.dataDir;
      for (const f of ['tls/ca.pem', 'tls/server.pem', 'tls/server.key', 'keys/kek.key',
        'keys/signing-es256.pem', 'instance.json', 'db/fhir.db', 'audit/audit.db']) {
        assert.ok(fs.existsSync(`${d}/${f}`), `missing ${d}/${f}`);
      }
      const kek = fs.statSync(`${d}/keys/kek.key`).mode & 0o777;
      assert.equal(kek.toString(8), '600', 'keys/kek.key mode');
      const sk = fs.statSync(`${d}/keys/signing-es256.pem`).mode & 0o077;
      assert.equal(sk, 0, 'keys/signing-es256.pem must not be group/other accessible');
      const tk = fs.statSync(`${d}/tls/server.key`).mode & 0o077;
      assert.equal(tk, 0, 'tls/server.key must not be group/other accessible');
      assert.match(fs.readFileSync(`${d}/tls/ca.pem`, 'utf8'), /BEGIN CERTIFICATE/);
    });

    it('instance.json has issuer, audience and signing_kid', () => {
      const inst = JSON.parse(fs.readFileSync(`${srv.dataDir}/instance.json`, 'utf8'));
      for (const k of ['issuer', 'audience', 'signing_kid']) {
        assert.equal(typeof inst[k], 'string', `instance.json ${k}: ${JSON.stringify(inst)}`);
        assert.ok(inst[k].length > 0, `instance.json ${k} empty`);
      }
    });

    it('token mint prints a JWT carrying the instance identity', async () => {
      const tok = mintToken(srv, { sub: 'cli-user', scope: 'user/Patient.rs', ttl: 120 });
      const [h, p] = tok.split('.').slice(0, 2).map((s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8')));
      assert.equal(h.alg, 'ES256');
      assert.equal(h.kid, srv.instance.signing_kid);
      assert.equal(p.iss, srv.instance.issuer);
      const aud = Array.isArray(p.aud) ? p.aud : [p.aud];
      assert.ok(aud.includes(srv.instance.audience), `aud ${JSON.stringify(p.aud)}`);
      assert.equal(p.sub, 'cli-user');
      assert.equal(p.scope, 'user/Patient.rs');
      assert.ok(Math.abs(p.exp - p.iat - 120) <= 1, `--ttl 120 gave exp-iat = ${p.exp - p.iat}`);
      const r = await request(srv, 'GET', '/Patient/nobody', { token: tok });
      assert.equal(r.status, 404, `a minted token should be accepted: HTTP ${r.status} ${r.text}`);
      const pt = mintToken(srv, { sub: 'cli-patient', scope: 'patient/*.rs', patient: 'p1' });
      const pc = JSON.parse(Buffer.from(pt.split('.')[1], 'base64url').toString('utf8'));
      assert.equal(pc.patient, 'p1', `--patient p1 claim: ${JSON.stringify(pc)}`);
    });

    it('stderr is JSON lines, through shutdown', async () => {
      assert.deepEqual(await srv.stop(), { code: 0, signal: null }, 'SIGTERM exit');
      const lines = srv.stderrLines.filter((l) => l.trim());
      assert.ok(lines.length > 0, 'serve logged nothing on stderr');
      const bad = lines.filter((l) => { try { JSON.parse(l); return false; } catch { return true; } });
      assert.deepEqual(bad, [], 'stderr lines that are not JSON');
    });
  });

  it('a restart keeps the identity of the data dir', async () => {
    const srv = await startServer({ name: 'cli-restart' });
    try {
      const inst1 = fs.readFileSync(`${srv.dataDir}/instance.json`, 'utf8');
      const ca1 = fs.readFileSync(`${srv.dataDir}/tls/ca.pem`, 'utf8');
      const tok = mintToken(srv, { sub: 'restart-user' });
      assert.deepEqual(await srv.stop(), { code: 0, signal: null }, 'SIGTERM exit');
      const srv2 = await startServer({ name: 'cli-restart-2', root: srv.root, dataDir: srv.dataDir });
      try {
        assert.equal(fs.readFileSync(`${srv.dataDir}/instance.json`, 'utf8'), inst1, 'instance.json changed on restart');
        assert.equal(fs.readFileSync(`${srv.dataDir}/tls/ca.pem`, 'utf8'), ca1, 'CA changed on restart');
        const r = await request(srv2, 'GET', '/Patient/nobody', { token: tok });
        assert.equal(r.status, 404, `token minted before the restart: HTTP ${r.status} ${r.text}`);
      } finally {
        await srv2.stop();
      }
    } finally {
      await stopAndClean(srv);
    }
  });

  it(`binary under test: ${BIN}`, () => {});
});
