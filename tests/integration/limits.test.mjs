// Configured limits: [http] max_body_bytes, [json] max_depth, [fhir] require_if_match.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import {
  startServer, stopAndClean, diagnose, client, mintToken,
  assertOutcome, assertStatus, describeRes,
  assertAllResponses,
} from './lib.mjs';

const CONFIG = `
[http]
max_body_bytes = 4096

[json]
max_depth = 10

[fhir]
require_if_match = true
`;

function patientOfSize(n) {
  const base = { resourceType: 'Patient', name: [{ family: '' }] };
  const pad = n - JSON.stringify(base).length;
  base.name[0].family = 'x'.repeat(Math.max(0, pad));
  const s = JSON.stringify(base);
  assert.equal(Buffer.byteLength(s), n);
  return s;
}

function nested(depth) {
  let inner = { url: 'http://example.org/x', valueString: 'leaf' };
  let d = 3;
  while (d + 2 <= depth) {
    inner = { url: 'http://example.org/x', extension: [inner] };
    d += 2;
  }
  return JSON.stringify({ resourceType: 'Patient', extension: [inner] });
}

describe('configured limits', { timeout: 120000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'limits', config: CONFIG });
    c = client(srv, mintToken(srv, { sub: 'limits-user', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('a body under max_body_bytes is accepted', async () => {
    assertStatus(await c.post('/Patient', patientOfSize(4000)), 201, '4000-byte body');
  });

  it('a body over max_body_bytes (Content-Length) -> 413', async () => {
    const r = await c.post('/Patient', patientOfSize(10000));
    assertOutcome(r, 413, 'too-long', 'body_too_large', '10000-byte body');
  });

  it('a body over max_body_bytes (chunked) -> 413', async () => {
    const r = await c.post('/Patient', patientOfSize(10000), { chunked: true });
    assertOutcome(r, 413, 'too-long', 'body_too_large', '10000-byte chunked body');
  });

  it('a declared Content-Length over the limit is refused before the body is sent', async () => {
    // Send only the headers (Content-Length: 100 MB) and wait: the 413 must come without the body.
    const r = await new Promise((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1', port: srv.port, method: 'POST', path: '/Patient', ca: srv.ca, servername: 'localhost', agent: false,
        headers: { Authorization: `Bearer ${c.token}`, 'Content-Type': 'application/fhir+json', 'Content-Length': String(100 * 1024 * 1024) },
      }, (res) => {
        let t = '';
        res.on('data', (d) => { t += d; });
        res.on('end', () => resolve({ status: res.statusCode, text: t }));
      });
      req.setTimeout(10000, () => req.destroy(new Error('no response to an oversized Content-Length within 10 s')));
      req.on('error', reject);
      req.flushHeaders();
    });
    assert.equal(r.status, 413, `oversized Content-Length: ${r.status} ${r.text}`);
  });

  it('the server keeps serving after 413s', async () => {
    assertStatus(await c.get('/metadata'), 200);
  });

  it('JSON deeper than [json] max_depth = 10 -> 400 json_too_deep; depth 9 is fine', async () => {
    assertStatus(await c.post('/Patient', nested(9)), 201, 'depth 9');
    assertOutcome(await c.post('/Patient', nested(13)), 400, 'too-long', 'json_too_deep', 'depth 13');
    assertOutcome(await c.post('/Patient', nested(41)), 400, 'too-long', 'json_too_deep', 'depth 41');
  });

  describe('require_if_match = true', () => {
    let id;
    before(async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient' });
      assertStatus(r, 201, 'create (needs no If-Match)');
      id = r.json.id;
    });

    it('PUT without If-Match -> 428', async () => {
      const r = await c.put(`/Patient/${id}`, { resourceType: 'Patient', id, active: true });
      assertOutcome(r, 428, 'required', 'precondition_required', 'PUT without If-Match');
      const g = await c.get(`/Patient/${id}`);
      assert.equal(g.json.meta.versionId, '1', 'the PUT without If-Match changed the resource');
    });

    it('PUT with the right If-Match -> 200; a stale one -> 412', async () => {
      assertStatus(await c.put(`/Patient/${id}`, { resourceType: 'Patient', id, active: true }, { headers: { 'If-Match': 'W/"1"' } }), 200);
      const stale = await c.put(`/Patient/${id}`, { resourceType: 'Patient', id }, { headers: { 'If-Match': 'W/"1"' } });
      assertOutcome(stale, 412, 'conflict', 'precondition_failed', 'stale If-Match');
    });

    it('DELETE without If-Match -> 428; with it -> 204', async () => {
      const r = await c.del(`/Patient/${id}`);
      assertOutcome(r, 428, 'required', 'precondition_required', 'DELETE without If-Match');
      assertStatus(await c.get(`/Patient/${id}`), 200, 'deleted despite 428');
      const d = await c.del(`/Patient/${id}`, { headers: { 'If-Match': 'W/"2"' } });
      assertStatus(d, 204, `DELETE with If-Match W/"2": ${describeRes(d)}`);
    });
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv);
  });

  it('stderr contains no bearer token', () => {
    for (const tok of srv.secrets) assert.ok(!srv.stderrText().includes(tok), 'token in server log');
  });
});

