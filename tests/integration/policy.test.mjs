// Acceptance tests of the policy engine (docs/policy.md) through the API, as a
// user sees it: status codes, OperationOutcomes, Bundle ids and totals, audit
// records, log events and CLI output.
//
//   1. the access matrix: every role of policies/default.toml against a seeded
//      population, for reads, searches (_include, _revinclude, chains, _has,
//      _total, _summary=count), histories, writes, batches and transactions;
//      the expected visible sets come from a small model (visibleTo below)
//   2. break-glass end to end (episode, audit, alert, review queue CLI)
//   3. POST /$explain-access
//   4. shadow mode (candidate policy)
//   5. policy reload (valid and invalid rewrites)
//   6. field rules (read-only and masked elements on writes)
//
// The policy is a copy of policies/default.toml without the time-of-day rule
// (front-desk-hours), so the tests do not depend on the clock. The rule
// admin-from-admin-network stays: the tests connect from 127.0.0.1, inside it.
// The copy adds one test role, `registrar`, with masked and read-only elements
// and write permission (no shipped role has read_only elements).
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  startServer, stopAndClean, diagnose, client, forgeJwt, runCli, sqlite, sleep,
  tempRoot, assertStatus, assertOutcome, describeRes,
  logEvents, waitFor,
} from './lib.mjs';
import { addUser, auditRecords, totp } from './oauth-lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHIPPED_POLICY = fs.readFileSync(path.join(HERE, '..', '..', 'policies', 'default.toml'), 'utf8');

// ---------------------------------------------------------------------------
// The policy under test

const REGISTRAR_ROLE = `
# Test-only role: a registration clerk who may update demographics but never
# sees identifiers and may not change the birth date.
[roles.registrar]
description = "Registrar (integration test role): masked identifiers, read-only birth date"
relationship = "none"
scopes = ["user/*.cruds"]
permissions = ["Patient.read", "Patient.search", "Patient.update", "Patient.patch"]
masked = ["Patient.identifier"]
read_only = ["Patient.birthDate"]

# Test-only role: a privacy officer who reads everything and may explain
# access (resource-level explanations need read access to the resource).
[roles.privacy-officer]
description = "Privacy officer (integration test role)"
relationship = "none"
scopes = ["user/*.rs"]
permissions = ["*.read", "*.vread", "*.search"]
`;

/** Removes the [[rule]] block with the given id (up to the next blank line before a comment/table). */
function dropRule(text, id) {
  const start = text.indexOf(`[[rule]]\nid = "${id}"`);
  assert.ok(start >= 0, `rule ${id} not found in policies/default.toml`);
  let end = text.indexOf('\n[', start + 10);
  // Include the comment lines that precede the next block in what stays.
  const prevComment = text.lastIndexOf('\n\n', end);
  if (prevComment > start) end = prevComment + 1;
  return text.slice(0, start) + text.slice(end);
}

/** The test copy of the shipped policy: deterministic, plus the registrar role. */
function testPolicy({ version = '1', edit = (t) => t } = {}) {
  let t = dropRule(SHIPPED_POLICY, 'front-desk-hours');
  assert.ok(!t.includes('front-desk-hours'));
  assert.ok(t.includes('id = "admin-from-admin-network"'));
  t = t.replace(/^version = "1"$/m, `version = "${version}"`);
  // Insert the test role before the deny rules.
  t = t.replace('# --- Deny rules', `${REGISTRAR_ROLE}\n# --- Deny rules`);
  t = t.replace(/^default_roles = .*$/m, (line) => `${line}\nexplain_roles = ["admin", "auditor", "privacy-officer"]`);
  return edit(t);
}

/** Removes permissions from a role's permissions list (exact strings). */
function withoutPermissions(text, role, perms) {
  const head = `[roles.${role}]`;
  const i = text.indexOf(head);
  assert.ok(i >= 0, `role ${role}`);
  const next = text.indexOf('\n[', i + head.length);
  let block = text.slice(i, next);
  for (const p of perms) {
    const before = block;
    block = block.replace(new RegExp(`"${p.replace('.', '\\.')}",\\s*`), '');
    assert.notEqual(block, before, `${role} has no permission ${p}`);
  }
  return text.slice(0, i) + block + text.slice(next);
}

function serverConfig(root, { file, candidate, reloadSeconds = 5, extra = '' }) {
  let c = `[policy]\nfile = "${file}"\ncache_seconds = 0\nreload_seconds = ${reloadSeconds}\n`;
  if (candidate) c += `candidate = "${candidate}"\n`;
  c += '[oauth]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n';
  return c + extra;
}

async function startWithPolicy(name, { policy = testPolicy(), candidate, reloadSeconds, extra } = {}) {
  const root = tempRoot(`fhirward-policy-${name}-`);
  const file = `${root}/policy.toml`;
  fs.writeFileSync(file, policy);
  let cand;
  if (candidate) {
    cand = `${root}/candidate.toml`;
    fs.writeFileSync(cand, candidate);
  }
  const srv = await startServer({ root, name, config: serverConfig(root, { file, candidate: cand, reloadSeconds, extra: typeof extra === 'function' ? extra(root) : extra }) });
  srv.policyFile = file;
  return srv;
}

// ---------------------------------------------------------------------------
// The population

const CODE_SYSTEM = 'urn:it:code';
const V3_ACT = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';
const V3_CONF = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
const DAR = 'http://hl7.org/fhir/StructureDefinition/data-absent-reason';
const REDACTED = { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'REDACTED' };
const label = (code) => ({ system: code === 'R' || code === 'V' ? V3_CONF : V3_ACT, code });

const NAMES = { p1: 'Alpha', p2: 'Bravo', p3: 'Charlie' };
const MRN = { p1: 'MRN-ALPHA-0001', p2: 'MRN-BRAVO-0002', p3: 'MRN-CHARLIE-0003' };
const BIRTH = { p1: '1971-01-01', p2: '1982-02-02', p3: '1993-03-03' };

const patientRes = (id, labels = []) => ({
  resourceType: 'Patient', id,
  ...(labels.length ? { meta: { security: labels.map(label) } } : {}),
  identifier: [{ system: 'urn:it:mrn', value: MRN[id] }],
  name: [{ family: NAMES[id], given: ['Pat'] }],
  telecom: [{ system: 'phone', value: `555-000-${id}` }],
  birthDate: BIRTH[id],
});
const practitionerRes = (id) => ({ resourceType: 'Practitioner', id, name: [{ family: `Doctor-${id}` }] });
const obsRes = (id, patient, labels = []) => ({
  resourceType: 'Observation', id, status: 'final',
  ...(labels.length ? { meta: { security: labels.map(label) } } : {}),
  code: { coding: [{ system: CODE_SYSTEM, code: id }] },
  subject: { reference: `Patient/${patient}` },
  valueQuantity: { value: 120, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' },
});
const encounterRes = (id, patient, status, practitioner) => ({
  resourceType: 'Encounter', id, status,
  class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
  subject: { reference: `Patient/${patient}` },
  ...(practitioner ? { participant: [{ individual: { reference: `Practitioner/${practitioner}` } }] } : {}),
});
const careTeamRes = (id, patient, members) => ({
  resourceType: 'CareTeam', id, status: 'active',
  subject: { reference: `Patient/${patient}` },
  participant: members.map((m) => ({ member: { reference: `Practitioner/${m}` } })),
});
// P1 permits everything except PSY-labelled data to Practitioner/dr1.
const consentRes = {
  resourceType: 'Consent', id: 'c1', status: 'active',
  scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
  category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
  patient: { reference: 'Patient/p1' },
  policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
  provision: {
    type: 'permit',
    provision: [{
      type: 'deny',
      actor: [{
        role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'PRCP' }] },
        reference: { reference: 'Practitioner/dr1' },
      }],
      securityLabel: [{ system: V3_ACT, code: 'PSY' }],
    }],
  },
};

/** The seeded resources with the facts the model needs: patients (compartments) and labels. */
const SEED = [
  { res: patientRes('p1'), patients: ['p1'], labels: [] },
  { res: patientRes('p2', ['R']), patients: ['p2'], labels: ['R'] },
  { res: patientRes('p3'), patients: ['p3'], labels: [] },
  { res: practitionerRes('dr1'), patients: [], labels: [] },
  { res: practitionerRes('dr2'), patients: [], labels: [] },
  { res: practitionerRes('dr3'), patients: [], labels: [] },
  { res: practitionerRes('nurse1'), patients: [], labels: [] },
  { res: { resourceType: 'Medication', id: 'med1', code: { coding: [{ system: CODE_SYSTEM, code: 'aspirin' }] } }, patients: [], labels: [] },
  // Dr1 and nurse1: P1's active care team. Dr2: P2's finished encounter.
  // Dr3: only a *cancelled* encounter of P3, which relates nobody.
  { res: careTeamRes('ct1', 'p1', ['dr1', 'nurse1']), patients: ['p1'], labels: [] },
  { res: encounterRes('e1', 'p1', 'finished'), patients: ['p1'], labels: [] },
  { res: encounterRes('e2', 'p2', 'finished', 'dr2'), patients: ['p2'], labels: [] },
  { res: encounterRes('e3', 'p3', 'cancelled', 'dr3'), patients: ['p3'], labels: [] },
  { res: obsRes('o1a', 'p1'), patients: ['p1'], labels: [] },
  { res: obsRes('o1psy', 'p1', ['PSY']), patients: ['p1'], labels: ['PSY'] },
  { res: obsRes('o2a', 'p2'), patients: ['p2'], labels: [] },
  { res: obsRes('o2r', 'p2', ['R']), patients: ['p2'], labels: ['R'] },
  { res: obsRes('o3a', 'p3'), patients: ['p3'], labels: [] },
  { res: consentRes, patients: ['p1'], labels: [] },
];
const SHARED_TYPES = new Set(['Practitioner', 'Medication']);
const key = (s) => `${s.res.resourceType}/${s.res.id}`;
const seedOf = (type, id) => SEED.find((s) => s.res.resourceType === type && s.res.id === id);

async function seed(srv) {
  const sys = client(srv, forgeJwt(srv, { sub: 'seeder', scope: 'system/*.cruds', clientId: 'seeder' }));
  for (const s of SEED) {
    const r = await sys.put(`/${key(s)}`, s.res);
    assertStatus(r, 201, `seed ${key(s)}`);
  }
  return sys;
}

// ---------------------------------------------------------------------------
// Principals and the model of what each may see

const ALL = null;
const CTM_DENIED = ['ETH', 'PSY', 'HIV', 'STD', 'SDV'];
const RESEARCH_DENIED = ['R', 'V', 'PSY', 'HIV', 'ETH', 'STD', 'SDV'];
const RESEARCH_MASKED = ['name', 'telecom', 'address', 'identifier', 'photo', 'contact', 'birthDate'];

