// Shared by the fhir-kit-client end-to-end tests.
//  - In a flow (child process): `steps()` records each step's outcome and
//    `report(extra)` prints the one line `RESULT <json>` the test reads.
//  - In a test: `runFlow(file, srv, token)` runs a flow in its own node process
//    (so NODE_EXTRA_CA_CERTS, the server's development CA, applies to Node's
//    fetch, which fhir-kit-client uses) and returns what it reported.
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';

export function steps() {
  const results = {};
  const errorOf = (e) => (e && e.response
    ? { status: e.response.status, data: e.response.data }
    : { message: String(e && e.stack ? e.stack : e) });
  async function step(name, fn) {
    try {
      results[name] = { ok: true, value: await fn() };
    } catch (e) {
      results[name] = { ok: false, error: errorOf(e) };
    }
    return results[name];
  }
  const report = (extra) => process.stdout.write(`RESULT ${JSON.stringify({ ...extra, results })}\n`);
  return { step, report };
}

export function runFlow(file, srv, token) {
  const child = spawnSync(process.execPath, [file], {
    encoding: 'utf8',
    timeout: 60000,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: `${srv.dataDir}/tls/ca.pem`, FHIR_BASE: srv.base, FHIR_TOKEN: token },
  });
  const line = (child.stdout || '').split('\n').find((l) => l.startsWith('RESULT '));
  if (!line) {
    throw new Error(`fhir-kit-client flow printed no RESULT (exit ${child.status}, signal ${child.signal}):\n${child.stdout}\n${child.stderr}`);
  }
  return JSON.parse(line.slice(7));
}

/** The value of a step that must have succeeded. */
export function okStep(out, name) {
  const r = out.results[name];
  assert.ok(r, `step ${name} did not run`);
  assert.ok(r.ok, `step ${name} failed: ${JSON.stringify(r.error)}`);
  return r.value;
}
