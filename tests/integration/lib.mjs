// Shared helpers for the fhirward integration tests (Node 20 built-ins only).
//
//   startServer()   a `fhirward serve` in a fresh temp data dir on 127.0.0.1:0
//   request()       HTTPS to it, trusting DATA/tls/ca.pem (servername localhost)
//   mintToken()     `fhirward token mint`
//   forgeJwt()      hand-made access tokens (expired, wrong aud, alg=none, ...)
//   runCli()        any other `fhirward` subcommand
//   sqlite()        the sqlite3 CLI, for tampering with the stores
//   assertOutcome() the OperationOutcome error contract
//   diagnose()      afterEach hook: dumps server logs and recent exchanges of a failed test
//
// FHIRWARD_BIN must name the binary (tests/run-integration sets it).
// FHIRWARD_KEEP_DATA=1 keeps the temp data dirs for inspection.
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

export const BIN = process.env.FHIRWARD_BIN;
if (!BIN) {
  throw new Error('FHIRWARD_BIN is not set (run tests through tests/run-integration PATH/TO/fhirward)');
}
const TMP = (process.env.TMPDIR || '/tmp').replace(/\/+$/, '');

// ---------------------------------------------------------------------------
// Process bookkeeping: never leave a server behind, whatever happens.
const live = new Set();
function killAll() {
  for (const s of live) {
    try { s.proc.kill('SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { killAll(); process.exit(130); });
}

export function tempRoot(prefix = 'fhirward-it-') {
  return fs.mkdtempSync(`${TMP}/${prefix}`);
}

export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

export function randomId(prefix = '') {
  return prefix + crypto.randomBytes(6).toString('hex');
}

// ---------------------------------------------------------------------------
// Server

/**
 * Starts `fhirward serve`. Options:
 *   config: TOML text (written to ROOT/config.toml and passed as --config)
 *   dataDir: reuse an existing data dir (restart); default ROOT/data (created by serve)
 *   root: temp root to reuse (with dataDir)
 *   name: label for diagnostics
 */
export async function startServer({ config, dataDir, root, name = 'server', timeoutMs = 30000 } = {}) {
  root = root || tempRoot();
  dataDir = dataDir || `${root}/data`;
  const args = ['serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0'];
  if (config !== undefined) {
    const file = `${root}/config-${crypto.randomBytes(3).toString('hex')}.toml`;
    fs.writeFileSync(file, config);
    args.push('--config', file);
  }
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const srv = {
    name, root, dataDir, proc, args,
    port: 0, base: '', stdout: '', stderrLines: [], exchanges: [],
    exit: null, agent: null, ca: null, secrets: [],
  };
  live.add(srv);
  let errBuf = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    errBuf += d;
    let i;
    while ((i = errBuf.indexOf('\n')) >= 0) {
      srv.stderrLines.push(errBuf.slice(0, i));
      errBuf = errBuf.slice(i + 1);
    }
  });
  proc.stderr.on('end', () => { if (errBuf) srv.stderrLines.push(errBuf); errBuf = ''; });
  proc.stdout.setEncoding('utf8');
  srv.exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      srv.exit = { code, signal };
      live.delete(srv);
      resolve(srv.exit);
    });
  });
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: no "listening on" line within ${timeoutMs} ms`)), timeoutMs);
    proc.stdout.on('data', (d) => {
      srv.stdout += d;
      const m = /listening on https:\/\/127\.0\.0\.1:(\d+)/.exec(srv.stdout);
      if (m && !srv.port) {
        clearTimeout(timer);
        srv.port = Number(m[1]);
        resolve();
      }
    });
    srv.exited.then((e) => {
      clearTimeout(timer);
      reject(new Error(`${name}: exited (${JSON.stringify(e)}) before listening`));
    });
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
  try {
    await listening;
  } catch (e) {
    killAll();
    throw new Error(`${e.message}\n  command: ${BIN} ${args.join(' ')}\n  stdout: ${srv.stdout}\n  stderr:\n${srv.stderrLines.join('\n')}`);
  }
  srv.base = `https://127.0.0.1:${srv.port}`;
  srv.ca = fs.readFileSync(`${dataDir}/tls/ca.pem`);
  srv.agent = new https.Agent({ keepAlive: true, ca: srv.ca, servername: 'localhost', maxSockets: 64 });
  srv.instance = JSON.parse(fs.readFileSync(`${dataDir}/instance.json`, 'utf8'));
  srv.stderrText = () => srv.stderrLines.join('\n');
  srv.termSent = false;
  srv.term = (signal = 'SIGTERM') => {
    if (signal === 'SIGTERM') srv.termSent = true;
    srv.proc.kill(signal);
  };
  /** SIGTERM (default) and wait; returns {code, signal}. */
  srv.stop = async ({ signal = 'SIGTERM', timeoutMs: t = 30000, destroyAgent = true } = {}) => {
    if (destroyAgent && srv.agent) srv.agent.destroy();
    if (srv.exit) return srv.exit;
    // A second SIGTERM means "stop at once": send it only once.
    if (signal !== 'SIGTERM' || !srv.termSent) srv.term(signal);
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), t); });
    const r = await Promise.race([srv.exited, timeout]);
    clearTimeout(timer);
    if (r === 'timeout') {
      srv.proc.kill('SIGKILL');
      await srv.exited;
      throw new Error(`${name}: did not exit within ${t} ms of ${signal}`);
    }
    return srv.exit;
  };
  return srv;
}