/**
 * read: types the principal may read and search (ALL: any); history: may use
 * vread and the history interactions; patients: the confinement (ALL: none); denied:
 * labels never seen; consentHidden: resources a Consent hides from them;
 * masked: Patient elements masked; refusedAll: every request is refused (a rule).
 */
const PRINCIPALS = {
  'smart-app (system/*.cruds, no roles claim)': {
    token: { sub: 'app', scope: 'system/*.cruds', clientId: 'backend' },
    read: ALL, history: true, patients: ALL, denied: [],
  },
  'patient P1': {
    token: { sub: 'pat1', scope: 'openid fhirUser launch/patient patient/*.cruds', patient: 'p1', claims: { roles: ['patient'], fhirUser: 'Patient/p1' } },
    read: ALL, history: true, patients: ['p1'], denied: [],
  },
  'clinician Dr1 (care team of P1, consent denies PSY)': {
    token: { sub: 'dr1', claims: { roles: ['clinician'], fhirUser: 'Practitioner/dr1', purpose_of_use: ['TREAT'] } },
    read: ALL, history: true, patients: ['p1'], denied: [], consentHidden: ['Observation/o1psy'],
  },
  'clinician Dr2 (encounter participant of P2)': {
    token: { sub: 'dr2', claims: { roles: ['clinician'], fhirUser: 'Practitioner/dr2', purpose_of_use: ['TREAT'] } },
    read: ALL, history: true, patients: ['p2'], denied: [],
  },
  'clinician Dr3 (no relationship; cancelled encounter only)': {
    token: { sub: 'dr3', claims: { roles: ['clinician'], fhirUser: 'Practitioner/dr3', purpose_of_use: ['TREAT'] } },
    read: ALL, history: true, patients: [], denied: [],
  },
  'care-team-member nurse1 (care team of P1)': {
    token: { sub: 'nurse1', scope: 'user/*.rs user/Observation.cu', claims: { roles: ['care-team-member'], fhirUser: 'Practitioner/nurse1' } },
    read: ALL, history: true, patients: ['p1'], denied: CTM_DENIED,
  },
  'front-desk': {
    token: { sub: 'fd1', claims: { roles: ['front-desk'], fhirUser: 'Practitioner/fd1' } },
    read: ['Patient', 'Appointment', 'Coverage', 'Encounter', 'Schedule', 'Slot', 'RelatedPerson', 'Practitioner', 'Organization', 'Location'],
    history: false, patients: ALL, denied: ['R', 'V'],
  },
  'researcher with HRESCH': {
    token: { sub: 'res1', scope: 'user/*.rs', claims: { roles: ['researcher'], fhirUser: 'Practitioner/res1', purpose_of_use: ['HRESCH'] } },
    read: ['Patient', 'Observation', 'Condition', 'Encounter', 'Procedure', 'MedicationRequest'],
    history: false, patients: ALL, denied: RESEARCH_DENIED, masked: RESEARCH_MASKED,
  },
  'researcher without HRESCH': {
    token: { sub: 'res2', scope: 'user/*.rs', claims: { roles: ['researcher'], fhirUser: 'Practitioner/res2', purpose_of_use: ['TREAT'] } },
    read: [], history: false, patients: ALL, denied: RESEARCH_DENIED, refusedAll: 'rule:research-needs-purpose',
  },
  auditor: {
    token: { sub: 'aud1', scope: 'user/*.rs', claims: { roles: ['auditor'], fhirUser: 'Practitioner/aud' } },
    read: ['AuditEvent', 'Consent', 'Provenance'], history: false, patients: ALL, denied: [],
  },
  admin: {
    token: { sub: 'adm1', claims: { roles: ['admin'], fhirUser: 'Practitioner/adm' } },
    read: ['Practitioner', 'PractitionerRole', 'Organization', 'Location', 'CareTeam', 'Endpoint', 'HealthcareService'],
    history: false, patients: ALL, denied: [],
  },
};

function tokenFor(srv, p, extra = {}) {
  const t = { scope: 'user/*.cruds', clientId: 'ehr', ...p.token, ...extra };
  t.claims = { ...(p.token.claims || {}), ...(extra.claims || {}) };
  return forgeJwt(srv, t);
}

const mayRead = (p, type) => p.read === ALL || p.read.includes(type);

/** Whether principal p sees seeded resource s (given it may read the type). */
function visibleTo(p, s) {
  if (!mayRead(p, s.res.resourceType)) return false;
  if (p.patients !== ALL) {
    if (s.patients.length === 0) {
      if (!SHARED_TYPES.has(s.res.resourceType)) return false;
    } else if (!s.patients.every((pt) => p.patients.includes(pt))) {
      return false;
    }
  }
  if (s.labels.some((l) => p.denied.includes(l))) return false;
  if ((p.consentHidden || []).includes(key(s))) return false;
  return true;
}
const visibleIds = (p, type, pred = () => true) => SEED
  .filter((s) => s.res.resourceType === type && pred(s) && visibleTo(p, s))
  .map((s) => s.res.id).sort();

// ---------------------------------------------------------------------------
// Response helpers

const matchIds = (b) => (b.entry || []).filter((e) => (e.search?.mode ?? 'match') === 'match').map((e) => e.resource.id).sort();
const includeKeys = (b) => (b.entry || []).filter((e) => e.search?.mode === 'include').map((e) => `${e.resource.resourceType}/${e.resource.id}`).sort();
const entryKeys = (b) => [...new Set((b.entry || []).filter((e) => e.resource).map((e) => `${e.resource.resourceType}/${e.resource.id}`))].sort();

function assertForbidden(res, what) {
  assertOutcome(res, 403, 'forbidden', ['forbidden', 'insufficient_scope'], what);
}

function assertBundle(res, what) {
  assertStatus(res, 200, what);
  assert.equal(res.json?.resourceType, 'Bundle', `${what}: ${describeRes(res)}`);
  return res.json;
}

/** Masked Patient elements: a data-absent-reason "masked" placeholder, never the value. */
function assertMaskedPatient(pat, masked, what) {
  const id = pat.id;
  assert.ok((pat.meta?.security || []).some((c) => c.system === REDACTED.system && c.code === REDACTED.code),
    `${what}: Patient/${id} lacks the REDACTED label: ${JSON.stringify(pat)}`);
  const text = JSON.stringify(pat);
  for (const secret of [NAMES[id], MRN[id], BIRTH[id], `555-000-${id}`].filter(Boolean)) {
    assert.ok(!text.includes(secret), `${what}: masked value ${secret} of Patient/${id} leaked: ${text}`);
  }
  const darMasked = (x) => (x?.extension || []).some((e) => e.url === DAR && e.valueCode === 'masked');
  for (const el of ['name', 'identifier', 'telecom']) {
    if (!masked.includes(el)) continue;
    assert.ok(Array.isArray(pat[el]) && pat[el].length > 0 && pat[el].every(darMasked),
      `${what}: Patient/${id}.${el} is not a masked placeholder: ${JSON.stringify(pat[el])}`);
  }
  if (masked.includes('birthDate')) {
    assert.equal(pat.birthDate, undefined);
    assert.ok(darMasked(pat._birthDate), `${what}: Patient/${id}._birthDate: ${JSON.stringify(pat._birthDate)}`);
  }
}

function assertNoMaskLeak(p, res, what) {
  if (!p.masked) return;
  for (const e of res.json?.entry || []) {
    if (e.resource?.resourceType === 'Patient') assertMaskedPatient(e.resource, p.masked, what);
  }
}

/** Audit records of one request (by X-Request-Id), waiting briefly for the writer. */
async function auditOf(srv, res, { min = 1 } = {}) {
  const id = res.headers['x-request-id'];
  assert.ok(id, 'X-Request-Id');
  for (let i = 0; i < 40; i++) {
    const recs = auditRecords(srv, { request_id: id });
    if (recs.length >= min) return recs;
    await sleep(50);
  }
  return auditRecords(srv, { request_id: id });
}

// ===========================================================================
// 1. The access matrix

