// [rate_limit] per principal.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken, forgeJwt, sleep,
  assertOutcome, assertSecurityHeaders, describeRes,
  assertAllResponses,
} from './lib.mjs';

describe('rate limit (per_second = 1, burst = 3)', { timeout: 60000 }, () => {
  let srv;
  before(async () => {
    srv = await startServer({ name: 'ratelimit', config: '[rate_limit]\nper_second = 1\nburst = 3\n' });
  });
  after(async () => { await stopAndClean(srv); });
  afterEach(diagnose(() => [srv]));

  it('a burst of 10 requests from one token gets 429 with Retry-After', async () => {
    const c = client(srv, mintToken(srv, { sub: 'rl-user', scope: 'user/*.cruds' }));
    const t0 = Date.now();
    const rs = await Promise.all(Array.from({ length: 10 }, () => c.get('/Patient/nobody')));
    const elapsed = (Date.now() - t0) / 1000;
    const statuses = rs.map((r) => r.status);
    const passed = rs.filter((r) => r.status === 404).length;
    const limited = rs.filter((r) => r.status === 429);
    assert.deepEqual(statuses.filter((x) => x !== 404 && x !== 429), [], `unexpected statuses: ${statuses}`);
    assert.ok(passed >= 3, `burst = 3 should let at least 3 through: ${statuses}`);
    assert.ok(passed <= 3 + Math.ceil(elapsed), `burst 3 + 1/s over ${elapsed}s let ${passed} through: ${statuses}`);
    assert.ok(limited.length >= 1, `no 429 in a burst of 10: ${statuses}`);
    for (const r of limited) {
      assertOutcome(r, 429, 'throttled', 'too_many_requests', '429');
      assertSecurityHeaders(r, '429');
      const ra = r.headers['retry-after'];
      assert.ok(ra && (/^\d+$/.test(ra) ? Number(ra) >= 1 : !Number.isNaN(Date.parse(ra))), `Retry-After: ${JSON.stringify(ra)}; ${describeRes(r)}`);
    }
  });

  it('another principal is not affected', async () => {
    const other = client(srv, forgeJwt(srv, { sub: 'rl-other', clientId: 'rl-other-client' }));
    const r = await other.get('/Patient/nobody');
    assert.equal(r.status, 404, describeRes(r));
  });

  it('after Retry-After the principal is served again', async () => {
    const c = client(srv, mintToken(srv, { sub: 'rl-wait', scope: 'user/*.cruds' }));
    let last;
    for (let i = 0; i < 6; i++) last = await c.get('/Patient/nobody');
    assert.equal(last.status, 429, `6 rapid requests were not limited: ${describeRes(last)}`);
    const ra = Number(last.headers['retry-after']) || 1;
    await sleep(ra * 1000 + 300);
    const r = await c.get('/Patient/nobody');
    assert.equal(r.status, 404, `after waiting Retry-After=${ra}s: ${describeRes(r)}`);
  });

  it('every response carries the security headers and the FHIR JSON Content-Type', () => {
    assertAllResponses(srv);
  });
});