/** Stops the server (asserting a clean exit 0 on SIGTERM) and removes its temp root. */
export async function stopAndClean(srv, { keep = false } = {}) {
  if (!srv) return;
  const e = await srv.stop();
  if (!keep && process.env.FHIRWARD_KEEP_DATA !== '1') {
    fs.rmSync(srv.root, { recursive: true, force: true });
  } else {
    console.log(`# kept data of ${srv.name} in ${srv.root}`);
  }
  assert.deepEqual(e, { code: 0, signal: null }, `${srv.name}: SIGTERM should drain and exit 0; stderr:\n${srv.stderrText()}`);
}

// ---------------------------------------------------------------------------
// HTTPS

/**
 * One HTTPS exchange. opts: headers, body (object -> JSON; string/Buffer raw),
 * token (Bearer), contentType (default application/fhir+json when a body is
 * given), timeoutMs, chunked (send without Content-Length), agent.
 * Returns { status, headers (lower-case names), text, buf, json }.
 */
export function request(srv, method, path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  let body = opts.body;
  if (body !== undefined && body !== null && !Buffer.isBuffer(body) && typeof body !== 'string') {
    body = JSON.stringify(body);
  }
  if (body !== undefined && body !== null) {
    body = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type') && opts.contentType !== null) {
      headers['Content-Type'] = opts.contentType || 'application/fhir+json';
    }
    if (!opts.chunked) headers['Content-Length'] = String(body.length);
  }
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  if (!Object.keys(headers).some((h) => h.toLowerCase() === 'accept') && opts.accept !== null) {
    headers.Accept = opts.accept || 'application/fhir+json';
  }
  const timeoutMs = opts.timeoutMs ?? 20000;
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: srv.port, method, path, headers,
      agent: opts.agent === undefined ? srv.agent : opts.agent,
      ca: srv.ca, servername: 'localhost',
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const buf = Buffer.concat(chunks);
        const text = buf.toString('utf8');
        let json;
        if (text.length) { try { json = JSON.parse(text); } catch { /* not JSON */ } }
        const out = { status: res.statusCode, headers: res.headers, text, buf, json, ms: Date.now() - started };
        record(srv, method, path, headers, body, out);
        resolve(out);
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no response within ${timeoutMs} ms`)));
    req.on('error', (e) => {
      record(srv, method, path, headers, body, { error: String(e) });
      reject(new Error(`${method} ${path}: ${e.message}`));
    });
    if (body) req.end(body); else req.end();
  });
}

function redact(h) {
  const o = { ...h };
  for (const k of Object.keys(o)) if (k.toLowerCase() === 'authorization') o[k] = `${String(o[k]).slice(0, 20)}...`;
  return o;
}

function record(srv, method, path, headers, body, res) {
  srv.exchanges.push({
    at: new Date().toISOString(), method, path: path.length > 300 ? `${path.slice(0, 300)}...` : path,
    reqHeaders: redact(headers),
    reqBody: body ? body.subarray(0, 300).toString('utf8') + (body.length > 300 ? `...(${body.length} bytes)` : '') : undefined,
    status: res.status, error: res.error, resHeaders: res.headers,
    resBody: res.text !== undefined ? res.text.slice(0, 800) + (res.text.length > 800 ? '...' : '') : undefined,
  });
  if (srv.exchanges.length > 2000) srv.exchanges.splice(0, 1000);
}

/** Shorthand helpers bound to one server and (optionally) a default token. */
export function client(srv, token) {
  const c = (method, path, opts = {}) => request(srv, method, path, { token, ...opts });
  c.get = (p, o) => c('GET', p, o);
  c.post = (p, body, o = {}) => c('POST', p, { body, ...o });
  c.put = (p, body, o = {}) => c('PUT', p, { body, ...o });
  c.del = (p, o) => c('DELETE', p, o);
  c.token = token;
  return c;
}

/** Follows a Bundle link url on our server (the host part is ignored). */
export function linkPath(url) {
  const u = new URL(url, 'https://localhost');
  return u.pathname + u.search;
}

export function nextLink(bundle) {
  const l = (bundle.link || []).find((x) => x.relation === 'next');
  return l ? l.url : undefined;
}

// ---------------------------------------------------------------------------
// Assertions

export function describeRes(res) {
  if (!res) return '(no response)';
  return `HTTP ${res.status}\n  headers: ${JSON.stringify(res.headers)}\n  body: ${(res.text || '').slice(0, 1500)}`;
}

export function assertStatus(res, expected, what = '') {
  const ok = Array.isArray(expected) ? expected.includes(res.status) : res.status === expected;
  assert.ok(ok, `${what ? `${what}: ` : ''}expected HTTP ${JSON.stringify(expected)}, got ${describeRes(res)}`);
}

export function assertFhirJson(res, what = '') {
  assert.equal(res.headers['content-type'], 'application/fhir+json; charset=utf-8',
    `${what}: Content-Type of a JSON body; ${describeRes(res)}`);
  assert.ok(res.json !== undefined, `${what}: body is not JSON; ${describeRes(res)}`);
}

/** status, OperationOutcome with issue[0].severity error, issue code and (optional) details code(s). */
export function assertOutcome(res, status, issueCode, detailsCode, what = '') {
  assertStatus(res, status, what);
  assertFhirJson(res, what);
  const oo = res.json;
  assert.equal(oo.resourceType, 'OperationOutcome', `${what}: body is not an OperationOutcome; ${describeRes(res)}`);
  assert.ok(Array.isArray(oo.issue) && oo.issue.length > 0, `${what}: OperationOutcome without issue; ${describeRes(res)}`);
  const i = oo.issue[0];
  assert.equal(i.severity, 'error', `${what}: issue[0].severity; ${describeRes(res)}`);
  if (issueCode) {
    const codes = Array.isArray(issueCode) ? issueCode : [issueCode];
    assert.ok(codes.includes(i.code), `${what}: issue[0].code ${JSON.stringify(i.code)} not in ${JSON.stringify(codes)}; ${describeRes(res)}`);
  }
  if (detailsCode) {
    const got = i.details && i.details.coding && i.details.coding[0] && i.details.coding[0].code;
    const codes = Array.isArray(detailsCode) ? detailsCode : [detailsCode];
    assert.ok(codes.includes(got), `${what}: issue[0].details.coding[0].code ${JSON.stringify(got)} not in ${JSON.stringify(codes)}; ${describeRes(res)}`);
  }
}

/** The headers every response must carry. */
export function assertSecurityHeaders(res, what = '') {
  const h = res.headers;
  const d = `${what}: ${describeRes(res)}`;
  assert.ok(/max-age=63072000/.test(h['strict-transport-security'] || ''), `Strict-Transport-Security max-age=63072000 missing; ${d}`);
  assert.equal(h['x-content-type-options'], 'nosniff', `X-Content-Type-Options; ${d}`);
  assert.ok(/(^|,\s*)no-store(\s*,|$)/.test(h['cache-control'] || ''), `Cache-Control: no-store missing; ${d}`);
  assert.ok(typeof h['x-request-id'] === 'string' && h['x-request-id'].length > 0, `X-Request-Id missing; ${d}`);
}

/**
 * Checks every exchange recorded on `srv` so far: the security headers on every
 * response, and Content-Type application/fhir+json; charset=utf-8 on every body.
 */
export function assertAllResponses(srv, { min = 1 } = {}) {
  assert.ok(srv.exchanges.length >= min, `only ${srv.exchanges.length} exchanges recorded`);
  const failures = [];
  for (const x of srv.exchanges) {
    if (x.error) continue; // transport errors are asserted by the tests that saw them
    const res = { status: x.status, headers: x.resHeaders, text: x.resBody };
    try {
      assertSecurityHeaders(res, `${x.method} ${x.path}`);
      if (x.resBody && x.resBody.length) {
        assert.equal(x.resHeaders['content-type'], 'application/fhir+json; charset=utf-8', `Content-Type of ${x.method} ${x.path} -> ${x.status}`);
      }
    } catch (e) {
      failures.push(`${x.method} ${x.path} -> ${x.status}: ${e.message.split('\n')[0].slice(0, 300)}`);
    }
  }
  assert.deepEqual(failures, [], 'responses without the required headers');
}

// ---------------------------------------------------------------------------
// Diagnostics: use as `afterEach(diagnose(() => [srv1, srv2]))`.
export function diagnose(servers) {
  return (t) => {
    if (!t || t.passed !== false) return;
    const list = (typeof servers === 'function' ? servers() : servers).filter(Boolean);
    for (const s of list) {
      const lines = [];
      lines.push(`----- diagnostics for failed test "${t.name}": ${s.name} (${s.base || 'not listening'}, data ${s.dataDir}) -----`);
      lines.push(`exit: ${JSON.stringify(s.exit)}`);
      lines.push('last exchanges:');
      for (const x of s.exchanges.slice(-6)) {
        lines.push(`  ${x.at} ${x.method} ${x.path} -> ${x.status ?? x.error}`
          + (x.reqBody ? `\n      request body: ${x.reqBody.slice(0, 200)}` : '')
          + (x.resBody ? `\n      response body: ${x.resBody.slice(0, 300)}` : ''));
      }
      lines.push('stderr (last 15 lines):');
      lines.push(...s.stderrLines.slice(-15).map((l) => `  ${l.slice(0, 300)}`));
      console.log(lines.flatMap((l) => l.split('\n')).map((l) => `# ${l}`).join('\n'));
    }
  };
}

