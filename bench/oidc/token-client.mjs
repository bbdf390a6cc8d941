// The load client of bench/token-run, the same for fhirward and oidc-provider: client_credentials
// token requests authenticated with private_key_jwt (RFC 7523, ES256), on keep-alive HTTPS
// connections.
//
//   node token-client.mjs keygen --out-dir DIR
//       writes DIR/client-key.pem (P-256 private key) and DIR/client-jwks.json (its public JWKS,
//       kid "bench-client", alg ES256) for registering the client on both servers.
//   node token-client.mjs run --token-url URL --ca PEM --key PEM --out FILE
//       [--client-id bench] [--kid bench-client] [--scope "system/*.rs"] [--concurrency 16]
//       [--duration 10] [--warmup 3] [--workers 1] [--server-pid PID]
//
// run: (1) one request, whose access token must be a JWT with alg ES256; (2) a warm-up of
// WARMUP seconds (assertions signed on the fly, not timed); (3) every client assertion of the
// timed phase is signed BEFORE it starts (each has its own jti, aud = URL, exp = now + 290 s):
// 3x max(warm-up rate, 1000/s) x DURATION, so that the load generator signs nothing while it measures;
// (4) DURATION seconds with CONCURRENCY requests in flight (node:https Agent, keepAlive,
// maxSockets = CONCURRENCY / WORKERS per worker thread). The timed phase ends early if the
// pre-signed assertions run out (reported as "exhausted"). Every answer must be 200.
// Writes JSON: requests, seconds, rps, p50_ms, p90_ms, p99_ms, max_ms, errors, first_errors,
// exhausted, client_cpu_s, server_cpu_s (from /proc/PID/stat when --server-pid is given),
// token_header, token_claims (of the first token).
import { createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

function args(argv) {
  const o = {
    clientId: 'bench', kid: 'bench-client', scope: 'system/*.rs', concurrency: '16',
    duration: '10', warmup: '3', workers: '1',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
    o[k] = argv[i + 1];
  }
  for (const k of ['concurrency', 'duration', 'warmup', 'workers']) o[k] = Number(o[k]);
  return o;
}

const b64u = (s) => Buffer.from(s).toString('base64url');

function makeSigner(keyPem, kid, clientId, aud) {
  const key = createPrivateKey(keyPem);
  const header = b64u(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid }));
  return () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = b64u(JSON.stringify({
      iss: clientId, sub: clientId, aud, jti: randomBytes(16).toString('base64url'),
      iat: now, exp: now + 290,
    }));
    const input = `${header}.${claims}`;
    const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    return `${input}.${sig.toString('base64url')}`;
  };
}

function bodyFor(assertion, scope) {
  return `grant_type=client_credentials&scope=${encodeURIComponent(scope)}` +
    `&client_assertion_type=${encodeURIComponent(ASSERTION_TYPE)}&client_assertion=${assertion}`;
}

function makeAgent(ca, sockets) {
  return new https.Agent({ keepAlive: true, maxSockets: sockets, ca, servername: 'localhost' });
}

// One POST; resolves {status, ms, body} (body only when `keepBody` or not 200).
function post(agent, url, body, keepBody) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const req = https.request({
      agent, method: 'POST', host: '127.0.0.1', port: url.port, path: url.pathname,
      servername: 'localhost',
      headers: {
        Host: url.host, 'Content-Type': 'application/x-www-form-urlencoded',
        'Content-Length': Buffer.byteLength(body), Accept: 'application/json',
      },
    }, (res) => {
      const chunks = [];
      const want = keepBody || res.statusCode !== 200;
      res.on('data', (c) => { if (want) chunks.push(c); });
      res.on('end', () => resolve({
        status: res.statusCode, ms: Number(process.hrtime.bigint() - t0) / 1e6,
        body: want ? Buffer.concat(chunks).toString() : undefined,
      }));
    });
    req.on('error', (e) => resolve({ status: 0, ms: Number(process.hrtime.bigint() - t0) / 1e6, body: String(e) }));
    req.end(body);
  });
}

