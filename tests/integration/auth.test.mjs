// Authentication and authorization: bearer tokens, forged tokens, SMART scopes,
// patient compartments.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  startServer, stopAndClean, diagnose, request, client, mintToken, forgeJwt, signingKey,
  assertOutcome, assertStatus, assertFhirJson, describeRes,
  assertAllResponses,
} from './lib.mjs';

const now = () => Math.floor(Date.now() / 1000);

describe('authentication and scopes', { timeout: 150000 }, () => {
  let srv;
  let admin; // user/*.cruds
  before(async () => {
    srv = await startServer({ name: 'auth' });
    admin = client(srv, mintToken(srv, { sub: 'admin', scope: 'user/*.cruds' }));
    // Fixture data used below.
    for (const [path, body] of [
      ['/Patient/p1', { resourceType: 'Patient', id: 'p1', name: [{ family: 'One' }] }],
      ['/Patient/p2', { resourceType: 'Patient', id: 'p2', name: [{ family: 'Two' }] }],
      ['/Observation/o1', { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'hr' }, subject: { reference: 'Patient/p1' } }],
      ['/Observation/o2', { resourceType: 'Observation', id: 'o2', status: 'final', code: { text: 'hr' }, subject: { reference: 'Patient/p2' } }],
    ]) {
      const r = await admin.put(path, body);
      assertStatus(r, 201, `fixture PUT ${path} (update-as-create)`);
    }
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  describe('/metadata', () => {
    it('needs no token and is a CapabilityStatement for FHIR 4.0.1', async () => {
      const r = await request(srv, 'GET', '/metadata');
      assertStatus(r, 200, 'GET /metadata without a token');
      assertFhirJson(r, 'GET /metadata');
      assert.equal(r.json.resourceType, 'CapabilityStatement');
      assert.equal(r.json.fhirVersion, '4.0.1');
      const resources = (r.json.rest || []).flatMap((x) => x.resource || []);
      const byType = Object.fromEntries(resources.map((x) => [x.type, (x.interaction || []).map((i) => i.code)]));
      for (const t of ['Patient', 'Observation']) {
        assert.ok(byType[t], `CapabilityStatement does not list ${t}; types: ${Object.keys(byType).slice(0, 20)}`);
        for (const code of ['read', 'vread', 'update', 'delete', 'create', 'history-instance']) {
          assert.ok(byType[t].includes(code), `${t} lacks interaction ${code}: ${byType[t]}`);
        }
      }
    });
  });

  describe('authentication', () => {
    it('no token -> 401, WWW-Authenticate: Bearer realm="fhirward" without error', async () => {
      const r = await request(srv, 'GET', '/Patient/p1');
      assertOutcome(r, 401, 'login', 'missing_token', 'no token');
      assert.equal(r.headers['www-authenticate'], 'Bearer realm="fhirward"', describeRes(r));
    });

    it('a valid forged token (sanity check of the forger) is accepted', async () => {
      const r = await request(srv, 'GET', '/Patient/p1', { token: forgeJwt(srv, { sub: 'forger-ok' }) });
      assertStatus(r, 200, 'well-formed token signed with the instance key');
    });

    const t0 = now();
    const bad = {
      'garbage': () => 'not-a-jwt',
      'expired (exp an hour ago)': () => forgeJwt(srv, { iat: t0 - 7200, exp: t0 - 3600 }),
      'nbf an hour in the future': () => forgeJwt(srv, { nbf: t0 + 3600 }),
      'wrong aud': () => forgeJwt(srv, { aud: 'https://elsewhere.example/fhir' }),
      'wrong iss': () => forgeJwt(srv, { iss: 'https://evil.example' }),
      'alg=none': () => forgeJwt(srv, { alg: 'none' }),
      'alg=none with the real signature kept': () => {
        const good = forgeJwt(srv, {});
        const [h, p, s] = good.split('.');
        const hdr = JSON.parse(Buffer.from(h, 'base64url')); hdr.alg = 'none';
        return `${Buffer.from(JSON.stringify(hdr)).toString('base64url')}.${p}.${s}`;
      },
      'HS256 keyed with the public key PEM (algorithm confusion)': () => forgeJwt(srv, { alg: 'HS256' }),
      'HS256 keyed with the public key DER': () => forgeJwt(srv, {
        alg: 'HS256',
        hmacSecret: crypto.createPublicKey(signingKey(srv.dataDir)).export({ type: 'spki', format: 'der' }),
      }),
      'bad signature (one bit flipped)': () => forgeJwt(srv, { badSignature: true }),
      'claims altered after signing': () => {
        const good = forgeJwt(srv, { scope: 'user/Patient.r' });
        const [h, , s] = good.split('.');
        const claims = JSON.parse(Buffer.from(good.split('.')[1], 'base64url'));
        claims.scope = 'user/*.cruds';
        return `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
      },
      'signed by another key under the same kid': () => forgeJwt(srv, {
        key: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
      }),
      'unknown kid': () => forgeJwt(srv, { kid: 'no-such-kid' }),
      'no exp': () => forgeJwt(srv, { claims: { exp: undefined } }),
      'lifetime over max_token_lifetime_seconds (30 days)': () => forgeJwt(srv, { exp: t0 + 30 * 86400 }),
      'DER signature instead of JOSE r||s': () => {
        const tok = forgeJwt(srv, {});
        const input = tok.split('.').slice(0, 2).join('.');
        const der = crypto.sign('sha256', Buffer.from(input), signingKey(srv.dataDir));
        return `${input}.${der.toString('base64url')}`;
      },
    };
    for (const [what, make] of Object.entries(bad)) {
      it(`${what} -> 401 invalid_token`, async () => {
        const tok = make();
        srv.secrets.push(tok);
        const r = await request(srv, 'GET', '/Patient/p1', { token: tok });
        assertOutcome(r, 401, 'login', 'invalid_token', what);
        const wa = r.headers['www-authenticate'] || '';
        assert.match(wa, /^Bearer /, `WWW-Authenticate: ${wa}`);
        assert.ok(wa.includes('error="invalid_token"'), `WWW-Authenticate lacks error="invalid_token": ${wa}`);
        assert.ok(!r.text.includes('One'), 'a refused request leaked resource data');
      });
    }

    it('access_token in the query string -> 400 (security), even with a valid header token', async () => {
      const tok = mintToken(srv, { sub: 'q' });
      const r1 = await request(srv, 'GET', `/Patient/p1?access_token=${tok}`);
      assertOutcome(r1, 400, 'security', 'token_in_query', 'access_token in query, no header');
      const r2 = await request(srv, 'GET', `/Patient/p1?access_token=${tok}`, { token: tok });
      assertOutcome(r2, 400, 'security', 'token_in_query', 'access_token in query with header');
    });
  });

  describe('SMART scopes', () => {
    const insufficient = (r, what) => {
      assertOutcome(r, 403, 'forbidden', 'insufficient_scope', what);
      const wa = r.headers['www-authenticate'] || '';
      assert.ok(wa.includes('error="insufficient_scope"'), `${what}: WWW-Authenticate lacks error="insufficient_scope": ${wa}`);
    };
    const newPatient = (f) => ({ resourceType: 'Patient', name: [{ family: f }] });

    it('scope for another type -> 403 insufficient_scope', async () => {
      const c = client(srv, mintToken(srv, { sub: 's1', scope: 'user/Observation.rs' }));
      insufficient(await c.get('/Patient/p1'), 'read Patient with user/Observation.rs');
      assertStatus(await c.get('/Observation/o1'), 200, 'read Observation with user/Observation.rs');
    });

    it('v2 user/Patient.rs: read yes, create/update/delete no', async () => {
      const c = client(srv, mintToken(srv, { sub: 's2', scope: 'user/Patient.rs' }));
      assertStatus(await c.get('/Patient/p1'), 200);
      insufficient(await c.post('/Patient', newPatient('X')), 'create with .rs');
      insufficient(await c.put('/Patient/p1', { resourceType: 'Patient', id: 'p1' }), 'update with .rs');
      insufficient(await c.del('/Patient/p1'), 'delete with .rs');
      assertStatus(await c.get('/Patient/p1'), 200, 'p1 must be unchanged');
    });

    it('v2 user/Patient.c: create yes, read no', async () => {
      const c = client(srv, mintToken(srv, { sub: 's3', scope: 'user/Patient.c' }));
      assertStatus(await c.post('/Patient', newPatient('C')), 201);
      insufficient(await c.get('/Patient/p1'), 'read with .c');
    });

    it('v1 user/Patient.read: read yes, create no', async () => {
      const c = client(srv, mintToken(srv, { sub: 's4', scope: 'user/Patient.read' }));
      assertStatus(await c.get('/Patient/p1'), 200);
      insufficient(await c.post('/Patient', newPatient('X')), 'create with v1 .read');
    });

    it('v1 user/Patient.write: create yes', async () => {
      const c = client(srv, mintToken(srv, { sub: 's5', scope: 'user/Patient.write' }));
      assertStatus(await c.post('/Patient', newPatient('W')), 201);
    });

    it('v1 user/*.* and system/*.cruds: everything', async () => {
      for (const scope of ['user/*.*', 'user/Patient.* user/Observation.*', 'system/*.cruds']) {
        const c = client(srv, mintToken(srv, { sub: `s6-${scope}`, scope }));
        assertStatus(await c.get('/Patient/p1'), 200, `read with ${scope}`);
        assertStatus(await c.get('/Observation/o1'), 200, `read Observation with ${scope}`);
        assertStatus(await c.post('/Patient', newPatient('S')), 201, `create with ${scope}`);
      }
    });

    it('a token with no resource scope at all -> 403', async () => {
      const c = client(srv, mintToken(srv, { sub: 's7', scope: 'openid profile' }));
      insufficient(await c.get('/Patient/p1'), 'openid profile');
    });
  });

  describe('patient compartment (--patient p1)', () => {
    let pt;
    before(() => { pt = client(srv, mintToken(srv, { sub: 'pat-user', scope: 'patient/*.cruds', patient: 'p1' })); });

    it('reads Patient/p1 -> 200', async () => {
      const r = await pt.get('/Patient/p1');
      assertStatus(r, 200);
      assert.equal(r.json.id, 'p1');
    });

    it('Patient/p2 -> 404, indistinguishable from a missing patient', async () => {
      const r = await pt.get('/Patient/p2');
      assertOutcome(r, 404, 'not-found', 'not_found', 'Patient/p2 with a p1 token');
      assert.ok(!r.text.includes('Two'), 'leaked p2 data');
      const missing = await pt.get('/Patient/no-such-patient');
      assert.equal(missing.status, 404);
      const norm = (res, id) => JSON.stringify(res.json.issue).split(id).join('ID');
      assert.equal(norm(r, 'p2'), norm(missing, 'no-such-patient'), 'the 404 for p2 differs from the 404 for a missing id (existence leak)');
    });

    it('Observation in p1 -> 200; Observation with subject Patient/p2 -> 404', async () => {
      assertStatus(await pt.get('/Observation/o1'), 200);
      const r = await pt.get('/Observation/o2');
      assertOutcome(r, 404, 'not-found', null, 'Observation/o2 (subject p2) with a p1 token');
    });

    it('vread of p2 -> 404', async () => {
      const r = await pt.get('/Patient/p2/_history/1');
      assertOutcome(r, 404, 'not-found', null, 'vread Patient/p2 with a p1 token');
    });

    it('creating an Observation for Patient/p2 -> 403; for p1 -> 201', async () => {
      const r = await pt.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p2' } });
      assertOutcome(r, 403, 'forbidden', null, 'create Observation for p2 with a p1 token');
      const ok = await pt.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' } });
      assertStatus(ok, 201, 'create Observation for p1');
    });

    it('an Observation in no patient compartment -> 404', async () => {
      const o = await admin.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'no subject' } });
      assertStatus(o, 201, 'fixture');
      assertOutcome(await pt.get(`/Observation/${o.json.id}`), 404, 'not-found', null, 'Observation without subject with a p1 token');
    });

    it('may update its own Patient/p1; may not create another Patient', async () => {
      const u = await pt.put('/Patient/p1', { resourceType: 'Patient', id: 'p1', name: [{ family: 'One' }], active: true });
      assertStatus(u, 200, 'PUT Patient/p1 with patient/*.cruds for p1');
      const r = await pt.post('/Patient', { resourceType: 'Patient', name: [{ family: 'Intruder' }] });
      assertOutcome(r, 403, 'forbidden', null, 'POST a new Patient with a p1 token');
      const p3 = await pt.put('/Patient/p3', { resourceType: 'Patient', id: 'p3' });
      assert.ok(p3.status === 403 || p3.status === 404, `PUT Patient/p3 (update-as-create) with a p1 token: ${describeRes(p3)}`);
      assertStatus(await admin.get('/Patient/p3'), 404, 'Patient/p3 was created by a p1 token');
    });

    it('cannot overwrite or delete a resource of p2 (not 2xx, and o2 unchanged)', async () => {
      const put = await pt.put('/Observation/o2', { resourceType: 'Observation', id: 'o2', status: 'final', code: { text: 'hijack' }, subject: { reference: 'Patient/p1' } });
      assert.ok(put.status >= 400, `PUT Observation/o2 with a p1 token: ${describeRes(put)}`);
      const del = await pt.del('/Observation/o2');
      assert.ok(del.status >= 400, `DELETE Observation/o2 with a p1 token: ${describeRes(del)}`);
      const r = await admin.get('/Observation/o2');
      assertStatus(r, 200, 'o2 as admin');
      assert.equal(r.json.meta.versionId, '1', 'o2 was modified by a p1 token');
    });

    const refOf = (e) => (e.resource ? `${e.resource.resourceType}/${e.resource.id}` : (e.request && e.request.url) || e.fullUrl);
    const inP1 = (e) => {
      const res = e.resource;
      if (!res) return false;
      if (res.resourceType === 'Patient') return res.id === 'p1';
      return res.subject && res.subject.reference === 'Patient/p1';
    };

    it('system and type history are confined to p1', async () => {
      for (const path of ['/_history?_count=100', '/Observation/_history?_count=100', '/Patient/_history?_count=100']) {
        const r = await pt.get(path);
        assertStatus(r, 200, path);
        assert.equal(r.json.type, 'history');
        const entries = r.json.entry || [];
        const outside = entries.filter((e) => !inP1(e));
        assert.deepEqual(outside.map(refOf), [], `${path} with a p1 token returned entries outside p1's compartment`);
        assert.ok(!r.text.includes('Patient/p2') && !r.text.includes('"Two"'), `${path} leaked p2`);
      }
      const all = await pt.get('/_history?_count=100');
      const refs = (all.json.entry || []).map(refOf);
      assert.ok(refs.includes('Patient/p1'), `p1's own history missing: ${refs}`);
      assert.ok(refs.includes('Observation/o1'), `o1 missing: ${refs}`);
    });

    it('instance history of p2 reveals nothing', async () => {
      const r = await pt.get('/Patient/p2/_history');
      assert.ok(!(r.status === 200 && (r.json.entry || []).length > 0), `Patient/p2/_history with a p1 token: ${describeRes(r)}`);
      assert.ok(!r.text.includes('"Two"'));
    });

    it("p2's deletions stay out of p1's history; p1 cannot move its resources to p2", async () => {
      assertStatus(await admin.put('/Observation/o4', { resourceType: 'Observation', id: 'o4', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p2' } }), 201);
      assertStatus(await admin.del('/Observation/o4'), 204);
      for (const path of ['/_history?_count=100', '/Observation/_history?_count=100']) {
        const r = await pt.get(path);
        assertStatus(r, 200, path);
        assert.ok(!r.text.includes('o4'), `${path} with a p1 token shows p2's deleted Observation/o4: ${r.text.slice(0, 600)}`);
      }
      assertStatus(await pt.get('/Observation/o4'), 404, 'deleted p2 resource must look absent (404, not 410) to a p1 token');
      assertStatus(await admin.put('/Observation/o6', { resourceType: 'Observation', id: 'o6', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' } }), 201);
      const mv = await pt.put('/Observation/o6', { resourceType: 'Observation', id: 'o6', status: 'final', code: { text: 'moved' }, subject: { reference: 'Patient/p2' } });
      assertOutcome(mv, 403, 'forbidden', null, 'p1 token moving Observation/o6 into p2');
    });

    it('patient/Observation.rs patient/Patient.r: reads in p1, no create', async () => {
      const c = client(srv, mintToken(srv, { sub: 'pat-ro', scope: 'patient/Observation.rs patient/Patient.r', patient: 'p1' }));
      assertStatus(await c.get('/Patient/p1'), 200);
      assertStatus(await c.get('/Observation/o1'), 200);
      assertStatus(await c.get('/Patient/p2'), 404);
      assertStatus(await c.get('/Observation/o2'), 404);
      const r = await c.post('/Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/p1' } });
      assertOutcome(r, 403, 'forbidden', 'insufficient_scope', 'create with patient/Observation.rs');
    });
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv);
  });

  it('stderr contains no bearer token', () => {
    const log = srv.stderrText();
    for (const tok of srv.secrets) {
      assert.ok(!log.includes(tok), `a bearer token appears in the server log: ${tok.slice(0, 40)}...`);
      const sig = tok.split('.')[2];
      if (sig && sig.length > 20) assert.ok(!log.includes(sig), 'a token signature appears in the server log');
    }
  });
});
