// Graceful shutdown: SIGTERM while a request is in flight still answers it.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import {
  startServer, stopAndClean, diagnose, mintToken, sleep, request, assertStatus,
} from './lib.mjs';

describe('shutdown', { timeout: 90000 }, () => {
  let srv;
  let token;
  before(async () => {
    srv = await startServer({ name: 'shutdown' });
    token = mintToken(srv, { sub: 'shut-user', scope: 'user/*.cruds' });
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('SIGTERM during a request (body half sent) still answers it, then exits 0', async () => {
    assertStatus(await request(srv, 'GET', '/metadata'), 200, 'warm-up');
    const body = Buffer.from(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'InFlight' }] }));
    const half = Math.floor(body.length / 2);
    let res;
    let termAt = 0;
    const answered = new Promise((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1', port: srv.port, method: 'POST', path: '/Patient', ca: srv.ca, servername: 'localhost', agent: false,
        headers: {
          Authorization: `Bearer ${token}`, 'Content-Type': 'application/fhir+json', Accept: 'application/fhir+json',
          'Content-Length': String(body.length),
        },
      }, (r) => {
        let t = '';
        r.on('data', (d) => { t += d; });
        r.on('end', () => { res = { status: r.statusCode, text: t, at: Date.now() }; resolve(res); });
      });
      req.setTimeout(20000, () => req.destroy(new Error('no answer within 20 s')));
      req.on('error', reject);
      req.write(body.subarray(0, half));
      req.on('socket', (s) => s.once('secureConnect', async () => {
        await sleep(300);
        termAt = Date.now();
        srv.term('SIGTERM');
        await sleep(500);
        req.end(body.subarray(half));
      }));
    });
    const r = await answered.catch((e) => ({ error: e.message }));
    assert.equal(r.status, 201, `in-flight request across SIGTERM: ${JSON.stringify(r)}`);
    assert.ok(termAt > 0 && r.at - termAt >= 400, `the request was not in flight across SIGTERM (answered ${r.at - termAt} ms after it)`);
    const t0 = Date.now();
    const e = await srv.stop({ timeoutMs: 25000 });
    assert.deepEqual(e, { code: 0, signal: null }, 'exit after SIGTERM');
    console.log(`# server exited ${Date.now() - t0} ms after the in-flight request was answered`);
  });
});

describe('shutdown with an idle keep-alive connection', { timeout: 60000 }, () => {
  let srv;
  before(async () => { srv = await startServer({ name: 'shutdown-idle' }); });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('an idle keep-alive connection does not hold up the exit', async () => {
    const tok = mintToken(srv, { sub: 'idle-user' });
    assertStatus(await request(srv, 'GET', '/Patient/x', { token: tok }), 404);
    assert.ok(Object.keys(srv.agent.freeSockets).length > 0, 'no idle keep-alive socket (test setup)');
    const t0 = Date.now();
    const e = await srv.stop({ destroyAgent: false, timeoutMs: 25000 });
    const ms = Date.now() - t0;
    srv.agent.destroy();
    assert.deepEqual(e, { code: 0, signal: null });
    assert.ok(ms < 5000, `exit took ${ms} ms with an idle keep-alive connection open`);
  });
});