// ---------------------------------------------------------------------------
// CLI

export function runCli(args, { timeoutMs = 30000, input } = {}) {
  const r = spawnSync(BIN, args, { encoding: 'utf8', timeout: timeoutMs, input });
  if (r.error) throw new Error(`fhirward ${args.join(' ')}: ${r.error.message}`);
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** `fhirward token mint`; returns the compact JWT. */
export function mintToken(srvOrDir, {
  sub = 'alice', scope = 'user/*.cruds', ttl, patient, roles, fhirUser, purpose, clientId,
} = {}) {
  const dataDir = typeof srvOrDir === 'string' ? srvOrDir : srvOrDir.dataDir;
  const args = ['token', 'mint', '--data-dir', dataDir, '--sub', sub, '--scope', scope];
  if (ttl !== undefined) args.push('--ttl', String(ttl));
  if (patient !== undefined) args.push('--patient', patient);
  if (roles) args.push('--roles', roles);
  if (fhirUser) args.push('--fhir-user', fhirUser);
  if (purpose) args.push('--purpose', purpose);
  if (clientId) args.push('--client-id', clientId);
  const r = runCli(args);
  assert.equal(r.code, 0, `fhirward ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
  const tok = r.stdout.trim().split('\n').pop().trim();
  assert.match(tok, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, `token mint printed no JWT: ${JSON.stringify(r.stdout)}`);
  if (typeof srvOrDir !== 'string') srvOrDir.secrets.push(tok);
  return tok;
}

/** The server's structured log events named `event` (its JSON lines on stderr). */
export function logEvents(srv, event) {
  const out = [];
  for (const l of srv.stderrLines) {
    if (!l.startsWith('{')) continue;
    try {
      const j = JSON.parse(l);
      if (j.event === event) out.push(j);
    } catch { /* not JSON */ }
  }
  return out;
}

/** Calls `fn` every 100 ms until it returns something truthy, which is returned; fails after `ms`. */
export async function waitFor(what, fn, ms = 20000) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------
// JWT forging

export const b64u = (buf) => Buffer.from(buf).toString('base64url');

export function instanceInfo(dataDir) {
  return JSON.parse(fs.readFileSync(`${dataDir}/instance.json`, 'utf8'));
}

export function signingKey(dataDir) {
  return crypto.createPrivateKey(fs.readFileSync(`${dataDir}/keys/signing-es256.pem`));
}

/**
 * Builds a compact JWT as the instance would, then lets the caller break it.
 * opts: sub, scope, patient, clientId, iat, exp, nbf, iss, aud, kid, typ,
 *   alg ('ES256' | 'none' | 'HS256' | anything -> header only), key (another
 *   private KeyObject for ES256), hmacSecret (HS256; default: the instance's
 *   public key PEM, i.e. algorithm confusion), badSignature (flip a bit),
 *   claims (extra/override claims; undefined values delete), header (extra header).
 */
export function forgeJwt(srvOrDir, opts = {}) {
  const dataDir = typeof srvOrDir === 'string' ? srvOrDir : srvOrDir.dataDir;
  const inst = instanceInfo(dataDir);
  const now = Math.floor(Date.now() / 1000);
  const alg = opts.alg || 'ES256';
  const header = { alg, kid: opts.kid ?? inst.signing_kid, typ: opts.typ ?? 'at+jwt', ...(opts.header || {}) };
  if (opts.kid === null) delete header.kid;
  const claims = {
    iss: opts.iss ?? inst.issuer,
    aud: opts.aud ?? inst.audience,
    sub: opts.sub ?? 'forged-user',
    scope: opts.scope ?? 'user/*.cruds',
    iat: opts.iat ?? now,
    exp: opts.exp ?? now + 600,
    jti: crypto.randomUUID(),
    client_id: opts.clientId ?? 'forged-client',
  };
  if (opts.nbf !== undefined) claims.nbf = opts.nbf;
  if (opts.patient !== undefined) claims.patient = opts.patient;
  for (const [k, v] of Object.entries(opts.claims || {})) {
    if (v === undefined) delete claims[k]; else claims[k] = v;
  }
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
  let sig;
  if (alg === 'none') {
    sig = Buffer.alloc(0);
  } else if (alg === 'HS256') {
    const secret = opts.hmacSecret ?? crypto.createPublicKey(signingKey(dataDir)).export({ type: 'spki', format: 'pem' });
    sig = crypto.createHmac('sha256', secret).update(input).digest();
  } else {
    const key = opts.key || signingKey(dataDir);
    sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  }
  if (opts.badSignature) {
    sig = Buffer.from(sig);
    sig[sig.length - 1] ^= 0x01;
  }
  const tok = `${input}.${b64u(sig)}`;
  if (typeof srvOrDir !== 'string') srvOrDir.secrets.push(tok);
  return tok;
}

// ---------------------------------------------------------------------------
// sqlite3 CLI

export function sqlite(dbPath, sql) {
  try {
    return execFileSync('sqlite3', [dbPath, sql], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new Error(`sqlite3 ${dbPath} ${JSON.stringify(sql)}: ${e.stderr || e.message}`);
  }
}

/** Bytes of FILE and its -wal / -shm companions, concatenated (missing ones skipped). */
export function dbBytes(file) {
  const parts = [];
  for (const f of [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]) {
    if (fs.existsSync(f)) parts.push(fs.readFileSync(f));
  }
  return Buffer.concat(parts);
}

/** Every file under DIR (recursively). */
export function filesUnder(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...filesUnder(p)); else out.push(p);
  }
  return out;
}
