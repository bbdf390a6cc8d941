// CRUD interactions, content negotiation, JSON parsing rules, and the headers
// of every response (default config).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken, randomId,
  assertOutcome, assertStatus, assertFhirJson, assertAllResponses,
} from './lib.mjs';

const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;

function nested(depth) {
  // A Patient whose extension nesting makes the JSON `depth` levels deep
  // (the top-level object counts as 1; each extension level adds an array and an object).
  let inner = { url: 'http://example.org/x', valueString: 'leaf' };
  let d = 3; // top object + extension array + inner object
  while (d + 2 <= depth) {
    inner = { url: 'http://example.org/x', extension: [inner] };
    d += 2;
  }
  return JSON.stringify({ resourceType: 'Patient', extension: [inner] });
}

describe('CRUD (default config)', { timeout: 150000 }, () => {
  let srv;
  let c;
  before(async () => {
    srv = await startServer({ name: 'crud' });
    c = client(srv, mintToken(srv, { sub: 'crud-user', scope: 'user/*.cruds' }));
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  describe('create / read / update / vread / delete', () => {
    let id;
    let created;
    it('POST /Patient -> 201 with Location, ETag, Last-Modified and meta', async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient', active: true, name: [{ family: 'Crud', given: ['Ann'] }] });
      assertStatus(r, 201, 'POST /Patient');
      assertFhirJson(r, 'POST /Patient');
      created = r;
      id = r.json.id;
      assert.match(String(id), ID_RE, `server id ${id}`);
      assert.equal(r.json.resourceType, 'Patient');
      assert.equal(r.json.meta && r.json.meta.versionId, '1', `meta.versionId: ${r.text}`);
      assert.ok(r.json.meta.lastUpdated && !Number.isNaN(Date.parse(r.json.meta.lastUpdated)), `meta.lastUpdated: ${r.json.meta.lastUpdated}`);
      assert.deepEqual(r.json.name, [{ family: 'Crud', given: ['Ann'] }]);
      assert.match(r.headers.location || '', new RegExp(`/Patient/${id.replace(/\./g, '\\.')}/_history/1$`), `Location: ${r.headers.location}`);
      assert.equal(r.headers.etag, 'W/"1"');
      assert.ok(r.headers['last-modified'] && !Number.isNaN(Date.parse(r.headers['last-modified'])), `Last-Modified: ${r.headers['last-modified']}`);
    });

    it('a client-chosen id in a POST body is not used as the id', async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient', id: 'client-chosen-id' });
      assertStatus(r, 201);
      assert.notEqual(r.json.id, 'client-chosen-id');
      assertStatus(await c.get('/Patient/client-chosen-id'), 404, 'GET /Patient/client-chosen-id');
    });

    it('GET -> 200 with ETag; If-None-Match W/"1" -> 304', async () => {
      const r = await c.get(`/Patient/${id}`);
      assertStatus(r, 200);
      assertFhirJson(r, 'read');
      assert.equal(r.headers.etag, 'W/"1"');
      assert.ok(r.headers['last-modified'], 'read without Last-Modified');
      assert.deepEqual(r.json, created.json, 'read body differs from the create response body');
      const nm = await c.get(`/Patient/${id}`, { headers: { 'If-None-Match': 'W/"1"' } });
      assertStatus(nm, 304, 'If-None-Match W/"1"');
      assert.equal(nm.text, '', '304 with a body');
      const m = await c.get(`/Patient/${id}`, { headers: { 'If-None-Match': 'W/"7"' } });
      assertStatus(m, 200, 'If-None-Match W/"7"');
    });

    it('PUT with the matching id -> 200, version 2', async () => {
      const r = await c.put(`/Patient/${id}`, { resourceType: 'Patient', id, active: false, name: [{ family: 'Crud', given: ['Ann', 'B'] }] });
      assertStatus(r, 200, 'PUT existing');
      assert.equal(r.json.meta.versionId, '2');
      assert.equal(r.headers.etag, 'W/"2"');
      assert.equal(r.json.active, false);
      const g = await c.get(`/Patient/${id}`);
      assert.equal(g.json.meta.versionId, '2');
      assert.equal(g.headers.etag, 'W/"2"');
    });

    it('If-Match W/"1" when the current version is 2 -> 412; W/"2" -> 200', async () => {
      const stale = await c.put(`/Patient/${id}`, { resourceType: 'Patient', id }, { headers: { 'If-Match': 'W/"1"' } });
      assertOutcome(stale, 412, 'conflict', 'precondition_failed', 'stale If-Match');
      const ok = await c.put(`/Patient/${id}`, { resourceType: 'Patient', id, active: true }, { headers: { 'If-Match': 'W/"2"' } });
      assertStatus(ok, 200, 'If-Match W/"2"');
      assert.equal(ok.json.meta.versionId, '3');
    });

    it('vread of each version -> 200 with that version', async () => {
      for (const v of [1, 2, 3]) {
        const r = await c.get(`/Patient/${id}/_history/${v}`);
        assertStatus(r, 200, `vread ${v}`);
        assert.equal(r.json.meta.versionId, String(v));
        assert.equal(r.headers.etag, `W/"${v}"`);
      }
      const v1 = await c.get(`/Patient/${id}/_history/1`);
      assert.deepEqual(v1.json.name, [{ family: 'Crud', given: ['Ann'] }], 'vread 1 content');
    });

    it('vread of an unknown version -> 404', async () => {
      assertOutcome(await c.get(`/Patient/${id}/_history/99`), 404, 'not-found', 'not_found', 'vread 99');
    });

    it('DELETE -> 204; then GET -> 410 (deleted); old versions still readable', async () => {
      const d = await c.del(`/Patient/${id}`);
      assertStatus(d, 204, 'DELETE');
      assert.equal(d.text, '');
      assertOutcome(await c.get(`/Patient/${id}`), 410, 'deleted', 'gone', 'read after delete');
      const v2 = await c.get(`/Patient/${id}/_history/2`);
      assertStatus(v2, 200, 'vread 2 after delete');
      assert.equal(v2.json.meta.versionId, '2');
    });

    it('GET of an id that never existed -> 404 not-found', async () => {
      assertOutcome(await c.get('/Patient/never-existed'), 404, 'not-found', 'not_found', 'missing id');
    });
  });

  describe('update-as-create and id rules', () => {
    it('PUT of a new id -> 201, version 1, Location .../_history/1', async () => {
      const nid = randomId('new-');
      const r = await c.put(`/Patient/${nid}`, { resourceType: 'Patient', id: nid });
      assertStatus(r, 201, 'PUT new id (update_create default true)');
      assert.equal(r.json.id, nid);
      assert.equal(r.json.meta.versionId, '1');
      assert.match(r.headers.location || '', new RegExp(`/Patient/${nid}/_history/1$`), `Location: ${r.headers.location}`);
      assertStatus(await c.get(`/Patient/${nid}`), 200);
    });

    it('PUT with body id different from the URL id -> 400 id_mismatch', async () => {
      const r = await c.put('/Patient/url-id', { resourceType: 'Patient', id: 'body-id' });
      assertOutcome(r, 400, 'invalid', 'id_mismatch', 'id mismatch');
      assertStatus(await c.get('/Patient/url-id'), 404, 'nothing stored under url-id');
      assertStatus(await c.get('/Patient/body-id'), 404, 'nothing stored under body-id');
    });

    it('POST /Patient with an Observation body -> 400 resource_type_mismatch', async () => {
      const r = await c.post('/Patient', { resourceType: 'Observation', status: 'final', code: { text: 'x' } });
      assertOutcome(r, 400, 'invalid', 'resource_type_mismatch', 'type mismatch');
    });

    it('PUT /Observation/x with a Patient body -> 400 resource_type_mismatch', async () => {
      const r = await c.put('/Observation/mm1', { resourceType: 'Patient', id: 'mm1' });
      assertOutcome(r, 400, 'invalid', 'resource_type_mismatch', 'PUT type mismatch');
    });

    it('ids must match [A-Za-z0-9-.]{1,64}', async () => {
      const ok64 = 'a'.repeat(64);
      assertStatus(await c.put(`/Patient/${ok64}`, { resourceType: 'Patient', id: ok64 }), 201, '64-char id');
      assertStatus(await c.put('/Patient/A-b.9', { resourceType: 'Patient', id: 'A-b.9' }), 201, 'id A-b.9');
      const bad = ['a'.repeat(65), 'bad_id', 'bad!id', 'bad%20id', 'b%C3%A9'];
      for (const b of bad) {
        const decoded = decodeURIComponent(b);
        const rp = await c.put(`/Patient/${b}`, { resourceType: 'Patient', id: decoded });
        assertOutcome(rp, 400, 'invalid', 'invalid_id', `PUT /Patient/${b}`);
        const rg = await c.get(`/Patient/${b}`);
        assertOutcome(rg, 400, 'invalid', 'invalid_id', `GET /Patient/${b}`);
      }
    });

    it('unknown resource type -> 404 not-supported', async () => {
      assertOutcome(await c.get('/Foo/1'), 404, 'not-supported', 'unknown_resource_type', 'GET /Foo/1');
      assertOutcome(await c.post('/Foo', { resourceType: 'Foo' }), 404, 'not-supported', 'unknown_resource_type', 'POST /Foo');
      assertOutcome(await c.get('/patient/1'), 404, 'not-supported', 'unknown_resource_type', 'GET /patient/1 (case matters)');
    });
  });

  describe('Prefer', () => {
    it('return=minimal -> empty body', async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient' }, { headers: { Prefer: 'return=minimal' } });
      assertStatus(r, 201);
      assert.equal(r.text, '', `body with return=minimal: ${r.text}`);
      assert.ok(r.headers.location, 'Location missing with return=minimal');
      assert.equal(r.headers.etag, 'W/"1"');
    });

    it('return=OperationOutcome -> an OperationOutcome body', async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient' }, { headers: { Prefer: 'return=OperationOutcome' } });
      assertStatus(r, 201);
      assertFhirJson(r, 'return=OperationOutcome');
      assert.equal(r.json.resourceType, 'OperationOutcome', r.text);
      assert.ok(r.headers.location, 'Location missing with return=OperationOutcome');
    });

    it('return=representation (and no Prefer) -> the resource', async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient' }, { headers: { Prefer: 'return=representation' } });
      assertStatus(r, 201);
      assert.equal(r.json.resourceType, 'Patient');
    });
  });

  describe('content negotiation', () => {
    it('POST with Content-Type text/plain -> 415', async () => {
      const r = await c.post('/Patient', '{"resourceType":"Patient"}', { contentType: 'text/plain' });
      assertOutcome(r, 415, 'not-supported', 'unsupported_media_type', 'text/plain');
    });

    it('POST without Content-Type -> 415', async () => {
      const r = await c.post('/Patient', '{"resourceType":"Patient"}', { contentType: null });
      assertOutcome(r, 415, 'not-supported', 'unsupported_media_type', 'no Content-Type');
    });

    it('application/json and application/fhir+json; charset=utf-8 are accepted', async () => {
      assertStatus(await c.post('/Patient', { resourceType: 'Patient' }, { contentType: 'application/json' }), 201, 'application/json');
      assertStatus(await c.post('/Patient', { resourceType: 'Patient' }, { contentType: 'application/fhir+json; charset=utf-8' }), 201, 'fhir+json; charset');
    });

    it('Accept: application/xml -> 406; Accept: */* and application/json -> 200', async () => {
      const r = await c.get('/metadata', { accept: 'application/xml' });
      assertOutcome(r, 406, 'not-supported', 'not_acceptable', 'Accept xml');
      assertStatus(await c.get('/metadata', { accept: 'application/fhir+xml' }), 406, 'Accept fhir+xml');
      assertStatus(await c.get('/metadata', { accept: '*/*' }), 200, 'Accept */*');
      assertStatus(await c.get('/metadata', { accept: 'application/json' }), 200, 'Accept application/json');
      assertStatus(await c.get('/metadata', { accept: null }), 200, 'no Accept');
    });

    it('_format=xml -> 406; _format=json -> 200', async () => {
      assertOutcome(await c.get('/metadata?_format=xml'), 406, 'not-supported', 'not_acceptable', '_format=xml');
      assertStatus(await c.get('/metadata?_format=json'), 200, '_format=json');
    });

    it('_pretty=true -> indented JSON', async () => {
      const p = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Pretty' }] });
      const r = await c.get(`/Patient/${p.json.id}?_pretty=true`);
      assertStatus(r, 200);
      assert.match(r.text, /\n[ \t]+"/, `not indented: ${r.text.slice(0, 200)}`);
      assert.deepEqual(r.json, p.json);
    });
  });

  describe('JSON parsing', () => {
    it('invalid JSON -> 400 invalid_json', async () => {
      assertOutcome(await c.post('/Patient', '{"resourceType":"Patient",'), 400, 'invalid', 'invalid_json', 'truncated JSON');
    });

    it('duplicate key -> 400 duplicate_key', async () => {
      const r = await c.post('/Patient', '{"resourceType":"Patient","active":true,"active":false}');
      assertOutcome(r, 400, 'invalid', 'duplicate_key', 'duplicate key');
      const r2 = await c.post('/Patient', '{"resourceType":"Patient","name":[{"family":"a","family":"b"}]}');
      assertOutcome(r2, 400, 'invalid', 'duplicate_key', 'nested duplicate key');
    });

    it('invalid UTF-8 -> 400 invalid_utf8', async () => {
      const body = Buffer.concat([Buffer.from('{"resourceType":"Patient","name":[{"family":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}]}')]);
      assertOutcome(await c.post('/Patient', body), 400, 'invalid', 'invalid_utf8', 'invalid UTF-8');
      const overlong = Buffer.concat([Buffer.from('{"resourceType":"Patient","name":[{"family":"'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}]}')]);
      assertOutcome(await c.post('/Patient', overlong), 400, 'invalid', 'invalid_utf8', 'overlong UTF-8');
    });

    it('nesting deeper than the default max_depth (64) -> 400 json_too_deep; the server survives very deep input', async () => {
      assertStatus(await c.post('/Patient', nested(9)), 201, 'depth 9');
      assertOutcome(await c.post('/Patient', nested(101)), 400, 'too-long', 'json_too_deep', 'depth 101');
      const deep = `${'['.repeat(100000)}${']'.repeat(100000)}`;
      assertOutcome(await c.post('/Patient', deep), 400, 'too-long', 'json_too_deep', '100000 nested arrays');
      assertStatus(await c.get('/metadata'), 200, 'server alive after deep input');
    });

    it('a body over the default max_body_bytes (8 MiB) -> 413; just under it is parsed', async () => {
      const big = `{"resourceType":"Patient","name":[{"family":"${'x'.repeat(9 * 1024 * 1024)}"}]}`;
      let r413;
      try {
        r413 = await c.post('/Patient', big, { agent: false });
      } catch (e) {
        assert.fail(`9 MiB body: no HTTP response (${e.message}). The server must answer 413 and linger `
          + 'so that a client still sending the body can read it, instead of resetting the connection.');
      }
      assertOutcome(r413, 413, 'too-long', 'body_too_large', '9 MiB body');
      const under = `{"resourceType":"Patient","name":[{"family":"${'y'.repeat(7 * 1024 * 1024)}"}]}`;
      const r = await c.post('/Patient', under);
      assert.notEqual(r.status, 413, 'a 7 MiB body was refused as too large');
      assertStatus(await c.get('/metadata'), 200, 'server alive after large bodies');
    });

    it('decimals are preserved exactly', async () => {
      const raw = '{"resourceType":"Observation","status":"final","code":{"text":"dec"},"valueQuantity":{"value":1.50,"unit":"mg"},'
        + '"component":[{"code":{"text":"long"},"valueQuantity":{"value":3.14159265358979323846264338327950288}},'
        + '{"code":{"text":"zero"},"valueQuantity":{"value":0.000}}]}';
      const r = await c.post('/Observation', raw);
      assertStatus(r, 201);
      for (const text of [r.text, (await c.get(`/Observation/${r.json.id}`)).text]) {
        assert.ok(/"value"\s*:\s*1\.50\b/.test(text), `1.50 not preserved: ${text}`);
        assert.ok(text.includes('3.14159265358979323846264338327950288'), `long decimal not preserved: ${text}`);
        assert.ok(/"value"\s*:\s*0\.000\b/.test(text), `0.000 not preserved: ${text}`);
      }
    });

    it('non-ASCII text round-trips', async () => {
      const r = await c.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Müller-Łódź 日本 🙂' }] });
      assertStatus(r, 201);
      const g = await c.get(`/Patient/${r.json.id}`);
      assert.equal(g.json.name[0].family, 'Müller-Łódź 日本 🙂');
    });
  });

  describe('every response', () => {
    it('carries HSTS, nosniff, no-store and X-Request-Id; JSON bodies are application/fhir+json; charset=utf-8', () => {
      assertAllResponses(srv, { min: 40 });
    });

    it('X-Request-Id differs between requests', () => {
      const ids = srv.exchanges.filter((x) => x.resHeaders).map((x) => x.resHeaders['x-request-id']);
      assert.equal(new Set(ids).size, ids.length, 'repeated X-Request-Id values');
    });

    it('stderr contains no bearer token', () => {
      for (const tok of srv.secrets) assert.ok(!srv.stderrText().includes(tok), 'token in server log');
    });
  });
});