describe('policy: access matrix of the default role catalogue', { timeout: 180000 }, () => {
  let srv;
  let sys;
  const c = {};

  before(async () => {
    srv = await startWithPolicy('matrix');
    sys = await seed(srv);
    for (const [name, p] of Object.entries(PRINCIPALS)) c[name] = client(srv, tokenFor(srv, p));
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  it('the server enforces the test copy of the default policy', async () => {
    const loaded = logEvents(srv, 'policy_loaded');
    assert.ok(loaded.some((e) => e.policy === 'fhirward-default@1'), `policy_loaded events: ${JSON.stringify(loaded)}`);
    const r = await sys.get('/Patient/p1');
    assertStatus(r, 200);
    const [rec] = await auditOf(srv, r);
    assert.equal(rec.policy_id, 'fhirward-default@1');
    assert.match(rec.decision, /^fhirward-default@1 allow role=smart-app /);
  });

  for (const [name, p] of Object.entries(PRINCIPALS)) {
    describe(name, () => {
      // --- read of every seeded resource ---------------------------------
      it('read: 200 for visible resources, 404 (like absent) for hidden ones, 403 for types without permission', async () => {
        const wrong = [];
        for (const s of SEED) {
          const r = await c[name].get(`/${key(s)}`);
          const want = p.refusedAll || !mayRead(p, s.res.resourceType) ? 403 : visibleTo(p, s) ? 200 : 404;
          if (r.status !== want) wrong.push(`${key(s)}: want ${want}, got ${r.status} ${r.text.slice(0, 200)}`);
          if (want === 404) {
            assertOutcome(r, 404, 'not-found', 'not_found', `hidden ${key(s)}`);
            const absent = await c[name].get(`/${s.res.resourceType}/absent-${s.res.id}`);
            assert.equal(r.text, absent.text, `hidden ${key(s)} must be answered exactly like an absent resource`);
          }
          if (want === 403) assertForbidden(r, `read ${key(s)}`);
          // vread answers alike, for the roles with a vread permission (the
          // same that have history: *.vread / *.*; front-desk, researcher,
          // auditor and admin have only read and search).
          const v = await c[name].get(`/${key(s)}/_history/1`);
          const wantV = p.history ? want : 403;
          if (v.status !== wantV) wrong.push(`vread ${key(s)}/_history/1: want ${wantV}, got ${v.status} ${v.text.slice(0, 200)}`);
          if (want === 200 && s.res.resourceType === 'Patient') assertNoMaskLeak(p, { json: { entry: [{ resource: r.json }] } }, `read ${key(s)}`);
        }
        assert.deepEqual(wrong, []);
      });

      // --- plain searches with accurate totals ----------------------------
      for (const type of ['Patient', 'Observation', 'Encounter', 'CareTeam', 'Consent', 'Practitioner', 'Medication']) {
        it(`search ${type}?_total=accurate: exactly the visible ids, total counts only them`, async () => {
          const r = await c[name].get(`/${type}?_total=accurate&_count=100`);
          if (p.refusedAll || !mayRead(p, type)) { assertForbidden(r, `search ${type}`); return; }
          const b = assertBundle(r, `search ${type}`);
          const want = visibleIds(p, type);
          assert.deepEqual(matchIds(b), want, `${type} ids`);
          if (b.total !== want.length) {
            const [rec] = await auditOf(srv, r);
            assert.fail(`${type} total ${b.total} counts resources that are not returned (visible: ${JSON.stringify(want)}); decision: ${rec?.decision}`);
          }
          assertNoMaskLeak(p, r, `search ${type}`);
        });
      }

      it('_summary=count on Observation and Patient counts only visible resources', async () => {
        for (const type of ['Observation', 'Patient']) {
          const r = await c[name].get(`/${type}?_summary=count`);
          if (p.refusedAll || !mayRead(p, type)) { assertForbidden(r, `${type}?_summary=count`); continue; }
          const b = assertBundle(r, `${type}?_summary=count`);
          assert.equal(b.total, visibleIds(p, type).length, `${type}?_summary=count total`);
          assert.equal((b.entry || []).length, 0);
        }
      });

      it('Observation?_include=Observation:subject includes only visible patients', async () => {
        const r = await c[name].get('/Observation?_include=Observation:subject&_total=accurate');
        if (p.refusedAll || !mayRead(p, 'Observation')) { assertForbidden(r, '_include'); return; }
        const b = assertBundle(r, '_include');
        const obs = visibleIds(p, 'Observation');
        assert.deepEqual(matchIds(b), obs);
        assert.equal(b.total, obs.length);
        const subjects = [...new Set(obs.map((id) => seedOf('Observation', id).patients[0]))]
          .filter((pt) => visibleTo(p, seedOf('Patient', pt))).map((pt) => `Patient/${pt}`).sort();
        assert.deepEqual(includeKeys(b), subjects, 'included patients');
        assertNoMaskLeak(p, r, '_include');
      });

      it('Patient?_revinclude=Observation:subject includes only visible observations', async () => {
        const r = await c[name].get('/Patient?_revinclude=Observation:subject&_total=accurate');
        if (p.refusedAll || !mayRead(p, 'Patient')) { assertForbidden(r, '_revinclude'); return; }
        if (!mayRead(p, 'Observation')) {
          // front-desk: may search patients, may not read observations: the
          // revinclude must not hand them out (403 or no included entries).
          if (r.status === 403) { assertForbidden(r, '_revinclude'); return; }
          const b = assertBundle(r, '_revinclude');
          assert.deepEqual(includeKeys(b), [], 'no Observation for a principal without Observation.read');
          return;
        }
        const b = assertBundle(r, '_revinclude');
        const pats = visibleIds(p, 'Patient');
        assert.deepEqual(matchIds(b), pats);
        assert.equal(b.total, pats.length);
        const obs = visibleIds(p, 'Observation', (s) => pats.includes(s.patients[0])).map((id) => `Observation/${id}`);
        assert.deepEqual(includeKeys(b), obs.sort(), 'revincluded observations');
        assertNoMaskLeak(p, r, '_revinclude');
      });

      for (const pt of ['p1', 'p2', 'p3']) {
        it(`chained Observation?subject:Patient.name=${NAMES[pt]} matches only through a visible patient`, async () => {
          const r = await c[name].get(`/Observation?subject:Patient.name=${NAMES[pt]}&_total=accurate`);
          if (p.refusedAll || !mayRead(p, 'Observation')) { assertForbidden(r, 'chain'); return; }
          if (p.masked?.includes('name')) {
            // Searching on a masked element would tell its value: refused.
            assertForbidden(r, 'chain on a masked element');
            assert.match(r.json.issue[0].diagnostics, /Patient\.name is masked/);
            return;
          }
          const b = assertBundle(r, 'chain');
          const want = visibleTo(p, seedOf('Patient', pt)) ? visibleIds(p, 'Observation', (s) => s.patients[0] === pt) : [];
          assert.deepEqual(matchIds(b), want);
          assert.equal(b.total, want.length);
        });
      }

      for (const o of ['o1a', 'o1psy', 'o2r', 'o3a']) {
        it(`_has: Patient?_has:Observation:subject:code=${o} reveals the patient only when ${o} is visible`, async () => {
          const r = await c[name].get(`/Patient?_has:Observation:subject:code=${CODE_SYSTEM}|${o}&_total=accurate`);
          if (p.refusedAll || !mayRead(p, 'Patient')) { assertForbidden(r, '_has'); return; }
          if (!mayRead(p, 'Observation')) {
            // Searching by a type one may not read must not answer the question.
            if (r.status === 403) { assertForbidden(r, '_has'); return; }
            const b = assertBundle(r, '_has');
            assert.deepEqual(matchIds(b), [], `_has through Observation for ${name}`);
            assert.equal(b.total, 0);
            return;
          }
          const b = assertBundle(r, '_has');
          const so = seedOf('Observation', o);
          const pt = seedOf('Patient', so.patients[0]);
          const want = visibleTo(p, so) && visibleTo(p, pt) ? [pt.res.id] : [];
          assert.deepEqual(matchIds(b), want);
          assert.equal(b.total, want.length);
        });
      }

      // --- histories --------------------------------------------------------
      it('history of an instance: its versions when visible, 404 when hidden, 403 without permission', async () => {
        const wrong = [];
        for (const k of ['Observation/o1a', 'Observation/o1psy', 'Observation/o2r', 'Observation/o3a', 'Patient/p2', 'Practitioner/dr1']) {
          const [type, id] = k.split('/');
          const s = seedOf(type, id);
          const r = await c[name].get(`/${k}/_history`);
          const want = p.refusedAll || !p.history || !mayRead(p, type) ? 403 : visibleTo(p, s) ? 200 : 404;
          if (r.status !== want) { wrong.push(`${k}: want ${want}, got ${r.status}`); continue; }
          if (want === 200) assert.deepEqual(entryKeys(r.json), [k]);
        }
        assert.deepEqual(wrong, []);
      });

      it('history of the Observation type lists only visible observations', async () => {
        const r = await c[name].get('/Observation/_history?_count=100');
        if (p.refusedAll || !p.history || !mayRead(p, 'Observation')) { assertForbidden(r, 'type history'); return; }
        const b = assertBundle(r, 'type history');
        assert.deepEqual(entryKeys(b), visibleIds(p, 'Observation').map((id) => `Observation/${id}`));
      });

      it('history of the system lists only visible resources', async () => {
        const r = await c[name].get('/_history?_count=100');
        if (p.refusedAll || !p.history) { assertForbidden(r, 'system history'); return; }
        const b = assertBundle(r, 'system history');
        const got = entryKeys(b);
        const visible = SEED.filter((s) => visibleTo(p, s));
        // Nothing invisible appears ...
        assert.deepEqual(got.filter((k) => !visible.some((s) => key(s) === k)), [], 'invisible resources in the system history');
        // ... and every visible resource of a patient compartment does. (Shared
        // reference data - Practitioner, Medication - is left out of the
        // histories of patient-confined principals by this server: not
        // asserted either way, docs/policy.md does not say.)
        const must = visible.filter((s) => p.patients === ALL || s.patients.length > 0).map(key).sort();
        assert.deepEqual(must.filter((k) => !got.includes(k)), [], 'visible resources missing from the system history');
        assertNoMaskLeak(p, r, 'system history');
      });
    });
  }

  // --- audit of decisions ------------------------------------------------------
  it('audit records name the deciding policy, role and rule, for allows and denials', async () => {
    const dr3 = c['clinician Dr3 (no relationship; cancelled encounter only)'];
    const a = await dr3.get('/Observation?_total=accurate');
    assertStatus(a, 200);
    assert.equal(a.json.total, 0);
    const [ra] = await auditOf(srv, a);
    assert.equal(ra.policy_id, 'fhirward-default@1');
    assert.equal(ra.outcome, 'success');
    assert.equal(ra.count, 0);
    assert.match(ra.decision, /^fhirward-default@1 allow role=clinician rule=role:clinician permission:\*\.search scope:user\/\*\.cruds patients=0/);

    const d = await c['front-desk'].get('/Observation/o1a');
    assertForbidden(d, 'front-desk reads an observation');
    assert.match(d.json.issue[0].diagnostics || d.json.issue[0].details?.text || '', /front-desk|Observation/);
    const [rd] = await auditOf(srv, d);
    assert.equal(rd.outcome, 'denied');
    assert.match(rd.decision, /^fhirward-default@1 deny role=front-desk /);

    const rr = await c['researcher without HRESCH'].get('/Observation');
    assertForbidden(rr, 'researcher without purpose');
    const [rrec] = await auditOf(srv, rr);
    assert.match(rrec.decision, /deny role=researcher rule=rule:research-needs-purpose reason=denied_by_rule/);

    const h = await c['care-team-member nurse1 (care team of P1)'].get('/Observation/o1psy');
    assertStatus(h, 404);
    const [rh] = await auditOf(srv, h);
    assert.equal(rh.outcome, 'denied');
    assert.match(rh.error, /security_label:PSY/);
  });

  it('a roles claim naming no role of the policy is refused everything', async () => {
    const u = client(srv, forgeJwt(srv, { sub: 'x', scope: 'user/*.cruds', claims: { roles: ['superuser'] } }));
    assertForbidden(await u.get('/Practitioner/dr1'), 'unknown role');
    const k = client(srv, forgeJwt(srv, { sub: 'k', scope: 'user/*.cruds system/*.cruds', claims: { roles: 'key-admin' } }));
    assertForbidden(await k.get('/Practitioner/dr1'), 'key-admin has no FHIR access');
    // A space-separated roles claim works like an array.
    const two = client(srv, forgeJwt(srv, { sub: 'fdc', scope: 'user/*.cruds', claims: { roles: 'front-desk clinician', fhirUser: 'Practitioner/dr1' } }));
    const r = await two.get('/Observation/o1a');
    assertStatus(r, 200, 'front-desk + clinician reads as clinician');
  });

  // --- writes --------------------------------------------------------------------
  describe('writes', () => {
    const newObs = (patient, code) => ({
      resourceType: 'Observation', status: 'final',
      code: { coding: [{ system: CODE_SYSTEM, code }] },
      subject: { reference: `Patient/${patient}` },
    });
    const existsByCode = async (code) => {
      const r = await sys.get(`/Observation?code=${CODE_SYSTEM}|${code}&_total=accurate`);
      assertStatus(r, 200);
      return r.json.total;
    };
    const P = (n) => c[Object.keys(PRINCIPALS).find((k) => k.startsWith(n))];

    // [principal, method, path, body, expected status, what]
    const TABLE = [
      ['clinician Dr1', 'POST', '/Observation', newObs('p1', 'w-dr1-p1'), 201, 'charts for a related patient'],
      ['clinician Dr1', 'POST', '/Observation', newObs('p2', 'w-dr1-p2'), 403, 'cannot chart for an unrelated patient'],
      ['clinician Dr1', 'PUT', '/Observation/o1a', { ...obsRes('o1a', 'p2') }, 403, 'cannot move an observation to another patient'],
      ['clinician Dr1', 'DELETE', '/Observation/o1a', undefined, 403, 'may not delete'],
      ['clinician Dr1', 'POST', '/Patient', { resourceType: 'Patient', name: [{ family: 'W-dr1' }] }, 403, 'may not register patients'],
      ['clinician Dr3', 'POST', '/Observation', newObs('p3', 'w-dr3-p3'), 403, 'no relationship, no charting'],
      ['clinician Dr3', 'PUT', '/Observation/o3a', obsRes('o3a', 'p3'), [403, 404], 'cannot update an observation it cannot see'],
      ['care-team-member', 'POST', '/Observation', newObs('p1', 'w-nurse-p1'), 201, 'records an observation'],
      ['care-team-member', 'POST', '/Observation', newObs('p3', 'w-nurse-p3'), 403, 'not for an unrelated patient'],
      ['care-team-member', 'POST', '/Condition', { resourceType: 'Condition', subject: { reference: 'Patient/p1' }, code: { text: 'x' } }, 403, 'cannot record a condition'],
      ['care-team-member', 'PUT', '/Observation/o1psy', obsRes('o1psy', 'p1'), [403, 404], 'cannot overwrite a PSY-labelled observation it cannot see'],
      ['patient P1', 'POST', '/QuestionnaireResponse', { resourceType: 'QuestionnaireResponse', status: 'completed', subject: { reference: 'Patient/p1' } }, 201, 'answers a questionnaire'],
      ['patient P1', 'POST', '/QuestionnaireResponse', { resourceType: 'QuestionnaireResponse', status: 'completed', subject: { reference: 'Patient/p2' } }, 403, 'not in another record'],
      ['patient P1', 'PUT', '/Observation/o1a', obsRes('o1a', 'p1'), 403, 'may not update observations'],
      ['patient P1', 'DELETE', '/Observation/o1a', undefined, 403, 'may not delete observations'],
      ['front-desk', 'POST', '/Patient', { resourceType: 'Patient', name: [{ family: 'W-fd' }] }, 201, 'registers a patient'],
      ['front-desk', 'POST', '/Observation', newObs('p1', 'w-fd-p1'), 403, 'no clinical data'],
      ['front-desk', 'PUT', '/Patient/p2', patientRes('p2'), [403, 404], 'cannot overwrite a restricted (R) record'],
      ['front-desk', 'DELETE', '/Patient/p1', undefined, 403, 'may not delete patients'],
      ['researcher with HRESCH', 'POST', '/Observation', newObs('p1', 'w-res-p1'), 403, 'cannot write'],
      ['auditor', 'POST', '/Consent', { ...consentRes, id: undefined }, 403, 'cannot write consents'],
      ['admin', 'POST', '/Practitioner', { resourceType: 'Practitioner', name: [{ family: 'W-admin' }] }, 201, 'maintains the directory'],
      ['admin', 'POST', '/Observation', newObs('p1', 'w-admin-p1'), 403, 'no clinical data'],
    ];
    for (const [who, method, p, body, want, what] of TABLE) {
      it(`${who}: ${method} ${p} -> ${want} (${what})`, async () => {
        const before = body && p.split('/').length === 3 ? await sys.get(p) : undefined;
        const r = await P(who)(method, p, body === undefined ? {} : { body });
        assertStatus(r, want, `${who} ${method} ${p}`);
        if (r.status === 403) assertForbidden(r, `${who} ${method} ${p}`);
        if (r.status >= 400 && body?.resourceType === 'Observation' && !p.split('/')[2]) {
          assert.equal(await existsByCode(body.code.coding[0].code), 0, 'nothing was written');
        }
        if (r.status >= 400 && before) {
          const afterRes = await sys.get(p);
          assert.equal(afterRes.json.meta.versionId, before.json.meta.versionId, 'stored resource unchanged');
        }
        if (method === 'DELETE' && r.status >= 400) assertStatus(await sys.get(p), 200, 'still there');
      });
    }

    it('a batch: each entry is decided on its own; hidden reads are answered like absent ones', async () => {
      const dr1 = P('clinician Dr1');
      const r = await dr1.post('/', {
        resourceType: 'Bundle', type: 'batch', entry: [
          { request: { method: 'GET', url: 'Observation/o1a' } },
          { request: { method: 'GET', url: 'Observation/o2a' } },
          { request: { method: 'GET', url: 'Observation/o1psy' } },
          { request: { method: 'GET', url: 'Observation?subject=Patient/p2&_total=accurate' } },
          { request: { method: 'POST', url: 'Observation' }, resource: newObs('p1', 'b-dr1-p1') },
          { request: { method: 'POST', url: 'Observation' }, resource: newObs('p2', 'b-dr1-p2') },
          { request: { method: 'DELETE', url: 'Observation/o1a' } },
        ],
      });
      const b = assertBundle(r, 'batch');
      assert.equal(b.type, 'batch-response');
      const st = b.entry.map((e) => e.response.status.split(' ')[0]);
      assert.deepEqual(st, ['200', '404', '404', '200', '201', '403', '403'], JSON.stringify(b.entry.map((e) => e.response)));
      assert.equal(b.entry[0].resource.id, 'o1a');
      assert.equal(b.entry[3].resource.total, 0, 'search inside a batch is narrowed too');
      assert.deepEqual(b.entry[3].resource.entry || [], []);
      assert.equal(await existsByCode('b-dr1-p1'), 1);
      assert.equal(await existsByCode('b-dr1-p2'), 0);
      assert.ok(!r.text.includes('o2a"') && !r.text.includes('o1psy"'), 'no hidden resource in the batch response');
      const recs = await auditOf(srv, r, { min: 8 });
      const entries = recs.filter((x) => x.action !== 'batch');
      assert.equal(entries.length, 7, JSON.stringify(recs.map((x) => x.action)));
      assert.ok(entries.every((x) => x.policy_id === 'fhirward-default@1' && x.decision), 'each entry carries its decision');
      assert.deepEqual(entries.map((x) => x.outcome), ['success', 'denied', 'denied', 'success', 'success', 'denied', 'denied']);
    });

    it('a transaction with one forbidden entry is refused as a whole', async () => {
      const dr1 = P('clinician Dr1');
      const r = await dr1.post('/', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { request: { method: 'POST', url: 'Observation' }, resource: newObs('p1', 't-dr1-p1') },
          { request: { method: 'POST', url: 'Observation' }, resource: newObs('p2', 't-dr1-p2') },
        ],
      });
      assertForbidden(r, 'transaction reaching an unrelated patient');
      assert.equal(await existsByCode('t-dr1-p1'), 0, 'nothing of the transaction was written');
      assert.equal(await existsByCode('t-dr1-p2'), 0);
      const ok = await dr1.post('/', {
        resourceType: 'Bundle', type: 'transaction', entry: [
          { request: { method: 'POST', url: 'Observation' }, resource: newObs('p1', 't2-dr1-p1') },
          { request: { method: 'PUT', url: 'Observation/o1a' }, resource: { ...obsRes('o1a', 'p1'), status: 'amended' } },
        ],
      });
      assertStatus(ok, 200, 'transaction within the care relationship');
      assert.equal(ok.json.type, 'transaction-response');
      assert.equal(await existsByCode('t2-dr1-p1'), 1);
    });

    // A bundle update of a resource the principal cannot see must fail like
    // the direct update does, and leave the stored resource (and its label) alone.
    const HIDDEN_WRITES = [
      // [who, hidden resource made for the test, why it is hidden]
      ['care-team-member', () => obsRes('hid-ctm', 'p1', ['PSY']), 'denied label PSY'],
      ['front-desk', () => ({ ...patientRes('p2', ['R']), id: 'hid-fd', name: [{ family: 'Hidden' }] }), 'denied label R'],
      ['clinician Dr1', () => ({ ...obsRes('hid-dr1', 'p1', ['PSY']) }), 'P1\'s consent denies Dr1 PSY data'],
    ];
    for (const [who, make, why] of HIDDEN_WRITES) {
      for (const type of ['transaction', 'batch']) {
        it(`${who}: a ${type} cannot overwrite a resource hidden by ${why}`, async () => {
          const res0 = make();
          const id = `${res0.id}-${type}`;
          const res = { ...res0, id };
          const path = `/${res.resourceType}/${id}`;
          assertStatus(await sys.put(path, res), 201);
          const c0 = P(who);
          const changed = res.resourceType === 'Observation' ? { ...res, meta: undefined, status: 'entered-in-error' } : { ...res, meta: undefined, gender: 'unknown' };
          // A direct update is answered like one of an absent resource.
          assertStatus(await c0.put(path, changed), [403, 404], `direct update of a hidden ${path}`);
          const r = await c0.post('/', { resourceType: 'Bundle', type, entry: [{ request: { method: 'PUT', url: path.slice(1) }, resource: changed }] });
          if (type === 'transaction') {
            assertStatus(r, [403, 404], `transaction update of a hidden ${path}`);
          } else {
            const b = assertBundle(r, 'batch');
            assert.match(b.entry[0].response.status, /^40[34]/, `batch entry: ${JSON.stringify(b.entry[0])}`);
          }
          const stored = (await sys.get(path)).json;
          assert.equal(stored.meta.versionId, '1', `the hidden resource was overwritten: ${JSON.stringify(stored)}`);
          assert.deepEqual(stored.meta.security, res.meta.security, 'the label must stay');
        });
      }
    }
  });

  // --- 3. $explain-access ------------------------------------------------------
  describe('POST /$explain-access', () => {
    const params = (o) => ({
      resourceType: 'Parameters',
      parameter: Object.entries(o).flatMap(([name, v]) => (Array.isArray(v) ? v : [v]).map((x) => (
        ['interaction', 'type', 'purpose_of_use'].includes(name) ? { name, valueCode: x } : { name, valueString: x }))),
    });
    const get = (pr, name) => (pr.parameter || []).filter((x) => x.name === name)
      .map((x) => x.valueString ?? x.valueCode);
    const explain = (who, body) => who.post('/$explain-access', body);
    const adminC = () => c.admin;
    let officer;
    const officerC = () => {
      officer ??= client(srv, forgeJwt(srv, {
        sub: 'po1', scope: 'user/*.rs', clientId: 'ehr', claims: { roles: ['privacy-officer'], fhirUser: 'Practitioner/po1' },
      }));
      return officer;
    };

    it('as admin (no clinical data): the decision, but no patient ids and no facts of a resource it cannot read', async () => {
      const r = await explain(adminC(), params({
        role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr1',
        interaction: 'read', type: 'Observation', id: 'o1psy', purpose_of_use: 'TREAT',
      }));
      assertStatus(r, 200, 'explain');
      assert.deepEqual(get(r.json, 'decision'), ['allow']);
      assert.deepEqual(get(r.json, 'confined'), ['1 patient(s)']);
      assert.deepEqual(get(r.json, 'patient'), [], 'patient ids are for callers who may read patients');
      assert.deepEqual(get(r.json, 'resource_decision'), ['not-shown']);
      assert.deepEqual(get(r.json, 'resource_reason'), []);
      assert.ok(!r.text.includes('PSY') && !r.text.includes('consent_denied'), r.text);
      const absent = await explain(adminC(), params({
        role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr1', interaction: 'read', type: 'Observation', id: 'no-such-obs',
      }));
      assert.deepEqual(get(absent.json, 'resource_decision'), ['not-shown'], 'existence is not told either');
    });

    it('as a privacy officer: the decision, policy, role, rule, obligations and the stored resource\'s outcome', async () => {
      const r = await explain(officerC(), params({
        role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr1',
        interaction: 'read', type: 'Observation', id: 'o1a', purpose_of_use: 'TREAT',
      }));
      assertStatus(r, 200, 'explain');
      assert.equal(r.json.resourceType, 'Parameters');
      assert.deepEqual(get(r.json, 'decision'), ['allow']);
      assert.deepEqual(get(r.json, 'policy'), ['fhirward-default@1']);
      assert.deepEqual(get(r.json, 'role'), ['clinician']);
      assert.deepEqual(get(r.json, 'rule'), ['role:clinician permission:*.read scope:user/*.cruds']);
      assert.deepEqual(get(r.json, 'patient'), ['p1'], 'the care relationship read from the data');
      assert.equal(get(r.json, 'consent').length, 1);
      assert.deepEqual(get(r.json, 'resource_decision'), ['allow']);
    });

    it('explains hidden resources: consent and missing relationship', async () => {
      const psy = await explain(officerC(), params({
        role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr1', interaction: 'read', type: 'Observation', id: 'o1psy',
      }));
      assertStatus(psy, 200);
      assert.deepEqual(get(psy.json, 'decision'), ['allow']);
      assert.deepEqual(get(psy.json, 'resource_decision'), ['deny']);
      assert.deepEqual(get(psy.json, 'resource_reason'), ['consent_denied']);
      const dr3 = await explain(officerC(), params({
        role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr3', interaction: 'read', type: 'Observation', id: 'o3a',
      }));
      assertStatus(dr3, 200);
      assert.deepEqual(get(dr3.json, 'patient'), [], 'Dr3 is related to nobody (cancelled encounter)');
      assert.deepEqual(get(dr3.json, 'resource_decision'), ['deny']);
      assert.deepEqual(get(dr3.json, 'resource_reason'), ['outside_patient_compartment']);
      const ctm = await explain(officerC(), params({
        role: 'care-team-member', scope: 'user/*.rs', fhirUser: 'Practitioner/nurse1', interaction: 'read', type: 'Observation', id: 'o1psy',
      }));
      assert.deepEqual(get(ctm.json, 'hidden_label').sort(), [...CTM_DENIED].sort());
      assert.deepEqual(get(ctm.json, 'resource_reason'), ['security_label:PSY']);
    });

    it('explains denials: permission and rule', async () => {
      const fd = await explain(adminC(), params({ role: 'front-desk', scope: 'user/*.cruds', interaction: 'read', type: 'Observation' }));
      assertStatus(fd, 200);
      assert.deepEqual(get(fd.json, 'decision'), ['deny']);
      assert.match(get(fd.json, 'reason')[0], /front-desk lacks Observation\.read/);
      const res = await explain(adminC(), params({ role: 'researcher', scope: 'user/*.rs', interaction: 'search', type: 'Observation', purpose_of_use: 'TREAT' }));
      assert.deepEqual(get(res.json, 'decision'), ['deny']);
      assert.deepEqual(get(res.json, 'rule'), ['rule:research-needs-purpose']);
      const resOk = await explain(adminC(), params({ role: 'researcher', scope: 'user/*.rs', interaction: 'search', type: 'Patient', purpose_of_use: 'HRESCH' }));
      assert.deepEqual(get(resOk.json, 'decision'), ['allow']);
      assert.deepEqual(get(resOk.json, 'masked').sort(), [...RESEARCH_MASKED, 'text'].map((m) => `Patient.${m}`).sort());
      // The admin network rule with an outside address.
      const far = await explain(adminC(), params({ role: 'admin', scope: 'user/*.cruds', interaction: 'read', type: 'Practitioner', address: '203.0.113.9' }));
      assert.deepEqual(get(far.json, 'decision'), ['deny']);
      assert.deepEqual(get(far.json, 'rule'), ['rule:admin-from-admin-network']);
      // No break-glass episode is opened by an explanation.
      const bg = await explain(adminC(), params({
        role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr3', interaction: 'read', type: 'Observation', id: 'o3a',
        purpose_of_use: 'ETREAT', break_glass_reason: 'Explaining an emergency access for the review',
      }));
      assertStatus(bg, 200);
      assert.equal(runCli(['breakglass', 'list', '--data-dir', srv.dataDir]).stdout.trim(), 'no episode awaits review');
    });

    it('as auditor: allowed; as clinician or front-desk: 403; the explanation is audited', async () => {
      const body = params({ role: 'clinician', scope: 'user/*.cruds', fhirUser: 'Practitioner/dr1', interaction: 'read', type: 'Observation' });
      const a = await explain(c.auditor, body);
      assertStatus(a, 200, 'auditor explains');
      const d = await explain(c['clinician Dr1 (care team of P1, consent denies PSY)'], body);
      assertForbidden(d, 'clinician explains');
      assert.ok(!d.text.includes('"decision"'));
      assertForbidden(await explain(c['front-desk'], body), 'front-desk explains');
      const recs = await auditOf(srv, a);
      assert.equal(recs.length, 1);
      assert.equal(recs[0].subject, 'aud1');
      assert.equal(recs[0].outcome, 'success');
      const [dr] = await auditOf(srv, d);
      assert.equal(dr.outcome, 'denied');
    });
  });

  // --- 6. field rules -------------------------------------------------------------
  describe('field rules: read-only and masked elements on writes', () => {
    let reg;
    before(() => {
      reg = client(srv, forgeJwt(srv, { sub: 'reg1', scope: 'user/*.cruds', clientId: 'ehr', claims: { roles: ['registrar'], fhirUser: 'Practitioner/reg1' } }));
    });
    const stored = async (id) => (await sys.get(`/Patient/${id}`)).json;

    it('the registrar sees identifiers masked', async () => {
      const r = await reg.get('/Patient/p3');
      assertStatus(r, 200);
      assertMaskedPatient({ ...r.json, name: undefined, telecom: undefined, birthDate: undefined, _birthDate: undefined }, ['identifier'], 'registrar read');
      assert.equal(r.json.birthDate, BIRTH.p3, 'read-only is not masked');
      assert.ok(!r.text.includes(MRN.p3));
    });

    it('an update of the masked view keeps the stored identifier and applies the rest', async () => {
      const view = (await reg.get('/Patient/p3')).json;
      const upd = { ...view, telecom: [{ system: 'phone', value: '555-999-0003' }] };
      const r = await reg.put('/Patient/p3', upd);
      assertStatus(r, 200, 'registrar update');
      assert.ok(!r.text.includes(MRN.p3), 'the write response is masked too');
      const s = await stored('p3');
      assert.deepEqual(s.identifier, [{ system: 'urn:it:mrn', value: MRN.p3 }], 'placeholder must not overwrite the identifier');
      assert.equal(s.telecom[0].value, '555-999-0003');
      assert.ok(!(s.meta.security || []).some((l) => l.code === 'REDACTED'), 'REDACTED label not stored');
      // Omitting the masked element does not delete it either.
      const { identifier, ...noId } = (await reg.get('/Patient/p3')).json;
      assertStatus(await reg.put('/Patient/p3', noId), 200);
      assert.deepEqual((await stored('p3')).identifier, [{ system: 'urn:it:mrn', value: MRN.p3 }]);
    });

    it('a change to a read-only element is refused with 403 and nothing is stored', async () => {
      const before = await stored('p3');
      const view = (await reg.get('/Patient/p3')).json;
      const r = await reg.put('/Patient/p3', { ...view, birthDate: '2000-01-01' });
      assertForbidden(r, 'changing a read-only element');
      const { birthDate, ...noBirth } = view;
      assertForbidden(await reg.put('/Patient/p3', noBirth), 'removing a read-only element');
      const p = await reg('PATCH', '/Patient/p3', {
        body: [{ op: 'replace', path: '/birthDate', value: '2000-01-01' }], contentType: 'application/json-patch+json',
      });
      assertForbidden(p, 'patching a read-only element');
      const after = await stored('p3');
      assert.equal(after.birthDate, BIRTH.p3);
      assert.equal(after.meta.versionId, before.meta.versionId);
    });

    it('a JSON Patch is applied to the masked view: test cannot reveal the identifier', async () => {
      const before = await stored('p3');
      const probe = await reg('PATCH', '/Patient/p3', {
        body: [{ op: 'test', path: '/identifier/0/value', value: MRN.p3 }, { op: 'add', path: '/gender', value: 'other' }],
        contentType: 'application/json-patch+json',
      });
      assert.ok(probe.status >= 400, `a test op against the real masked value must fail: ${describeRes(probe)}`);
      assert.equal((await stored('p3')).meta.versionId, before.meta.versionId);
      const ok = await reg('PATCH', '/Patient/p3', {
        body: [{ op: 'add', path: '/gender', value: 'other' }], contentType: 'application/json-patch+json',
      });
      assertStatus(ok, 200, 'patch of an unmasked element');
      const s = await stored('p3');
      assert.equal(s.gender, 'other');
      assert.deepEqual(s.identifier, [{ system: 'urn:it:mrn', value: MRN.p3 }]);
    });

    it('conditional and bundle updates of a type with masked elements are refused', async () => {
      const before = await stored('p3');
      const view = (await reg.get('/Patient/p3')).json;
      const cu = await reg.put('/Patient?_id=p3', view);
      assertStatus(cu, [400, 403, 412, 422], 'conditional update by a masking role');
      const tx = await reg.post('/', { resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'PUT', url: 'Patient/p3' }, resource: view }] });
      assertStatus(tx, [400, 403, 422], 'bundle update by a masking role');
      const after = await stored('p3');
      assert.equal(after.meta.versionId, before.meta.versionId);
      assert.deepEqual(after.identifier, [{ system: 'urn:it:mrn', value: MRN.p3 }]);
    });

    // Searching by a masked element would re-identify the de-identified
    // records: the researcher must not learn which record has a given name,
    // identifier or birth date (403, or no match).
    for (const q of [
      `Patient?identifier=urn:it:mrn|${MRN.p1}`,
      `Patient?name=${NAMES.p1}`,
      `Patient?birthdate=${BIRTH.p1}`,
      `Observation?subject:Patient.identifier=urn:it:mrn|${MRN.p1}`,
    ]) {
      it(`the researcher cannot search by a masked element: ${q}`, async () => {
        const r = await c['researcher with HRESCH'].get(`/${q}&_total=accurate`);
        if (r.status === 403) { assertForbidden(r, q); return; }
        const b = assertBundle(r, q);
        assert.deepEqual(matchIds(b), [], `${q} re-identifies a record through a masked element`);
        assert.equal(b.total, 0);
      });
    }

    it('the researcher\'s masked elements carry data-absent-reason "masked" everywhere', async () => {
      const res = c['researcher with HRESCH'];
      const r = await res.get('/Patient/p1');
      assertStatus(r, 200);
      assertMaskedPatient(r.json, RESEARCH_MASKED, 'researcher read');
      const s = await res.get('/Observation?_include=Observation:subject');
      assertStatus(s, 200);
      const inc = s.json.entry.filter((e) => e.resource.resourceType === 'Patient');
      assert.ok(inc.length >= 1);
      for (const e of inc) assertMaskedPatient(e.resource, RESEARCH_MASKED, 'researcher include');
    });
  });
});