// Runs `concurrency` loops over next() until it returns undefined or `deadline` (ms) passes.
async function drive(agent, url, concurrency, next, deadline, scope) {
  const lat = [];
  let errors = 0;
  const firstErrors = [];
  let exhausted = false;
  async function loop() {
    while (Date.now() < deadline) {
      const a = next();
      if (a === undefined) { exhausted = true; return; }
      const r = await post(agent, url, bodyFor(a, scope), false);
      lat.push(r.ms);
      if (r.status !== 200) {
        errors += 1;
        if (firstErrors.length < 3) firstErrors.push(`${r.status} ${(r.body || '').slice(0, 300)}`);
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { lat, errors, firstErrors, exhausted };
}

function cpuOfPid(pid) {  // utime + stime of a process in seconds
  if (!pid) return 0;
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;  // fields 14, 15 (clock ticks of 1/100 s)
}

function pct(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function workerMain() {
  const { url, ca, sockets, assertions, durationMs, scope } = workerData;
  const u = new URL(url);
  const agent = makeAgent(ca, sockets);
  // new connections: the first request of each socket pays a TLS handshake (timed)
  let i = 0;
  parentPort.postMessage({ ready: true });
  const start = await new Promise((r) => parentPort.once('message', r));
  const deadline = start.t0 + durationMs;
  const out = await drive(agent, u, sockets, () => (i < assertions.length ? assertions[i++] : undefined),
    deadline, scope);
  parentPort.postMessage({ done: true, ...out, lat: Float64Array.from(out.lat) });
  agent.destroy();
}

async function run(o) {
  for (const k of ['tokenUrl', 'ca', 'key', 'out']) if (!o[k]) throw new Error(`--${k} is required`);
  const url = new URL(o.tokenUrl);
  const ca = readFileSync(o.ca);
  const signer = makeSigner(readFileSync(o.key), o.kid, o.clientId, o.tokenUrl);
  const agent = makeAgent(ca, o.concurrency);

  // (1) one request: the token must be an ES256 JWT
  const first = await post(agent, url, bodyFor(signer(), o.scope), true);
  if (first.status !== 200) throw new Error(`first token request: ${first.status} ${first.body}`);
  const resp = JSON.parse(first.body);
  const [h, c] = String(resp.access_token).split('.');
  const tokenHeader = JSON.parse(Buffer.from(h, 'base64url'));
  const tokenClaims = JSON.parse(Buffer.from(c, 'base64url'));
  if (tokenHeader.alg !== 'ES256') throw new Error(`access token alg ${tokenHeader.alg}, not ES256`);

  // (2) warm-up, signing on the fly
  const w0 = Date.now();
  const warm = await drive(agent, url, o.concurrency, signer, w0 + o.warmup * 1000, o.scope);
  const warmRate = warm.lat.length / ((Date.now() - w0) / 1000);
  if (warm.errors > 0) process.stderr.write(`token-client: warm-up errors: ${warm.firstErrors.join(' | ')}\n`);
  agent.destroy();

  // (3) sign every assertion of the timed phase now
  // the warm-up rate understates the timed one (the warm-up signs on the fly, the server is cold)
  const count = Math.min(2_000_000, Math.ceil(Math.max(warmRate, 1000) * o.duration * 3) + o.concurrency * 4);
  const s0 = Date.now();
  const all = Array.from({ length: count }, signer);
  const signSeconds = (Date.now() - s0) / 1000;

  // (4) timed phase in WORKERS threads
  const workers = Math.max(1, Math.min(o.workers, o.concurrency));
  const per = Math.ceil(count / workers);
  const ws = [];
  for (let k = 0; k < workers; k++) {
    const sockets = Math.floor(o.concurrency / workers) + (k < o.concurrency % workers ? 1 : 0);
    const w = new Worker(new URL(import.meta.url), {
      workerData: {
        url: o.tokenUrl, ca, sockets, scope: o.scope, durationMs: o.duration * 1000,
        assertions: all.slice(k * per, (k + 1) * per),
      },
    });
    ws.push(w);
  }
  await Promise.all(ws.map((w) => new Promise((r) => w.once('message', r))));
  const results = ws.map((w) => new Promise((resolve, reject) => {
    w.on('message', (m) => { if (m.done) resolve(m); });
    w.on('error', reject);
  }));
  const cpu0 = process.cpuUsage();
  const srv0 = cpuOfPid(o.serverPid);
  const t0 = Date.now();
  for (const w of ws) w.postMessage({ t0 });
  const outs = await Promise.all(results);
  const seconds = (Date.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const srv = cpuOfPid(o.serverPid) - srv0;
  await Promise.all(ws.map((w) => w.terminate()));

  const lat = new Float64Array(outs.reduce((n, x) => n + x.lat.length, 0));
  let off = 0;
  for (const x of outs) { lat.set(x.lat, off); off += x.lat.length; }
  lat.sort();
  const requests = lat.length;
  const result = {
    url: o.tokenUrl, concurrency: o.concurrency, workers, duration_s: o.duration,
    warmup: { seconds: o.warmup, requests: warm.lat.length, rps: Number(warmRate.toFixed(1)), errors: warm.errors },
    presigned: count, presign_seconds: signSeconds,
    requests, seconds, rps: Number((requests / seconds).toFixed(1)),
    p50_ms: pct(lat, 50), p90_ms: pct(lat, 90), p99_ms: pct(lat, 99), max_ms: lat[lat.length - 1] ?? null,
    errors: outs.reduce((n, x) => n + x.errors, 0),
    first_errors: outs.flatMap((x) => x.firstErrors).slice(0, 3),
    exhausted: outs.some((x) => x.exhausted),
    client_cpu_s: (cpu.user + cpu.system) / 1e6,
    server_cpu_s: o.serverPid ? srv : null,
    token_header: tokenHeader, token_claims: tokenClaims,
    token_response: Object.fromEntries(Object.entries(resp).filter(([k]) => k !== 'access_token')),
  };
  writeFileSync(o.out, JSON.stringify(result, null, 2));
}

function keygen(o) {
  if (!o.outDir) throw new Error('--out-dir is required');
  mkdirSync(o.outDir, { recursive: true });
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(join(o.outDir, 'client-key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }),
    { mode: 0o600 });
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: o.kid, alg: 'ES256', use: 'sig' };
  writeFileSync(join(o.outDir, 'client-jwks.json'), JSON.stringify({ keys: [jwk] }));
}

if (!isMainThread) {
  await workerMain();
} else {
  const [cmd, ...rest] = process.argv.slice(2);
  const o = args(rest);
  if (cmd === 'keygen') keygen(o);
  else if (cmd === 'run') await run(o);
  else {
    process.stderr.write('usage: token-client.mjs keygen|run ... (see the header of this file)\n');
    process.exit(2);
  }
}