// ===========================================================================
// 2. Break-glass

describe('policy: break-glass end to end', { timeout: 180000 }, () => {
  let srv;
  const REASON = 'Unconscious patient in the ED, care team unreachable (IT-4711)';
  let episode;
  let aud2;
  const AUD_PW = 'auditor-password-0001';
  const FD_PW = 'frontdesk-password-0001';
  const DR3_PW = 'dr3-password-000000001';
  const dr3tok = (o = {}) => forgeJwt(srv, {
    sub: 'dr3', scope: 'user/*.cruds', clientId: o.clientId ?? 'ehr',
    claims: { roles: ['clinician'], fhirUser: 'Practitioner/dr3', purpose_of_use: o.pou ?? ['TREAT'], ...(o.claims || {}) },
  });
  const bgHeader = (reason = REASON) => ({ headers: { 'X-Break-Glass-Reason': reason } });

  before(async () => {
    // An alert rule on break-glass, shipped to an alerts-only file sink.
    srv = await startWithPolicy('breakglass', {
      extra: (root) => `[[audit.alert]]\nname = "btg"\nkind = "break_glass"\n`
        + `[[audit.sink]]\nname = "alerts"\ntype = "file"\nrecords = "alerts"\npath = "${root}/alerts.jsonl"\n`,
    });
    srv.alertsFile = `${srv.root}/alerts.jsonl`;
    await seed(srv);
    addUser(srv, { username: 'aud1', fhirUser: 'Practitioner/aud', roles: 'auditor', password: AUD_PW });
    addUser(srv, { username: 'fd1', fhirUser: 'Practitioner/fd1', roles: 'front-desk', password: FD_PW });
    // The person who breaks the glass, also an auditor: still may not review their own episode.
    addUser(srv, { username: 'dr3', fhirUser: 'Practitioner/dr3', roles: 'clinician auditor', password: DR3_PW });
    // An auditor with a second factor: the review asks for it as the login page does.
    aud2 = addUser(srv, { username: 'aud2', fhirUser: 'Practitioner/aud2', roles: 'auditor', password: AUD_PW, totp: true });
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  it('without break-glass, Dr3 does not see P3\'s observation (answered like an absent one)', async () => {
    const r = await client(srv, dr3tok())('GET', '/Observation/o3a');
    assertOutcome(r, 404, 'not-found', 'not_found', 'Dr3 reads o3a');
  });

  const fdEtreat = () => client(srv, forgeJwt(srv, { sub: 'fd1', scope: 'user/*.cruds', clientId: 'ehr', claims: { roles: ['front-desk'], fhirUser: 'Practitioner/fd1', purpose_of_use: ['ETREAT'] } }));
  const nurseEtreat = () => client(srv, forgeJwt(srv, { sub: 'nurse1', scope: 'user/*.rs', clientId: 'ehr', claims: { roles: ['care-team-member'], fhirUser: 'Practitioner/nurse1', purpose_of_use: ['ETREAT'] } }));
  // [what, client, path, header reason, expected reason]
  const REFUSALS = [
    ['without an emergency purpose of use (TREAT)', () => client(srv, dr3tok()), '/Observation/o3a', REASON, 'break_glass_needs_purpose_of_use'],
    ['with a too short justification', () => client(srv, dr3tok({ pou: ['ETREAT'] })), '/Observation/o3a', 'emergency', 'break_glass_justification_too_short'],
    ['by front-desk (a role without break_glass)', fdEtreat, '/Patient/p1', REASON, 'break_glass_not_permitted'],
    ['by care-team-member (a role without break_glass)', nurseEtreat, '/Observation/o3a', REASON, 'break_glass_not_permitted'],
  ];
  for (const [what, mk, p, reason, code] of REFUSALS) {
    it(`break-glass ${what} is refused with 403 ${code}`, async () => {
      const r = await mk()('GET', p, bgHeader(reason));
      assertForbidden(r, `break-glass ${what}`);
      assert.ok(r.text.includes(code), `the OperationOutcome names the reason ${code}: ${r.text}`);
      const [rec] = await auditOf(srv, r);
      assert.equal(rec.outcome, 'denied');
      assert.equal(rec.break_glass, '');
      assert.match(rec.decision, new RegExp(`rule=break-glass reason=${code}`));
    });
  }

  it('a justification header longer than 500 characters or with control characters is a 400', async () => {
    for (const reason of ['x'.repeat(501), 'line one\tline two']) {
      const r = await client(srv, dr3tok({ pou: ['ETREAT'] }))('GET', '/Observation/o3a', bgHeader(reason));
      assertStatus(r, 400, `header ${JSON.stringify(reason.slice(0, 20))}`);
      assert.equal(r.json?.resourceType, 'OperationOutcome');
      assert.match(r.text, /X-Break-Glass-Reason must be printable text of at most 500 characters/);
    }
  });

  it('refused break-glass attempts open no episode', async () => {
    assert.equal(logEvents(srv, 'break_glass_opened').length, 0, 'no episode opened by a refusal');
    assert.equal(runCli(['breakglass', 'list', '--data-dir', srv.dataDir]).stdout.trim(), 'no episode awaits review');
    // Still no access.
    assertStatus(await client(srv, dr3tok({ pou: ['ETREAT'] }))('GET', '/Observation/o3a'), 404);
  });

  it('ETREAT and a justification open an episode: 200, audited, alert logged without the justification', async () => {
    const r = await client(srv, dr3tok({ pou: ['ETREAT'] }))('GET', '/Observation/o3a', bgHeader());
    assertStatus(r, 200, 'break-glass read');
    assert.equal(r.json.id, 'o3a');
    const [rec] = await auditOf(srv, r);
    assert.match(rec.break_glass, /^bg-/, `audit break_glass: ${JSON.stringify(rec)}`);
    assert.equal(rec.break_glass_reason, REASON);
    assert.equal(rec.outcome, 'success');
    assert.match(rec.decision, /allow role=clinician/);
    episode = rec.break_glass;
    const ev = await waitFor('break_glass_opened', () => logEvents(srv, 'break_glass_opened')[0]);
    assert.equal(ev.episode, episode);
    assert.equal(ev.subject, 'dr3');
    assert.equal(ev.client_id, 'ehr');
    assert.equal(ev.level, 'warn');
    // The break_glass rule: an alert.btg record in the trail, about this
    // episode, shipped to the alerts-only sink, without the justification.
    const alertLine = await waitFor('alert.btg at the sink', () => fs.existsSync(srv.alertsFile)
      && fs.readFileSync(srv.alertsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
        .find((l) => l.record.action === 'alert.btg'));
    const alert = alertLine.record;
    assert.equal(alert.break_glass, episode);
    assert.equal(alert.subject, 'dr3');
    assert.equal(alert.client_id, 'ehr');
    assert.equal(alert.resource_type, 'AuditEvent');
    // It points at the record of the opening request.
    const trigger = JSON.parse(sqlite(`${srv.dataDir}/audit/audit.db`,
      `SELECT record FROM audit_records WHERE seq = ${Number(alert.resource_id)};`));
    assert.equal(trigger.request_id, r.headers['x-request-id']);
    assert.match(trigger.decision, / break_glass=opened$/);
    assert.match(alert.decision, new RegExp(`^rule=btg kind=break_glass by=episode key=${episode} value=1 `));
    assert.ok(!fs.readFileSync(srv.alertsFile, 'utf8').includes(REASON), 'justification not in the alert sink');
    // Only alerts go to that sink.
    assert.ok(fs.readFileSync(srv.alertsFile, 'utf8').split('\n').filter(Boolean)
      .every((l) => JSON.parse(l).record.action.startsWith('alert.')));
    const warn = await waitFor('security_alert', () => logEvents(srv, 'security_alert')[0]);
    assert.equal(warn.rule, 'btg');
    assert.equal(warn.audit_seq, alertLine.seq);
  });

  it('within the episode: no header needed, confinement lifted, every access marked', async () => {
    const t = client(srv, dr3tok({ pou: ['ETREAT'] }));
    const s = await t.get('/Observation?_total=accurate');
    const b = assertBundle(s, 'search in the episode');
    assert.deepEqual(matchIds(b), ['o1a', 'o1psy', 'o2a', 'o2r', 'o3a'], 'consent and relationship lifted, clinician has no denied labels');
    assert.equal(b.total, 5);
    // A token without the emergency purpose, same user and client: still in the episode.
    const plain = await client(srv, dr3tok())('GET', '/Patient/p3');
    assertStatus(plain, 200, 'same user and client without ETREAT');
    for (const res of [s, plain]) {
      const [rec] = await auditOf(srv, res);
      assert.equal(rec.break_glass, episode);
      assert.equal(rec.break_glass_reason, REASON);
    }
    // Another client of the same user is not in the episode.
    assertStatus(await client(srv, dr3tok({ clientId: 'other-app' }))('GET', '/Observation/o3a'), 404);
    // Scopes and permissions still apply: a clinician may not delete.
    assertForbidden(await t.del('/Observation/o3a'), 'delete in the episode');
    // No lasting relationship from an episode: the resources relationships are
    // made of (Encounter, CareTeam) cannot be written in it.
    const enc = await t.post('/Encounter', {
      resourceType: 'Encounter', status: 'planned', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: 'Patient/p3' }, participant: [{ individual: { reference: 'Practitioner/dr3' } }],
    });
    assertForbidden(enc, 'Encounter written in an episode');
    assert.match(enc.json.issue[0].diagnostics || '', /break_glass_cannot_write_relationship_sources/);
    assert.equal(logEvents(srv, 'break_glass_opened').length, 1, 'one alert per episode');
  });

  it('the server log never carries the justification', async () => {
    await sleep(1200); // info lines are flushed once a second
    const log = srv.stderrText();
    assert.ok(!log.includes(REASON), 'justification in the log');
    assert.ok(!log.includes('IT-4711'));
    for (const n of Object.values(NAMES)) assert.ok(!log.includes(n), `patient name ${n} in the log`);
  });

  it('breakglass list shows the pending episode with its accesses', () => {
    const r = runCli(['breakglass', 'list', '--data-dir', srv.dataDir]);
    assert.equal(r.code, 0, r.stderr);
    const line = r.stdout.split('\n').find((l) => l.startsWith(episode));
    assert.ok(line, `episode ${episode} not listed:\n${r.stdout}`);
    assert.match(line, /\topen\t/);
    assert.match(line, /\tsubject=dr3\t/);
    assert.match(line, /\tclient=ehr\t/);
    assert.match(line, /\trole=clinician\t/);
    assert.match(line, /purpose=[^\t]*ETREAT/);
    assert.match(line, /\treview=pending$/);
    const n = Number(/\taccesses=(\d+)/.exec(line)[1]);
    assert.ok(n >= 3, `accesses=${n}`);
    assert.ok(r.stdout.includes(`justification: ${REASON}`));
  });

  it('breakglass review refuses a wrong password, a non-auditor and the episode\'s own subject', () => {
    const review = (reviewer, pw, extra = []) => runCli(['breakglass', 'review', episode, '--data-dir', srv.dataDir,
      '--reviewer', reviewer, '--outcome', 'justified', '--note', 'Checked with the ED charge nurse', ...extra], { input: `${pw}\n` });
    for (const [who, pw, why] of [
      ['aud1', 'wrong-password-123', 'wrong password'],
      ['nobody', AUD_PW, 'unknown user'],
      ['fd1', FD_PW, 'not an auditor'],
      ['dr3', DR3_PW, 'the person who broke the glass'],
      ['aud2', AUD_PW, 'a TOTP-enrolled auditor without a code'],
      ['aud2', `${AUD_PW}\n${String((Number(totp(aud2.totpSecret)) + 1) % 1e6).padStart(6, '0')}`,
        'a TOTP-enrolled auditor with a wrong code'],
    ]) {
      const r = review(who, pw);
      assert.notEqual(r.code, 0, `${why}: review must be refused; stdout ${r.stdout}`);
      assert.ok(!/reviewed/.test(r.stdout), `${why}: ${r.stdout}`);
    }
    const bad = runCli(['breakglass', 'review', episode, '--data-dir', srv.dataDir, '--reviewer', 'aud1', '--outcome', 'fine', '--note', 'x'], { input: `${AUD_PW}\n` });
    assert.notEqual(bad.code, 0, 'invalid outcome');
    const list = runCli(['breakglass', 'list', '--data-dir', srv.dataDir]);
    assert.match(list.stdout, new RegExp(`${episode}.*review=pending`));
    // Each refusal is on the trail under the episode, with its reason; a name
    // that is no user's is kept only as a keyed digest (it may be a password).
    const refused = auditRecords(srv, { action: 'breakglass.review', break_glass: episode });
    assert.deepEqual(refused.map((r) => [r.outcome, r.error, r.status_code]), [
      ['denied', 'bad_credentials', 403], ['denied', 'bad_credentials', 403],
      ['denied', 'not_auditor', 403], ['denied', 'own_episode', 403],
      ['denied', 'bad_totp', 403], ['denied', 'bad_totp', 403]], JSON.stringify(refused));
    assert.deepEqual(refused.map((r) => r.subject).filter((s) => s !== refused[1].subject), ['aud1', 'fd1', 'dr3', 'aud2', 'aud2']);
    assert.ok(!refused[1].subject.includes('nobody'), refused[1].subject);
    assert.match(refused[0].user_agent, /^fhirward-cli uid=\d+\(/);
    const raw = sqlite(`${srv.dataDir}/audit/audit.db`, 'SELECT record FROM audit_records;');
    assert.ok(!raw.includes('wrong-password-123') && !raw.includes(AUD_PW), 'a password in the audit trail');
  });

  it('an auditor closes the episode; list no longer shows it as pending', () => {
    const r = runCli(['breakglass', 'review', episode, '--data-dir', srv.dataDir, '--reviewer', 'aud1',
      '--outcome', 'justified', '--note', 'Checked with the ED charge nurse'], { input: `${AUD_PW}\n` });
    assert.equal(r.code, 0, `${r.stderr}${r.stdout}`);
    assert.equal(r.stdout.trim(), `episode ${episode} reviewed: justified`);
    const pending = runCli(['breakglass', 'list', '--data-dir', srv.dataDir]);
    assert.equal(pending.code, 0);
    assert.ok(!pending.stdout.includes(episode), pending.stdout);
    assert.equal(pending.stdout.trim(), 'no episode awaits review');
    const all = runCli(['breakglass', 'list', '--all', '--data-dir', srv.dataDir]);
    const line = all.stdout.split('\n').find((l) => l.startsWith(episode));
    assert.ok(line, all.stdout);
    assert.match(line, /\treviewer=aud1\toutcome=justified/);
    assert.ok(all.stdout.includes('note: Checked with the ED charge nurse'));
    // A closed episode cannot be reviewed again.
    const again = runCli(['breakglass', 'review', episode, '--data-dir', srv.dataDir, '--reviewer', 'aud1',
      '--outcome', 'unjustified', '--note', 'second opinion'], { input: `${AUD_PW}\n` });
    assert.notEqual(again.code, 0, `second review: ${again.stdout}`);
    // The review and the refused second one are on the trail; the note is not.
    const [done, twice] = auditRecords(srv, { action: 'breakglass.review', subject: 'aud1' }).slice(-2);
    assert.equal(done.outcome, 'success');
    assert.equal(done.break_glass, episode);
    assert.equal(done.decision, 'outcome=justified');
    assert.equal(twice.outcome, 'failed');
    assert.equal(twice.error, 'not_reviewable');
    const raw = sqlite(`${srv.dataDir}/audit/audit.db`, 'SELECT record FROM audit_records;');
    assert.ok(!raw.includes('Checked with the ED charge nurse'), 'the review note in the audit trail');
  });

  it('justifications are stored sealed in db/policy.db', () => {
    const db = `${srv.dataDir}/db/policy.db`;
    assert.ok(fs.existsSync(db));
    const dump = sqlite(db, '.dump');
    assert.ok(!dump.includes(REASON) && !dump.includes('IT-4711'), 'justification in clear text in policy.db');
  });
});

// ===========================================================================
// 4. Shadow mode

describe('policy: shadow mode with a candidate policy', { timeout: 180000 }, () => {
  let srv;
  const candidate = testPolicy({
    version: '2-candidate',
    edit: (t) => withoutPermissions(t, 'front-desk', ['Patient.read', 'Patient.search']),
  });
  before(async () => {
    srv = await startWithPolicy('shadow', { candidate });
    await seed(srv);
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  const fd = () => client(srv, forgeJwt(srv, { sub: 'fd1', scope: 'user/*.cruds', clientId: 'ehr', claims: { roles: ['front-desk'] } }));

  it('both policies are loaded', () => {
    const ev = logEvents(srv, 'policy_loaded');
    assert.ok(ev.some((e) => e.policy === 'fhirward-default@1' && e.candidate === 'fhirward-default@2-candidate'), JSON.stringify(ev));
  });

  it('the enforced policy decides; a disagreement is audited (shadow) and logged', async () => {
    const r = await fd().get('/Patient/p1');
    assertStatus(r, 200, 'enforced policy allows front-desk Patient.read');
    const [rec] = await auditOf(srv, r);
    assert.equal(rec.policy_id, 'fhirward-default@1');
    assert.match(rec.decision, /^fhirward-default@1 allow role=front-desk/);
    assert.match(rec.shadow, /fhirward-default@2-candidate deny/, `shadow: ${JSON.stringify(rec)}`);
    const ev = await waitFor('policy_shadow_disagreement', () => logEvents(srv, 'policy_shadow_disagreement')
      .find((e) => e.request_id === r.headers['x-request-id']));
    assert.equal(ev.resource_type, 'Patient');
    assert.match(ev.enforced, /allow/);
    assert.match(ev.candidate, /deny/);
    const s = await fd().get('/Patient?_total=accurate');
    assertStatus(s, 200);
    assert.deepEqual(matchIds(s.json), ['p1', 'p3']);
  });

  it('agreement leaves no shadow field and no log event', async () => {
    const r = await fd().get('/Practitioner/dr1');
    assertStatus(r, 200);
    const [rec] = await auditOf(srv, r);
    assert.equal(rec.shadow, '');
    const d = await fd().get('/Observation/o1a');
    assertForbidden(d, 'both deny');
    const [drec] = await auditOf(srv, d);
    assert.equal(drec.shadow, '');
    await sleep(300);
    const ids = [r.headers['x-request-id'], d.headers['x-request-id']];
    assert.deepEqual(logEvents(srv, 'policy_shadow_disagreement').filter((e) => ids.includes(e.request_id)), []);
  });

  it('the candidate never opens break-glass episodes; only the enforced one does (one episode)', async () => {
    const t = client(srv, forgeJwt(srv, { sub: 'dr3', scope: 'user/*.cruds', clientId: 'ehr', claims: { roles: ['clinician'], fhirUser: 'Practitioner/dr3', purpose_of_use: ['ETREAT'] } }));
    const r = await t.get('/Observation/o3a', { headers: { 'X-Break-Glass-Reason': 'Unconscious patient in the ED, care team unreachable' } });
    assertStatus(r, 200);
    const out = runCli(['breakglass', 'list', '--data-dir', srv.dataDir]).stdout;
    assert.equal(out.split('\n').filter((l) => l.startsWith('bg-')).length, 1, out);
  });
});

// ===========================================================================
// 5. Policy reload

describe('policy: reload while running', { timeout: 180000 }, () => {
  let srv;
  before(async () => {
    srv = await startWithPolicy('reload', { reloadSeconds: 1 });
    await seed(srv);
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  const fd = () => client(srv, forgeJwt(srv, { sub: 'fd1', scope: 'user/*.cruds', clientId: 'ehr', claims: { roles: ['front-desk'] } }));
  const writeAtomically = (text) => {
    const tmp = `${srv.policyFile}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, srv.policyFile);
  };

  it('a changed file is loaded within a few seconds: decisions and audit name the new version', async () => {
    const r1 = await fd().get('/Patient/p1');
    assertStatus(r1, 200);
    assert.equal((await auditOf(srv, r1))[0].policy_id, 'fhirward-default@1');
    const v2 = testPolicy({ version: '2', edit: (t) => withoutPermissions(t, 'front-desk', ['Patient.read', 'Patient.search']) });
    const check = runCli(['policy', 'check', (fs.writeFileSync(`${srv.root}/v2.toml`, v2), `${srv.root}/v2.toml`)]);
    assert.equal(check.code, 0, check.stderr + check.stdout);
    assert.match(check.stdout, /ok \(fhirward-default@2, 11 roles, 2 rules, 2 relationship sources\)/);
    writeAtomically(v2);
    const r2 = await waitFor('front-desk Patient.read to be refused under v2', async () => {
      const r = await fd().get('/Patient/p1');
      return r.status === 403 ? r : undefined;
    });
    assertForbidden(r2, 'under v2');
    assert.equal((await auditOf(srv, r2))[0].policy_id, 'fhirward-default@2');
    await waitFor('policy_loaded fhirward-default@2', () => logEvents(srv, 'policy_loaded').some((e) => e.policy === 'fhirward-default@2'));
    // The change is on the trail: which policy, from which file, with the file's digest.
    const loads = auditRecords(srv, { action: 'policy.load' });
    assert.deepEqual(loads.map((l) => [l.resource_id, l.outcome]),
      [['fhirward-default@1', 'success'], ['fhirward-default@2', 'success']], JSON.stringify(loads));
    const digest = crypto.createHash('sha256').update(v2).digest('hex');
    assert.ok(loads[1].decision.includes(`${srv.policyFile} sha256=${digest}`), loads[1].decision);
    assert.equal(loads[1].subject, 'fhirward-server');
    assert.equal(loads[1].policy_id, 'fhirward-default@2');
  });

  it('an invalid rewrite is refused and the previous version stays enforced', async () => {
    const bad = testPolicy({ version: '3', edit: (t) => t.replace('[roles.front-desk]\n', '[roles.front-desk]\nscope = "oops"\n') });
    fs.writeFileSync(`${srv.root}/bad.toml`, bad);
    const check = runCli(['policy', 'check', `${srv.root}/bad.toml`]);
    assert.notEqual(check.code, 0);
    assert.match(check.stderr + check.stdout, /bad\.toml:\d+:\d+: unknown key 'scope' in \[roles\.front-desk\]/);
    writeAtomically(bad);
    // The files are checked (at most every reload_seconds) as requests come in.
    const ev = await waitFor('policy_reload_refused', async () => {
      await fd().get('/Practitioner/dr1');
      return logEvents(srv, 'policy_reload_refused')[0];
    });
    assert.match(ev.reason, /scope/);
    const r = await fd().get('/Patient/p1');
    assertForbidden(r, 'still v2');
    assert.equal((await auditOf(srv, r))[0].policy_id, 'fhirward-default@2');
    const ok = await fd().get('/Practitioner/dr1');
    assertStatus(ok, 200);
    assert.equal((await auditOf(srv, ok))[0].policy_id, 'fhirward-default@2');
    // Truncated garbage as well.
    writeAtomically('[policy]\nid = "fhirward-default"\nversion = ');
    await waitFor('second policy_reload_refused', async () => {
      await fd().get('/Practitioner/dr1');
      return logEvents(srv, 'policy_reload_refused').length >= 2;
    });
    assertForbidden(await fd().get('/Patient/p1'), 'still v2 after garbage');
    // Both refusals are on the trail, naming the version still in force and why.
    const refused = auditRecords(srv, { action: 'policy.load', outcome: 'failed' });
    assert.equal(refused.length, 2, JSON.stringify(refused));
    for (const r of refused) {
      assert.equal(r.resource_id, 'fhirward-default@2');
      assert.equal(r.error, 'policy_refused');
      assert.match(r.decision, /^enforced=fhirward-default@2 candidate=- files: .* refused: policy .* is invalid/);
    }
    assert.match(refused[0].decision, /scope/);
  });

  it('fixing the file afterwards is picked up again', async () => {
    writeAtomically(testPolicy({ version: '4' }));
    const r = await waitFor('v4', async () => {
      const x = await fd().get('/Patient/p1');
      return x.status === 200 ? x : undefined;
    });
    assert.equal((await auditOf(srv, r))[0].policy_id, 'fhirward-default@4');
    const last = auditRecords(srv, { action: 'policy.load' }).pop();
    assert.equal(last.resource_id, 'fhirward-default@4');
    assert.equal(last.outcome, 'success');
  });
});

// ===========================================================================
// Regressions from the adversarial review

describe('policy: review regressions', { timeout: 180000 }, () => {
  let srv;
  let sys;
  const c = {};
  const SECRET = 'Zanzibar-Secretname';

  before(async () => {
    srv = await startWithPolicy('regressions');
    sys = await seed(srv);
    c.researcher = client(srv, tokenFor(srv, PRINCIPALS['researcher with HRESCH']));
    c.dr1 = client(srv, tokenFor(srv, PRINCIPALS['clinician Dr1 (care team of P1, consent denies PSY)']));
    c.nurse = client(srv, tokenFor(srv, PRINCIPALS['care-team-member nurse1 (care team of P1)']));
  });
  after(() => stopAndClean(srv));
  afterEach(diagnose(() => [srv]));

  it('the narrative is masked with the masked elements it may repeat', async () => {
    const put = await sys.put('/Patient/pn', {
      resourceType: 'Patient', id: 'pn',
      text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${SECRET}, born 1960-05-05</div>` },
      name: [{ family: SECRET }], birthDate: '1960-05-05',
    });
    assert.ok([200, 201].includes(put.status), describeRes(put));
    const r = await c.researcher.get('/Patient/pn');
    assertStatus(r, 200);
    assert.ok(!r.text.includes(SECRET), `masked name leaked through the narrative: ${r.text}`);
    assert.ok(!r.text.includes('1960-05-05'));
    const s = await c.researcher.get('/Patient?_id=pn&_summary=text');
    assertStatus(s, 200);
    assert.ok(!s.text.includes(SECRET), `_summary=text: ${s.text}`);
    await sys.del('/Patient/pn');
  });

  it('a label added later protects the earlier versions (vread, histories)', async () => {
    const v1 = await sys.put('/Observation/later', {
      resourceType: 'Observation', id: 'later', status: 'final', code: { text: 'later' },
      subject: { reference: 'Patient/p1' },
    });
    assert.ok([200, 201].includes(v1.status), describeRes(v1));
    const v2 = await sys.put('/Observation/later', {
      resourceType: 'Observation', id: 'later', status: 'final', code: { text: 'later' },
      meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] },
      subject: { reference: 'Patient/p1' },
    });
    assertStatus(v2, 200);
    const nurse = c.nurse;
    assertStatus(await nurse.get('/Observation/later'), 404);
    assertStatus(await nurse.get('/Observation/later/_history/1'), 404, 'vread of the unlabelled v1');
    for (const path of ['/Observation/_history?_count=100', '/_history?_count=100']) {
      const h = await nurse.get(path);
      assertStatus(h, 200, path);
      const ids = (h.json.entry || []).map((e) => e.fullUrl || '');
      assert.ok(!ids.some((u) => u.endsWith('/Observation/later')), `${path} lists an earlier version: ${ids}`);
    }
  });

  it('a deleted labelled resource answers like an absent one to whom the label hides it', async () => {
    const o = await sys.put('/Observation/psydel', {
      resourceType: 'Observation', id: 'psydel', status: 'final', code: { text: 'psydel' },
      meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] },
      subject: { reference: 'Patient/p1' },
    });
    assert.ok([200, 201].includes(o.status), describeRes(o));
    assertStatus(await sys.del('/Observation/psydel'), 204);
    const nurse = c.nurse;
    const gone = await nurse.get('/Observation/psydel');
    const absent = await nurse.get('/Observation/never-was');
    assertStatus(gone, 404, 'deleted PSY observation');
    assertStatus(absent, 404);
    assert.equal(gone.json.issue[0].details.text, absent.json.issue[0].details.text);
    assertStatus(await sys.get('/Observation/psydel'), 410, 'whoever may see it learns it was deleted');
  });

  it('consents narrow unconfined principals too: no counts, no _has answers about what they hide', async () => {
    const consent = await sys.put('/Consent/c3-no-research', {
      resourceType: 'Consent', id: 'c3-no-research', status: 'active',
      scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
      patient: { reference: 'Patient/p3' },
      policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
      provision: { type: 'permit', provision: [{ type: 'deny', actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'PRCP' }] }, reference: { reference: 'Practitioner/res1' } }], class: [{ system: 'http://hl7.org/fhir/resource-types', code: 'Observation' }] }] },
    });
    assert.ok([200, 201].includes(consent.status), describeRes(consent));
    const res = c.researcher;
    assertStatus(await res.get('/Observation/o3a'), 404, 'the consent hides P3\'s observation');
    const byCode = await res.get(`/Observation?code=${CODE_SYSTEM}|o3a&_total=accurate`);
    assertStatus(byCode, 200);
    assert.equal(byCode.json.total, 0, 'counted although hidden');
    const all = await res.get('/Observation?_total=accurate&_count=100');
    assertStatus(all, 200);
    const ids = (all.json.entry || []).filter((e) => e.search?.mode === 'match').map((e) => e.resource.id);
    assert.equal(all.json.total, ids.length, `total ${all.json.total} vs ${ids}`);
    assert.ok(!ids.includes('o3a'));
    const has = await res.get(`/Patient?_has:Observation:subject:code=${CODE_SYSTEM}|o3a&_total=accurate`);
    assertStatus(has, 200);
    assert.equal(has.json.total, 0, '_has reveals the hidden observation');
    // Patients are not hidden by a consent on observations.
    assertStatus(await res.get('/Patient/p3'), 200);
    assertStatus(await sys.del('/Consent/c3-no-research'), 204);
  });

  it('a Patient linking to a related patient is still another person\'s record', async () => {
    const cur = await sys.get('/Patient/p3');
    assertStatus(cur, 200);
    const linked = { ...cur.json, link: [{ other: { reference: 'Patient/p1' }, type: 'seealso' }] };
    delete linked.meta;
    assertStatus(await sys.put('/Patient/p3', linked), 200);
    const dr1 = c.dr1;
    assertStatus(await dr1.get('/Patient/p3'), 404, 'Dr1 (related to P1 only) reads P3 through the link');
    const list = await dr1.get('/Patient?_total=accurate');
    assertStatus(list, 200);
    const ids = (list.json.entry || []).map((e) => e.resource.id);
    assert.ok(!ids.includes('p3'), `P3 listed for Dr1: ${ids}`);
    assertStatus(await dr1.get('/Patient/p1'), 200);
  });
});
