// FHIR search: parameter types with their prefixes and modifiers, chains and
// _has, _include/_revinclude, _sort, _summary/_elements, paging with sealed
// cursors, the blind index of values that identify people, confinement of
// patient-scoped tokens to their compartment, and the [search] limits.
//
// A small deterministic population is created through the API (system token);
// every expected answer below is worked out by hand from that data.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, stopAndClean, diagnose, client, mintToken, sleep, nextLink, linkPath,
  assertOutcome, assertStatus, assertFhirJson, describeRes, assertAllResponses, sqlite, dbBytes,
} from './lib.mjs';

// ---------------------------------------------------------------------------
// Code systems and the population

const LOINC = 'http://loinc.org';
const UCUM = 'http://unitsofmeasure.org';
const SNOMED = 'http://snomed.info/sct';
const LOCAL = 'http://example.org/local-codes';
const MRN = 'http://hospital.example/mrn';
const SSN = 'http://hl7.org/fhir/sid/us-ssn';
const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
const OBS_CAT = 'http://terminology.hl7.org/CodeSystem/observation-category';
const CONFIDENTIALITY = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
const TAGS = 'http://example.org/fhir/tags';
const PROFILE = 'http://example.org/fhir/StructureDefinition/fw-test-observation';

const CODES = {
  glu: { code: '2339-0', display: 'Glucose [Mass/volume] in Blood', cat: 'laboratory', unit: 'mg/dL' },
  a1c: { code: '4548-4', display: 'Hemoglobin A1c/Hemoglobin.total in Blood', cat: 'laboratory', unit: '%' },
  chol: { code: '2093-3', display: 'Cholesterol [Mass/volume] in Serum or Plasma', cat: 'laboratory', unit: 'mg/dL' },
  hr: { code: '8867-4', display: 'Heart rate', cat: 'vital-signs', unit: '/min' },
  wt: { code: '29463-7', display: 'Body weight', cat: 'vital-signs', unit: 'kg' },
};

const ORGANIZATIONS = [
  { key: 'O1', name: 'General Hospital of Springfield' },
  { key: 'O2', name: 'Springfield Clinic' },
  { key: 'O3', name: 'Clinique Bélair' },
  { key: 'O4', name: 'Acme, Inc.' },
  { key: 'O5', name: 'Fundația Ștefan cel Mare' }, // Latin Extended-B (U+0218-021B)
  { key: 'O6', name: 'Городская больница' }, // Cyrillic
];

// B ("Zzmarker", MRN-ZZ-7702) doubles as the marker for the plaintext checks.
const PATIENTS = [
  { key: 'A', family: 'Müller', given: ['Anna'], birthDate: '1980-05-17', gender: 'female', active: true, mrn: 'MRN-1001', city: 'Springfield', email: 'anna.mueller@example.org', org: 'O2' },
  { key: 'B', family: 'Zzmarker', given: ['Bob'], birthDate: '1975-11-02', gender: 'male', active: false, mrn: 'MRN-ZZ-7702', org: 'O1' },
  { key: 'C', family: 'Smith', given: ['Carol'], birthDate: '1980-01-09', gender: 'female', mrn: 'MRN-1003', ssn: '123-45-6789' },
  { key: 'D', family: 'Smithson', given: ['Dan'], birthDate: '1990-07-04', gender: 'male', active: true, mrn: 'MRN-1004' },
];

// EB straddles 2019-05-01 (the ge/le range test); EC has no end.
const ENCOUNTERS = [
  { key: 'EA', subject: 'A', cls: 'AMB', status: 'finished', start: '2019-05-01T08:00:00Z', end: '2019-05-03T12:00:00Z' },
  { key: 'EB', subject: 'B', cls: 'IMP', status: 'finished', start: '2019-04-30T12:00:00Z', end: '2019-05-01T12:00:00Z' },
  { key: 'EC', subject: 'C', cls: 'AMB', status: 'in-progress', start: '2020-01-01T00:00:00Z' },
];

const CONDITIONS = [
  { key: 'CA', subject: 'A', code: '44054006', display: 'Diabetes mellitus type 2', encounter: 'EA', subjectIdentifier: true },
  { key: 'CB', subject: 'B', code: '38341003', display: 'Hypertensive disorder' },
  { key: 'CC', subject: 'C', code: '44054006', display: 'Diabetes mellitus type 2' },
];

const RISKS = [
  { key: 'RA1', subject: 'A', probability: 0.25 },
  { key: 'RA2', subject: 'C', probability: 0.7 },
];

// Observations. Units default to the code's; `coding` replaces the LOINC code
// (and then there is no category).
const OBS = [
  { key: 'g1', subject: 'A', code: 'glu', value: 95, date: '2018-03-10T08:00:00Z', tags: ['alpha'], profile: PROFILE },
  { key: 'g2', subject: 'A', code: 'glu', value: 100, date: '2019-02-11T08:00:00Z' },
  { key: 'g3', subject: 'B', code: 'glu', value: 105, date: '2019-06-01T08:00:00Z', tags: ['alpha'], security: 'R' },
  { key: 'g4', subject: 'C', code: 'glu', value: 140, date: '2020-01-20T08:00:00Z' },
  { key: 'g5', subject: 'D', code: 'glu', value: 180, date: '2021-09-09T08:00:00Z', tags: ['beta'] },
  { key: 'g6', subject: 'C', code: 'glu', value: 5.8, unit: 'mmol/L', date: '2022-04-04T08:00:00Z' },
  { key: 'h1', subject: 'A', code: 'a1c', value: 5.4, date: '2019-03-01T09:00:00Z' },
  { key: 'h2', subject: 'B', code: 'a1c', value: 5.44, date: '2019-03-02T09:00:00Z' },
  { key: 'h3', subject: 'C', code: 'a1c', value: 5.46, date: '2019-03-03T09:00:00Z' },
  { key: 'h4', subject: 'D', code: 'a1c', value: 6.1, date: '2019-03-04T09:00:00Z' },
  // A's heart rate measured by B (a Patient as performer): in both compartments.
  { key: 'r1', subject: 'A', code: 'hr', value: 72, date: '2020-06-01T10:00:00Z', performer: 'B' },
  { key: 'r2', subject: 'B', code: 'hr', value: 110, date: '2020-06-02T10:00:00Z' },
  { key: 'r3', subject: 'C', code: 'hr', value: 88, date: '2020-06-03T10:00:00Z' },
  { key: 'e1', subject: 'A', code: 'hr', value: 80, date: '2019-05-02T10:00:00Z', encounter: 'EA', note: 'after the procedure' },
  // B's observation recorded in A's encounter: _revinclude/_has from EA must not reveal it to A.
  { key: 'chol', subject: 'B', code: 'chol', value: 190, date: '2019-05-02T11:00:00Z', encounter: 'EA' },
  // Body weight: the date tests.
  { key: 'w1', subject: 'D', code: 'wt', value: 70.5, date: '2018-12-31T23:30:00Z' },
  { key: 'w2', subject: 'D', code: 'wt', value: 71, date: '2019-01-15' },
  { key: 'w3', subject: 'A', code: 'wt', value: 62, date: '2019-05-01T10:00:00+02:00' },
  { key: 'w4', subject: 'A', code: 'wt', value: 61.5, date: '2019-05-20T12:00:00Z' },
  { key: 'w5', subject: 'D', code: 'wt', value: 72.25, date: '2020-02-29T09:00:00Z' },
  { key: 'w6', subject: 'D', code: 'wt', value: 73, date: '2021-07-04T00:00:00-05:00' },
  // Odd codes: a glucose code without system, a local code; neither has a category nor a value.
  { key: 'n1', subject: 'D', coding: { code: '2339-0' }, text: 'Glucose (local meter)', date: '2017-01-01T07:00:00Z' },
  { key: 'x1', subject: 'C', coding: { system: LOCAL, code: 'FSP-1', display: 'Fasting sugar panel' }, date: '2018-06-06T06:00:00Z' },
];

const obsKeys = (pred) => OBS.filter(pred).map((o) => o.key);
const codeOf = (o) => (o.code ? CODES[o.code].code : o.coding.code);
const inCompartment = (p) => (o) => o.subject === p || o.performer === p;

// Small limits for the [search] tests (max_window >= max_count is required).
const LIMITS_CONFIG = `
[search]
default_count = 2
max_count = 5
max_window = 5
max_params = 3
max_values = 2
max_includes = 1
max_included = 1
max_chain_depth = 2
default_total = "accurate"
cursor_lifetime_seconds = 10
`;

// ---------------------------------------------------------------------------
// Helpers

/** A path whose interpolated values are percent-encoded: q`/Patient?name=${'Müller'}`. */
function q(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(String(values[i])) : ''), '');
}

/** Created resources by test key: ids, types, and the reverse map "Type/id" -> key. */
function world() {
  const w = { ids: {}, types: {}, byRef: {} };
  w.id = (key) => {
    assert.ok(w.ids[key], `no resource created for key ${key}`);
    return w.ids[key];
  };
  w.ref = (key) => `${w.types[key]}/${w.id(key)}`;
  w.create = async (c, key, resource) => {
    const r = await c.post(`/${resource.resourceType}`, resource);
    assertStatus(r, 201, `create ${key} (${resource.resourceType})`);
    w.ids[key] = r.json.id;
    w.types[key] = resource.resourceType;
    w.byRef[`${resource.resourceType}/${r.json.id}`] = key;
    return r.json;
  };
  /** The test key of a bundle entry ("?Type/id" for resources this file did not create). */
  w.keyOf = (e) => {
    const r = e.resource;
    return w.byRef[`${r.resourceType}/${r.id}`] ?? `?${r.resourceType}/${r.id}`;
  };
  return w;
}

const sorted = (a) => [...a].sort();
const entriesOf = (bundle, mode) => (bundle.entry || []).filter((e) => !mode || (e.search && e.search.mode === mode));

/** GET a search; asserts 200 and a searchset Bundle; returns the Bundle. */
async function search(c, path, opts) {
  const r = await c.get(path, opts);
  assertStatus(r, 200, `GET ${path}`);
  assertFhirJson(r, `GET ${path}`);
  assert.equal(r.json.resourceType, 'Bundle', describeRes(r));
  assert.equal(r.json.type, 'searchset', describeRes(r));
  return r.json;
}

function outcomeEntries(bundle) {
  return entriesOf(bundle, 'outcome').map((e) => e.resource);
}

/** Follows every `next` link; returns { pages, entries (matches and includes) }. */
async function allPages(c, path, maxPages = 20) {
  const pages = [];
  let p = path;
  while (p) {
    pages.push(await search(c, p));
    const next = nextLink(pages[pages.length - 1]);
    p = next ? linkPath(next) : null;
    assert.ok(pages.length <= maxPages, `more than ${maxPages} pages following ${path}`);
  }
  return { pages, entries: pages.flatMap((b) => b.entry || []) };
}

function link(bundle, relation) {
  const l = (bundle.link || []).find((x) => x.relation === relation);
  return l ? l.url : undefined;
}

/** A path for messages: percent-decoded when possible. */
function readable(path) {
  try { return decodeURIComponent(path); } catch { return path; }
}

function cursorOf(url) {
  return new URL(url, 'https://localhost').searchParams.get('_cursor');
}

function withCursor(path, cursor) {
  const u = new URL(path, 'https://localhost');
  u.searchParams.set('_cursor', cursor);
  return u.pathname + u.search;
}

function flipChar(s) {
  const i = Math.floor(s.length / 2);
  return s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
}

// Resource bodies -------------------------------------------------------------

function organizationBody(o) {
  return { resourceType: 'Organization', name: o.name };
}

function patientBody(w, p) {
  const identifier = [{
    system: MRN, value: p.mrn,
    type: { coding: [{ system: V2_0203, code: 'MR' }] },
  }];
  if (p.ssn) identifier.push({ system: SSN, value: p.ssn, type: { coding: [{ system: V2_0203, code: 'SS' }] } });
  const body = {
    resourceType: 'Patient', identifier,
    name: [{ family: p.family, given: p.given }],
    gender: p.gender, birthDate: p.birthDate,
  };
  if (p.active !== undefined) body.active = p.active;
  if (p.city) body.address = [{ city: p.city }];
  if (p.email) body.telecom = [{ system: 'email', value: p.email }];
  if (p.org) body.managingOrganization = { reference: w.ref(p.org) };
  return body;
}

function encounterBody(w, e) {
  const period = { start: e.start };
  if (e.end) period.end = e.end;
  return {
    resourceType: 'Encounter', status: e.status,
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: e.cls },
    subject: { reference: w.ref(e.subject) }, period,
  };
}

function conditionBody(w, c) {
  const subject = { reference: w.ref(c.subject) };
  if (c.subjectIdentifier) {
    subject.identifier = { system: MRN, value: PATIENTS.find((p) => p.key === c.subject).mrn };
  }
  const body = {
    resourceType: 'Condition',
    clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] },
    code: { coding: [{ system: SNOMED, code: c.code, display: c.display }] },
    subject,
  };
  if (c.encounter) body.encounter = { reference: w.ref(c.encounter) };
  return body;
}

function riskBody(w, r) {
  return {
    resourceType: 'RiskAssessment', status: 'final',
    subject: { reference: w.ref(r.subject) },
    prediction: [{ probabilityDecimal: r.probability }],
  };
}

function observationBody(w, o) {
  const body = { resourceType: 'Observation', status: 'final' };
  const meta = {};
  if (o.tags) meta.tag = o.tags.map((t) => ({ system: TAGS, code: t }));
  if (o.profile) meta.profile = [o.profile];
  if (o.security) meta.security = [{ system: CONFIDENTIALITY, code: o.security }];
  if (Object.keys(meta).length) body.meta = meta;
  if (o.code) {
    const k = CODES[o.code];
    body.category = [{ coding: [{ system: OBS_CAT, code: k.cat }] }];
    body.code = { coding: [{ system: LOINC, code: k.code, display: k.display }] };
  } else {
    body.code = { coding: [o.coding] };
    if (o.text) body.code.text = o.text;
  }
  body.subject = { reference: w.ref(o.subject) };
  if (o.encounter) body.encounter = { reference: w.ref(o.encounter) };
  body.effectiveDateTime = o.date;
  if (o.performer) body.performer = [{ reference: w.ref(o.performer) }];
  if (o.value !== undefined) {
    const unit = o.unit || CODES[o.code].unit;
    body.valueQuantity = { value: o.value, unit, system: UCUM, code: unit };
  }
  if (o.note) body.note = [{ text: o.note }];
  return body;
}

async function seed(c, w) {
  for (const o of ORGANIZATIONS) await w.create(c, o.key, organizationBody(o));
  for (const p of PATIENTS) await w.create(c, p.key, patientBody(w, p));
  for (const e of ENCOUNTERS) await w.create(c, e.key, encounterBody(w, e));
  for (const x of CONDITIONS) await w.create(c, x.key, conditionBody(w, x));
  for (const r of RISKS) await w.create(c, r.key, riskBody(w, r));
  for (const o of OBS) await w.create(c, o.key, observationBody(w, o));
}

// The limits server: two patients, an encounter, 7 heart rates.
async function seedLimits(c, w) {
  await w.create(c, 'LO', { resourceType: 'Organization', name: 'Deep Care' });
  await w.create(c, 'L1', { resourceType: 'Patient', name: [{ family: 'Deep' }], managingOrganization: { reference: w.ref('LO') } });
  await w.create(c, 'L2', { resourceType: 'Patient', name: [{ family: 'Shallow' }] });
  await w.create(c, 'LE', {
    resourceType: 'Encounter', status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: w.ref('L1') },
  });
  for (let i = 0; i < 7; i++) {
    const body = {
      resourceType: 'Observation', status: 'final',
      code: { coding: [{ system: LOINC, code: '8867-4' }] },
      subject: { reference: w.ref(i % 2 ? 'L2' : 'L1') },
      valueQuantity: { value: 60 + i, unit: '/min', system: UCUM, code: '/min' },
    };
    if (i === 0) body.encounter = { reference: w.ref('LE') };
    await w.create(c, `LH${i}`, body);
  }
}

// ---------------------------------------------------------------------------

describe('search', { timeout: 120000 }, () => {
  let srv; // default config
  let lim; // LIMITS_CONFIG
  let sys; // system/*.cruds on srv
  let limSys;
  const W = world();
  const L = world();
  let expiring; // { path, at }: a cursor of lim, checked for expiry by the last test
  let base; // the server's base URL as it writes it in fullUrl

  /** Asserts the matches (test keys of `w`) of a search over all its pages; returns the first page. */
  async function expectMatches(c, path, expected, what = '', w = W) {
    const { pages, entries } = await allPages(c, path);
    const got = sorted(entries.filter((e) => e.search.mode === 'match').map(w.keyOf));
    assert.deepEqual(got, sorted(expected), `${what ? `${what}: ` : ''}matches of GET ${readable(path)}`);
    return pages[0];
  }
  async function expectCases(c, cases, what) {
    for (const [path, expected] of cases) await expectMatches(c, path, expected, what);
  }
  async function expectError(c, path, status, issue, details, diagnostics) {
    const r = await c.get(path);
    assertOutcome(r, status, issue, details, `GET ${readable(path)}`);
    if (diagnostics) assert.match(r.json.issue[0].diagnostics || '', diagnostics, `diagnostics of GET ${readable(path)}`);
    assert.equal(r.json.entry, undefined);
    return r;
  }

  before(async () => {
    [srv, lim] = await Promise.all([
      startServer({ name: 'search' }),
      startServer({ name: 'search-limits', config: LIMITS_CONFIG }),
    ]);
    sys = client(srv, mintToken(srv, { sub: 'seeder', scope: 'system/*.cruds' }));
    limSys = client(lim, mintToken(lim, { sub: 'seeder', scope: 'system/*.cruds' }));
    await Promise.all([seed(sys, W), seedLimits(limSys, L)]);
    const any = await search(sys, q`/Patient?_id=${W.id('A')}`);
    base = any.entry[0].fullUrl.replace(/\/Patient\/[^/]+$/, '');
    // A cursor that the last test checks after cursor_lifetime_seconds (10 s)
    // have passed: taken now, so that the wait overlaps the other tests.
    const first = await search(limSys, q`/Observation?code=${'8867-4'}`);
    assert.ok(nextLink(first), `no next link on the limits server: ${JSON.stringify(first.link)}`);
    expiring = { path: linkPath(nextLink(first)), at: Date.now() };
  });
  after(async () => {
    await stopAndClean(srv);
    await stopAndClean(lim);
  });
  afterEach(diagnose(() => [srv, lim]));

  // -------------------------------------------------------------------------
  describe('token', () => {
    it('code, system|code, |code, system|, OR and AND', async () => {
      const glucose = obsKeys((o) => codeOf(o) === '2339-0'); // g1-g6 and n1 (no system)
      const loincGlucose = obsKeys((o) => o.code === 'glu');
      await expectCases(sys, [
        [q`/Observation?code=${'2339-0'}`, glucose],
        [q`/Observation?code=${`${LOINC}|2339-0`}`, loincGlucose],
        [q`/Observation?code=${'|2339-0'}`, ['n1']],
        [q`/Observation?code=${`${LOCAL}|FSP-1`}`, ['x1']],
        [q`/Observation?code=${`${LOINC}|`}`, obsKeys((o) => !!o.code)],
        [q`/Observation?code=${`${LOCAL}|`}`, ['x1']],
        [q`/Observation?code=${`${SNOMED}|2339-0`}`, []],
        [q`/Observation?code=${'8867-4,4548-4'}`, obsKeys((o) => o.code === 'hr' || o.code === 'a1c')],
        [q`/Observation?code=${'2339-0'}&code=${`${LOINC}|2339-0`}`, loincGlucose],
        [q`/Observation?code=${'2339-0'}&code=${'8867-4'}`, []],
        [q`/Patient?gender=female`, ['A', 'C']],
        [q`/Patient?active=true`, ['A', 'D']],
        [q`/Patient?gender=male&active=true`, ['D']],
      ]);
    });

    it(':not includes resources without the code; :missing=true/false', async () => {
      await expectCases(sys, [
        [q`/Observation?code:not=${'2339-0'}`, obsKeys((o) => codeOf(o) !== '2339-0')],
        [q`/Observation?code:not=${`${LOINC}|2339-0`}`, obsKeys((o) => o.code !== 'glu')],
        [q`/Patient?active:not=true`, ['B', 'C']],
        [q`/Observation?category:missing=true`, ['n1', 'x1']],
        [q`/Observation?category:missing=false`, obsKeys((o) => !!o.code)],
        [q`/Observation?category=laboratory`, obsKeys((o) => o.code && CODES[o.code].cat === 'laboratory')],
        [q`/Patient?active:missing=true`, ['C']],
        [q`/Patient?active:missing=false`, ['A', 'B', 'D']],
      ]);
      await expectError(sys, q`/Patient?active:missing=maybe`, 400, 'invalid', 'invalid_parameter');
    });

    it(':text searches the display and CodeableConcept.text, case- and accent-insensitive', async () => {
      await expectCases(sys, [
        [q`/Observation?code:text=${'glucose'}`, obsKeys((o) => o.code === 'glu' || o.key === 'n1')],
        [q`/Observation?code:text=${'GLUCOSE'}`, obsKeys((o) => o.code === 'glu' || o.key === 'n1')],
        [q`/Observation?code:text=${'local meter'}`, ['n1']],
        [q`/Observation?code:text=${'sugar'}`, ['x1']],
        [q`/Observation?code:text=${'heart'}`, obsKeys((o) => o.code === 'hr')],
      ]);
    });

    it('identifier: system|value, value alone, system|, and :of-type', async () => {
      await expectCases(sys, [
        [q`/Patient?identifier=${`${MRN}|MRN-1001`}`, ['A']],
        [q`/Patient?identifier=${'MRN-1001'}`, ['A']],
        [q`/Patient?identifier=${`${MRN}|`}`, ['A', 'B', 'C', 'D']],
        [q`/Patient?identifier=${`${SSN}|123-45-6789`}`, ['C']],
        [q`/Patient?identifier=${`${SSN}|MRN-1001`}`, []],
        [q`/Patient?identifier=${'mrn-1001'}`, []], // tokens are case-sensitive
        [q`/Patient?identifier=${'MRN-1001,MRN-1004'}`, ['A', 'D']],
        [q`/Patient?identifier:of-type=${`${V2_0203}|MR|MRN-1001`}`, ['A']],
        [q`/Patient?identifier:of-type=${`${V2_0203}|SS|123-45-6789`}`, ['C']],
        [q`/Patient?identifier:of-type=${`${V2_0203}|MR|123-45-6789`}`, []],
        [q`/Patient?email=${'anna.mueller@example.org'}`, ['A']],
      ]);
      await expectError(sys, q`/Patient?identifier:of-type=${'MR|MRN-1001'}`, 400, 'invalid', 'invalid_parameter', /system\|code\|value/);
      await expectError(sys, q`/Observation?code:of-type=${`${V2_0203}|MR|x`}`, 400, 'invalid', 'invalid_parameter', /identifier/);
    });
  });

  // -------------------------------------------------------------------------
  describe('string', () => {
    it('default is a case- and accent-insensitive prefix match', async () => {
      await expectCases(sys, [
        [q`/Patient?family=${'Smith'}`, ['C', 'D']],
        [q`/Patient?family=${'smi'}`, ['C', 'D']],
        [q`/Patient?family=${'smithson'}`, ['D']],
        [q`/Patient?name=${'muller'}`, ['A']],
        [q`/Patient?name=${'MÜLLER'}`, ['A']],
        [q`/Patient?name=${'Mül'}`, ['A']],
        [q`/Patient?name=${'anna'}`, ['A']],
        [q`/Patient?given=${'ca'}`, ['C']],
        [q`/Patient?name=${'muller,smith'}`, ['A', 'C', 'D']],
        [q`/Patient?family=${'Smith'}&given=${'Dan'}`, ['D']],
        [q`/Patient?name=${'uller'}`, []],
        [q`/Patient?address-city=${'springfield'}`, ['A']],
        [q`/Patient?address-city=${'SPRING'}`, ['A']],
        [q`/Organization?name=${'springfield'}`, ['O2']],
        [q`/Organization?name=${'clinique belair'}`, ['O3']],
        [q`/Organization?name=${'CLINIQUE BÉL'}`, ['O3']],
        [q`/Organization?name=${'acme,clinique'}`, ['O3', 'O4']],
        [q`/Organization?name=${'acme\\,'}`, ['O4']], // an escaped comma is part of the value
      ]);
    });

    it(':exact is case- and accent-sensitive', async () => {
      await expectCases(sys, [
        [q`/Patient?family:exact=${'Smith'}`, ['C']],
        [q`/Patient?family:exact=${'smith'}`, []],
        [q`/Patient?family:exact=${'Müller'}`, ['A']],
        [q`/Patient?family:exact=${'Muller'}`, []],
        [q`/Patient?family:exact=${'Mül'}`, []],
        [q`/Organization?name:exact=${'Clinique Bélair'}`, ['O3']],
        [q`/Organization?name:exact=${'clinique bélair'}`, []],
        [q`/Organization?name:exact=${'Clinique Belair'}`, []],
      ]);
    });

    it(':contains on a string that does not identify people (Organization.name)', async () => {
      await expectCases(sys, [
        [q`/Organization?name:contains=${'field'}`, ['O1', 'O2']],
        [q`/Organization?name:contains=${'HOSPITAL'}`, ['O1']],
        [q`/Organization?name:contains=${'belair'}`, ['O3']],
        [q`/Organization?name:contains=${'ÉLA'}`, ['O3']],
        [q`/Organization?name:contains=${'nowhere'}`, []],
      ]);
    });

    it('_sort on a string that does not identify people', async () => {
      const order = async (path) => entriesOf(await search(sys, path), 'match').map(W.keyOf);
      assert.deepEqual(await order(q`/Organization?name=${'a,c,g,s'}&_sort=name`), ['O4', 'O3', 'O1', 'O2']);
      assert.deepEqual(await order(q`/Organization?name=${'a,c,g,s'}&_sort=-name`), ['O2', 'O1', 'O3', 'O4']);
    });

    it('accent folding also removes combining accents (a query in NFD)', async () => {
      await expectCases(sys, [
        [q`/Organization?name=${'Clinique Be\u0301lair'}`, ['O3']],
        [q`/Organization?name:contains=${'be\u0301lair'}`, ['O3']],
        [q`/Patient?name=${'Mu\u0308ller'}`, ['A']],
      ]);
    });

    it('accent folding beyond Latin-1 and Latin Extended-A (ș, ț)', async () => {
      await expectCases(sys, [
        [q`/Organization?name=${'fundatia stefan'}`, ['O5']],
        [q`/Organization?name:contains=${'STEFAN'}`, ['O5']],
      ]);
    });

    it('case folding of non-Latin scripts (Cyrillic)', async () => {
      await expectCases(sys, [
        [q`/Organization?name=${'городская'}`, ['O6']],
        [q`/Organization?name=${'ГОРОДСКАЯ'}`, ['O6']],
        [q`/Organization?name:contains=${'БОЛЬНИЦА'}`, ['O6']],
      ]);
    });

    it('blind index: :contains, :text and _sort on identifying values are refused with 400', async () => {
      for (const path of [
        q`/Patient?name:contains=${'ull'}`,
        q`/Patient?family:contains=${'mith'}`,
        q`/Patient?address-city:contains=${'field'}`,
      ]) await expectError(sys, path, 400, 'invalid', 'invalid_parameter', /blind-indexed/);
      for (const path of [q`/Patient?identifier:text=${'MRN'}`, q`/Patient?email:text=${'anna'}`]) {
        await expectError(sys, path, 400, 'invalid', 'invalid_parameter', /blind-indexed/);
      }
      for (const key of ['name', 'family', '-given', 'birthdate']) {
        await expectError(sys, q`/Patient?_sort=${key}`, 400, 'invalid', 'invalid_parameter', /blind-indexed/);
      }
    });

    it('blind index: SQLite holds no plaintext of names, identifiers or birth dates', () => {
      const db = `${srv.dataDir}/db/fhir.db`;
      const count = (sql) => Number(sqlite(db, sql).trim());
      assert.equal(count("SELECT count(*) FROM search_string WHERE norm LIKE '%zzmarker%' OR exact LIKE '%zzmarker%'"), 0, 'family name in search_string');
      assert.equal(count("SELECT count(*) FROM search_string WHERE norm LIKE '%muller%' OR exact LIKE '%ller%'"), 0, 'family name in search_string');
      assert.equal(count("SELECT count(*) FROM search_string WHERE norm LIKE '%springfield%' AND type = 'Patient'"), 0, 'address in search_string');
      // (needles with non-hex characters: blind values are hex HMACs)
      assert.equal(count("SELECT count(*) FROM search_token WHERE code LIKE '%MRN-ZZ%' OR text LIKE '%MRN-ZZ%'"), 0, 'MRN in search_token');
      assert.equal(count("SELECT count(*) FROM search_token WHERE code LIKE '%123-45%'"), 0, 'SSN in search_token');
      assert.equal(count("SELECT count(*) FROM search_token WHERE code LIKE '%anna.mueller%'"), 0, 'email in search_token');
      assert.equal(count("SELECT count(*) FROM search_token WHERE code LIKE '%1975-11%'"), 0, 'birth date in search_token');
      assert.equal(count("SELECT count(*) FROM search_date WHERE type = 'Patient' AND param = 'birthdate'"), 0, 'birth dates as plain ranges');
      // The indexes are there (blind rows), so the checks above are not vacuous.
      assert.ok(count("SELECT count(*) FROM search_string WHERE type = 'Patient' AND param = 'family' AND blind = 1") >= 4, 'no blind family rows');
      assert.ok(count("SELECT count(*) FROM search_token WHERE type = 'Patient' AND param = 'identifier' AND blind = 1") >= 4, 'no blind identifier rows');
      // Nothing in the file bytes either (resource bodies are encrypted).
      const bytes = dbBytes(db).toString('latin1').toLowerCase();
      for (const needle of ['zzmarker', 'mrn-zz-7702', '1975-11-02', 'anna.mueller@example.org', '123-45-6789']) {
        assert.ok(!bytes.includes(needle), `${needle} appears in plaintext in ${db}`);
      }
    });
  });

  // -------------------------------------------------------------------------
  describe('date', () => {
    const wt = (value) => q`/Observation?code=${'29463-7'}&date=${value}`;

    it('every prefix on dateTime values (partial dates, time zones)', async () => {
      // w1 2018-12-31T23:30Z, w2 2019-01-15 (a day), w3 2019-05-01T08:00Z (10:00+02:00),
      // w4 2019-05-20T12:00Z, w5 2020-02-29T09:00Z, w6 2021-07-04T05:00Z (00:00-05:00).
      await expectCases(sys, [
        [wt('2019'), ['w2', 'w3', 'w4']],
        [wt('2019-05'), ['w3', 'w4']],
        [wt('2019-05-01'), ['w3']],
        [wt('eq2019-05-01'), ['w3']],
        [wt('2018-12-31'), ['w1']],
        [wt('2021-07-04'), ['w6']],
        [wt('ne2019'), ['w1', 'w5', 'w6']],
        [wt('gt2019'), ['w5', 'w6']],
        [wt('lt2019'), ['w1']],
        [wt('ge2019-05'), ['w3', 'w4', 'w5', 'w6']],
        [wt('le2019-01-15'), ['w1', 'w2']],
        [wt('sa2019-05-01'), ['w4', 'w5', 'w6']],
        [wt('eb2019-05-01'), ['w1', 'w2']],
        [wt('2019-05-01T08:00:00Z'), ['w3']],
        [wt('2019-05-01T10:00:00+02:00'), ['w3']],
        [wt('2019-05-01T10:00:00Z'), []],
        [wt('ge2019-05-01T09:00:00Z'), ['w4', 'w5', 'w6']],
        [wt('ge2019-05-01T09:00:00+02:00'), ['w3', 'w4', 'w5', 'w6']],
        [wt('lt2019-01-01T00:00:00+01:00'), []],
        [wt('lt2019-01-01T00:00:00-01:00'), ['w1']],
        [wt('2019,2021'), ['w2', 'w3', 'w4', 'w6']],
        [q`/Observation?code=${'29463-7'}&date=ge2019&date=lt2020`, ['w2', 'w3', 'w4']],
      ]);
    });

    it('ap is approximate (within 10% of the distance to now)', async () => {
      const b = await search(sys, wt('ap2019-05-10'));
      const got = entriesOf(b, 'match').map(W.keyOf);
      for (const k of ['w3', 'w4']) assert.ok(got.includes(k), `ap2019-05-10 should match ${k}: ${got}`);
      assert.ok(!got.includes('w6'), `ap2019-05-10 should not match w6 (2021-07-04): ${got}`);
    });

    it('Period values (Encounter.period) with eq ne gt lt sa eb', async () => {
      // EA [2019-05-01T08:00Z, 2019-05-03T12:00Z], EB [2019-04-30T12:00Z, 2019-05-01T12:00Z], EC [2020-01-01, open].
      await expectCases(sys, [
        [q`/Encounter?date=2019`, ['EA', 'EB']],
        [q`/Encounter?date=2019-05`, ['EA']],
        [q`/Encounter?date=2019-05-02`, []],
        [q`/Encounter?date=ne2019-05`, ['EB', 'EC']],
        [q`/Encounter?date=gt2019-05-02`, ['EA', 'EC']],
        [q`/Encounter?date=lt2019-05-01`, ['EB']],
        [q`/Encounter?date=sa2019-05-02`, ['EC']],
        [q`/Encounter?date=eb2019-05-01`, []],
        [q`/Encounter?date=eb2020`, ['EA', 'EB']],
      ]);
    });

    it('ge/le on Period values follow R4 §3.1.1.4.2 (range above/below, or contained)', async () => {
      // ge: the range above the value overlaps the target, or the value contains it.
      // EB ends on 2019-05-01 and starts before it: neither. le is symmetric for EA.
      await expectCases(sys, [
        [q`/Encounter?date=ge2019-05-01`, ['EA', 'EC']],
        [q`/Encounter?date=le2019-05-01`, ['EB']],
      ]);
    });

    it('birthdate (blind-indexed): exact YYYY, YYYY-MM, YYYY-MM-DD only', async () => {
      await expectCases(sys, [
        [q`/Patient?birthdate=1980-05-17`, ['A']],
        [q`/Patient?birthdate=1980-05`, ['A']],
        [q`/Patient?birthdate=1980`, ['A', 'C']],
        [q`/Patient?birthdate=eq1980`, ['A', 'C']], // eq is the default prefix
        [q`/Patient?birthdate=1975-11-02`, ['B']],
        [q`/Patient?birthdate=1981`, []],
        [q`/Patient?birthdate=1980-05-17,1990`, ['A', 'D']],
        [q`/Patient?birthdate:missing=false`, ['A', 'B', 'C', 'D']],
      ]);
      for (const v of ['ge1980', 'ne1980-05-17', 'lt1990', 'gt1970', 'le1980', 'sa1970', 'eb2000', 'ap1980', '1980-05-17T00:00:00Z', '1980-05-17T10:00']) {
        await expectError(sys, q`/Patient?birthdate=${v}`, 400, 'invalid', 'invalid_parameter', /blind-indexed/);
      }
      await expectError(sys, q`/Patient?birthdate=${'not-a-date'}`, 400, 'invalid', 'invalid_parameter');
    });

    it('an invalid date -> 400', async () => {
      for (const v of ['2019-13', 'gt20190501', 'yesterday', '2019-05-01T25:00:00Z']) {
        await expectError(sys, wt(v), 400, 'invalid', 'invalid_parameter', /not a FHIR date/);
      }
    });
  });

  // -------------------------------------------------------------------------
  describe('number and quantity', () => {
    it('value-quantity: prefixes, precision of eq, system and unit', async () => {
      const a1c = (v) => q`/Observation?code=${'4548-4'}&value-quantity=${v}`;
      // h1 5.4, h2 5.44, h3 5.46, h4 6.1 (%)
      await expectCases(sys, [
        [a1c('5.4'), ['h1', 'h2']], // [5.35, 5.45)
        [a1c('5.40'), ['h1']], // [5.395, 5.405)
        [a1c('eq5.4'), ['h1', 'h2']],
        [a1c('ne5.4'), ['h3', 'h4']],
        [a1c('gt5.44'), ['h3', 'h4']],
        [a1c('ge5.44'), ['h2', 'h3', 'h4']],
        [a1c('lt5.44'), ['h1']],
        [a1c('le5.44'), ['h1', 'h2']],
        [a1c('sa5.44'), ['h3', 'h4']],
        [a1c('eb5.44'), ['h1']],
        [a1c('ap6.1'), ['h4']], // within 10%: [5.49, 6.71]
        [a1c(`5.4|${UCUM}|%`), ['h1', 'h2']],
      ]);
      await expectCases(sys, [
        [q`/Observation?value-quantity=gt100`, obsKeys((o) => o.value > 100)],
        [q`/Observation?value-quantity=gt1e2`, obsKeys((o) => o.value > 100)],
        [q`/Observation?value-quantity=gt1.0e2`, obsKeys((o) => o.value > 100)],
        [q`/Observation?value-quantity=100`, ['g2']],
        [q`/Observation?value-quantity=${`100|${UCUM}|mg/dL`}`, ['g2']],
        [q`/Observation?value-quantity=${'100||mg/dL'}`, ['g2']],
        [q`/Observation?value-quantity=${`100|${UCUM}|mmol/L`}`, []],
        [q`/Observation?value-quantity=${`lt10|${UCUM}|mmol/L`}`, ['g6']],
        [q`/Observation?value-quantity=${`gt5|${UCUM}|mg/dL`}`, obsKeys((o) => o.value > 5 && (o.code === 'glu' || o.code === 'chol') && !o.unit)],
        [q`/Observation?value-quantity=${'5.8|http://other.example.org|mmol/L'}`, []],
        [q`/Observation?value-quantity=${'95,180'}`, ['g1', 'g5']],
        [q`/Observation?value-quantity=ge70&value-quantity=lt72`, ['w1', 'w2']],
        [q`/Observation?value-quantity:missing=true`, ['n1', 'x1']],
      ]);
      await expectError(sys, q`/Observation?value-quantity=abc`, 400, 'invalid', 'invalid_parameter', /not a number/);
      await expectError(sys, q`/Observation?value-quantity=${'1|x'}`, 400, 'invalid', 'invalid_parameter', /number\|system\|code/);
    });

    it('number (RiskAssessment probability)', async () => {
      await expectCases(sys, [
        [q`/RiskAssessment?probability=gt0.5`, ['RA2']],
        [q`/RiskAssessment?probability=0.25`, ['RA1']],
        [q`/RiskAssessment?probability=lt0.5`, ['RA1']],
        [q`/RiskAssessment?probability=ge0.25`, ['RA1', 'RA2']],
        [q`/RiskAssessment?probability=0.4`, []],
      ]);
    });
  });

  // -------------------------------------------------------------------------
  describe('reference, chains and _has', () => {
    it('subject=Type/id, id, :Type, absolute URL; patient=id; encounter; performer', async () => {
      const aSubject = obsKeys((o) => o.subject === 'A');
      await expectCases(sys, [
        [q`/Observation?subject=${W.ref('A')}`, aSubject],
        [q`/Observation?subject=${W.id('A')}`, aSubject],
        [q`/Observation?subject:Patient=${W.id('A')}`, aSubject],
        [q`/Observation?subject=${`${base}/${W.ref('A')}`}`, aSubject],
        [q`/Observation?patient=${W.id('A')}`, aSubject],
        [q`/Observation?patient=${W.ref('A')}`, aSubject],
        [q`/Observation?subject=${`${W.ref('A')},${W.ref('C')}`}`, obsKeys((o) => o.subject === 'A' || o.subject === 'C')],
        [q`/Observation?subject:Group=${W.id('A')}`, []],
        [q`/Observation?subject=${'Patient/does-not-exist'}`, []],
        [q`/Observation?subject=${`http://other.example.org/fhir/${W.ref('A')}`}`, []],
        [q`/Observation?performer=${W.ref('B')}`, ['r1']],
        [q`/Observation?encounter=${W.ref('EA')}`, ['e1', 'chol']],
        [q`/Observation?encounter=${W.id('EA')}`, ['e1', 'chol']],
        [q`/Observation?encounter:missing=false`, ['e1', 'chol']],
        [q`/Condition?encounter=${W.ref('EA')}`, ['CA']],
        [q`/Patient?organization=${W.ref('O1')}`, ['B']],
      ]);
      await expectError(sys, q`/Observation?subject:Organization=${W.id('A')}`, 400, 'invalid', 'invalid_parameter', /cannot refer to/);
      await expectError(sys, q`/Observation?subject=${'not an id'}`, 400, 'invalid', 'invalid_parameter');
    });

    it('reference :identifier (blind)', async () => {
      await expectCases(sys, [
        [q`/Condition?subject:identifier=${`${MRN}|MRN-1001`}`, ['CA']],
        [q`/Condition?subject:identifier=${'MRN-1001'}`, ['CA']],
        [q`/Condition?subject:identifier=${`${MRN}|MRN-1003`}`, []],
      ]);
    });

    it('chains: subject:Patient.name, patient.family, :exact, birthdate through a chain', async () => {
      await expectCases(sys, [
        [q`/Observation?subject:Patient.name=${'muller'}`, obsKeys((o) => o.subject === 'A')],
        [q`/Observation?patient.family=${'Smith'}`, obsKeys((o) => o.subject === 'C' || o.subject === 'D')],
        [q`/Observation?patient.family:exact=${'Smith'}`, obsKeys((o) => o.subject === 'C')],
        [q`/Observation?subject:Patient.birthdate=1980`, obsKeys((o) => o.subject === 'A' || o.subject === 'C')],
        [q`/Observation?performer:Patient.family=${'Zzmarker'}`, ['r1']],
        [q`/Observation?encounter:Encounter.status=${'finished'}`, ['e1', 'chol']],
        [q`/Observation?subject:Patient.name=${'nobody'}`, []],
        [q`/Observation?subject:Patient._id=${W.id('C')}`, obsKeys((o) => o.subject === 'C')],
        [q`/Patient?organization.name=${'general'}`, ['B']],
      ]);
      // subject (Patient, Group, Device, Location) and encounter (Encounter, EpisodeOfCare) need the type.
      await expectError(sys, q`/Observation?subject.name=${'muller'}`, 400, 'invalid', 'invalid_parameter', /several types/);
      await expectError(sys, q`/Observation?encounter.status=${'finished'}`, 400, 'invalid', 'invalid_parameter', /several types/);
      await expectError(sys, q`/Observation?code.name=x`, 400, 'invalid', 'invalid_parameter', /not a reference parameter/);
      await expectError(sys, q`/Observation?subject:Patient.name:contains=${'ull'}`, 400, 'invalid', 'invalid_parameter', /blind-indexed/);
    });

    it('_has: reverse chains, AND of two _has', async () => {
      await expectCases(sys, [
        [q`/Patient?_has:Observation:patient:code=${'8867-4'}`, ['A', 'B', 'C']],
        [q`/Patient?_has:Observation:subject:code=${'4548-4'}`, ['A', 'B', 'C', 'D']],
        [q`/Patient?_has:Condition:patient:code=${'44054006'}`, ['A', 'C']],
        [q`/Patient?_has:Observation:subject:value-quantity=gt150`, ['B', 'D']],
        [q`/Patient?_has:Observation:patient:code=${'8867-4'}&_has:Condition:patient:code=${'44054006'}`, ['A', 'C']],
        [q`/Encounter?_has:Observation:encounter:code=${'2093-3'}`, ['EA']],
        [q`/Organization?_has:Patient:organization:name=${'Zzmarker'}`, ['O1']],
        [q`/Patient?_has:Observation:patient:code=${'no-such-code'}`, []],
        [q`/Patient?_has:Observation:patient:_id=${W.id('r1')}`, ['A']],
        [q`/Patient?_has:Observation:performer:_id=${W.id('r1')}`, ['B']],
      ]);
      await expectError(sys, q`/Patient?_has:Observation:code:code=x`, 400, 'invalid', 'invalid_parameter', /not a reference parameter/);
      await expectError(sys, q`/Patient?_has:Nothing:patient:code=x`, 400, 'invalid', 'invalid_parameter', /unknown resource type/);
      await expectError(sys, q`/Patient?_has:Observation:patient`, 400, 'invalid', 'invalid_parameter');
    });

    it('a chain or _has two levels deep is refused by default (max_chain_depth = 1)', async () => {
      await expectError(sys, q`/Observation?encounter:Encounter.patient.family=${'Muller'}`, 400, 'too-costly', 'too_costly', /chains deeper/);
      await expectError(sys, q`/Patient?_has:Observation:patient:encounter:Encounter.status=finished`, 400, 'too-costly', 'too_costly');
      await expectError(sys, q`/Patient?_has:Observation:patient:_has:Condition:encounter:code=x`, 400, 'too-costly', 'too_costly');
    });

    it('compartment search /Patient/{id}/{Type}', async () => {
      await expectCases(sys, [
        [q`/Patient/${W.id('A')}/Observation`, obsKeys(inCompartment('A'))],
        [q`/Patient/${W.id('B')}/Observation`, obsKeys(inCompartment('B'))], // r1 through performer
        [q`/Patient/${W.id('A')}/Observation?code=${'8867-4'}`, ['r1', 'e1']],
        [q`/Patient/${W.id('A')}/Encounter`, ['EA']],
        [q`/Patient/${W.id('C')}/Condition`, ['CC']],
        [q`/Patient/${W.id('A')}/Patient`, ['A']],
        [q`/Patient/does-not-exist/Observation`, []],
      ]);
      await expectError(sys, q`/Patient/${W.id('A')}/Organization`, 400, 'invalid', 'invalid_request', /not in the Patient compartment/);
      await expectError(sys, q`/Encounter/${W.id('EA')}/Observation`, 501, 'not-supported', 'not_implemented');
    });
  });

  // -------------------------------------------------------------------------
  describe('_id, _lastUpdated, _tag, _profile, _security, _sort', () => {
    it('_id: one, a comma list, AND of two', async () => {
      await expectCases(sys, [
        [q`/Observation?_id=${W.id('g1')}`, ['g1']],
        [`/Observation?_id=${W.id('g1')},${W.id('r2')},${W.id('A')}`, ['g1', 'r2']],
        [`/Observation?_id=${W.id('g1')}&_id=${W.id('g2')}`, []],
        [`/Observation?_id=${W.id('g1')},${W.id('g2')}&code=8867-4`, []],
        [q`/Observation?_id=does-not-exist`, []],
      ]);
      await expectError(sys, q`/Observation?_id:not=${W.id('g1')}`, 400, 'invalid', 'invalid_parameter');
    });

    it('_lastUpdated with every comparison around a create', async () => {
      const made = [];
      for (let i = 0; i < 3; i++) {
        if (i) await sleep(20);
        made.push(await W.create(sys, `LU${i}`, { resourceType: 'Organization', name: `LastUpdated ${i}`, meta: { tag: [{ system: TAGS, code: 'lu' }] } }));
      }
      const t = made[1].meta.lastUpdated;
      assert.ok(t > made[0].meta.lastUpdated && t < made[2].meta.lastUpdated, `lastUpdated not increasing: ${made.map((m) => m.meta.lastUpdated)}`);
      const lu = (v) => q`/Organization?_tag=${`${TAGS}|lu`}&_lastUpdated=${v}`;
      await expectCases(sys, [
        [lu(`ge${t}`), ['LU1', 'LU2']],
        [lu(`gt${t}`), ['LU2']],
        [lu(`le${t}`), ['LU0', 'LU1']],
        [lu(`lt${t}`), ['LU0']],
        [lu(t), ['LU1']],
        [lu(`ne${t}`), ['LU0', 'LU2']],
        [lu(`ge${made[0].meta.lastUpdated.slice(0, 4)}`), ['LU0', 'LU1', 'LU2']],
        [lu('lt2000'), []],
      ]);
      const order = entriesOf(await search(sys, q`/Organization?_tag=${`${TAGS}|lu`}&_sort=-_lastUpdated`), 'match').map(W.keyOf);
      assert.deepEqual(order, ['LU2', 'LU1', 'LU0'], '_sort=-_lastUpdated');
      await expectError(sys, lu('soon'), 400, 'invalid', 'invalid_parameter', /not a date/);
    });

    it('_tag, _profile (with :below/:above), _security', async () => {
      await expectCases(sys, [
        [q`/Observation?_tag=${`${TAGS}|alpha`}`, ['g1', 'g3']],
        [q`/Observation?_tag=alpha`, ['g1', 'g3']],
        [q`/Observation?_tag=${`${TAGS}|alpha,${TAGS}|beta`}`, ['g1', 'g3', 'g5']],
        [q`/Observation?_tag:not=${`${TAGS}|alpha`}`, obsKeys((o) => !(o.tags || []).includes('alpha'))],
        [q`/Observation?_tag=${`${TAGS}|alpha`}&subject=${W.ref('A')}`, ['g1']],
        [q`/Observation?_profile=${PROFILE}`, ['g1']],
        [q`/Observation?_profile:below=${'http://example.org/fhir/StructureDefinition/'}`, ['g1']],
        [q`/Observation?_profile:above=${`${PROFILE}/extra`}`, ['g1']],
        [q`/Observation?_profile=${'http://example.org/fhir/StructureDefinition/'}`, []],
        [q`/Observation?_security=${`${CONFIDENTIALITY}|R`}`, ['g3']],
        [q`/Observation?_security:missing=false`, ['g3']],
      ]);
    });

    it('_sort by date ascending/descending, by _id, by a quantity, multi-key', async () => {
      const glucose = OBS.filter((o) => codeOf(o) === '2339-0');
      const byDate = [...glucose].sort((x, y) => Date.parse(x.date) - Date.parse(y.date)).map((o) => o.key);
      const order = async (path) => entriesOf(await search(sys, path), 'match').map(W.keyOf);
      assert.deepEqual(await order(q`/Observation?code=${'2339-0'}&_sort=date`), byDate, '_sort=date');
      assert.deepEqual(await order(q`/Observation?code=${'2339-0'}&_sort=-date`), [...byDate].reverse(), '_sort=-date');
      const byId = [...glucose].sort((x, y) => (W.id(x.key) < W.id(y.key) ? -1 : 1)).map((o) => o.key);
      assert.deepEqual(await order(q`/Observation?code=${'2339-0'}&_sort=_id`), byId, '_sort=_id');
      assert.deepEqual(await order(q`/Observation?code=${'2339-0'}&_sort=-_id`), [...byId].reverse(), '_sort=-_id');
      assert.deepEqual(await order(q`/Observation?code=${'4548-4'}&_sort=-value-quantity`), ['h4', 'h3', 'h2', 'h1'], '_sort=-value-quantity');
      // A's observations by code (as text) ascending, then newest first.
      const aObs = OBS.filter((o) => o.subject === 'A');
      const multi = [...aObs].sort((x, y) => (codeOf(x) < codeOf(y) ? -1 : codeOf(x) > codeOf(y) ? 1 : Date.parse(y.date) - Date.parse(x.date))).map((o) => o.key);
      assert.deepEqual(multi, ['g2', 'g1', 'w4', 'w3', 'h1', 'r1', 'e1'], 'hand-computed order');
      assert.deepEqual(await order(q`/Observation?subject=${W.ref('A')}&_sort=${'code,-date'}`), multi, '_sort=code,-date');
      // Missing values sort last either way.
      const ofD = OBS.filter((o) => o.subject === 'D');
      const asc = await order(q`/Observation?subject=${W.ref('D')}&_sort=value-quantity`);
      assert.equal(asc[asc.length - 1], 'n1', `n1 has no value: last with _sort=value-quantity: ${asc}`);
      const desc = await order(q`/Observation?subject=${W.ref('D')}&_sort=-value-quantity`);
      assert.equal(desc[desc.length - 1], 'n1', `n1 has no value: last with _sort=-value-quantity: ${desc}`);
      assert.equal(asc.length, ofD.length);
      await expectError(sys, q`/Observation?_sort=nonsense`, 400, 'invalid', 'invalid_parameter', /unknown parameter/);
      await expectError(sys, q`/Observation?_sort=${'code,date,status,_id,subject'}`, 400, 'too-costly', 'too_costly');
    });
  });

  // -------------------------------------------------------------------------
  describe('paging and cursors', () => {
    const glucose = obsKeys((o) => codeOf(o) === '2339-0'); // 7

    it('_count=2: following next visits every match exactly once; previous goes back', async () => {
      const { pages, entries } = await allPages(sys, q`/Observation?code=${'2339-0'}&_count=2&_total=accurate`);
      assert.deepEqual(pages.map((p) => entriesOf(p, 'match').length), [2, 2, 2, 1]);
      const got = entries.map(W.keyOf);
      assert.equal(new Set(got).size, got.length, `duplicates across pages: ${got}`);
      assert.deepEqual(sorted(got), sorted(glucose));
      for (const p of pages) assert.equal(p.total, glucose.length, 'total on every page');
      assert.equal(link(pages[0], 'previous'), undefined, 'previous link on the first page');
      for (const p of pages.slice(1)) assert.ok(link(p, 'previous'), 'no previous link after the first page');
      // The previous link of page 3 gives page 2 again.
      const back = await search(sys, linkPath(link(pages[2], 'previous')));
      assert.deepEqual(entriesOf(back, 'match').map(W.keyOf), entriesOf(pages[1], 'match').map(W.keyOf));
      // next/previous carry the cursor only; self carries the query.
      const next = new URL(nextLink(pages[0]));
      assert.deepEqual([...next.searchParams.keys()], ['_cursor'], `next link: ${next}`);
      assert.equal(next.pathname, '/Observation');
      const self = new URL(link(pages[0], 'self'));
      assert.equal(self.searchParams.get('code'), '2339-0');
      assert.equal(self.searchParams.get('_cursor'), null);
    });

    it('paging keeps the _sort order across pages', async () => {
      const byDate = OBS.filter((o) => codeOf(o) === '2339-0').sort((x, y) => Date.parse(y.date) - Date.parse(x.date)).map((o) => o.key);
      const { entries } = await allPages(sys, q`/Observation?code=${'2339-0'}&_sort=-date&_count=3`);
      assert.deepEqual(entries.map(W.keyOf), byDate);
    });

    it('the cursor is opaque', async () => {
      const b = await search(sys, q`/Observation?code=${'2339-0'}&_count=2`);
      const cur = cursorOf(nextLink(b));
      assert.ok(cur && cur.length >= 16, `cursor: ${cur}`);
      for (const enc of ['base64url', 'base64', 'hex']) {
        const dec = Buffer.from(cur, enc).toString('latin1');
        assert.ok(!/2339|code|Observation|"[a-z]":/.test(dec), `cursor decodes (${enc}) to readable state: ${JSON.stringify(dec)}`);
      }
    });

    it('a tampered cursor -> 400, never data', async () => {
      const b = await search(sys, q`/Observation?code=${'2339-0'}&_count=2`);
      const next = linkPath(nextLink(b));
      const cur = cursorOf(next);
      for (const [what, bad] of [['one char changed', flipChar(cur)], ['truncated', cur.slice(0, -4)], ['garbage', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'], ['not base64', '!!!!']]) {
        const r = await sys.get(withCursor(next, bad));
        assertOutcome(r, 400, 'invalid', 'invalid_parameter', `cursor ${what}`);
        assert.match(r.json.issue[0].diagnostics, /_cursor/);
      }
      assertStatus(await sys.get(next), 200, 'the untampered cursor still works');
    });

    it('a cursor replayed by another principal -> 400, never data', async () => {
      const other = client(srv, mintToken(srv, { sub: 'someone-else', scope: 'system/*.cruds' }));
      const b = await search(sys, q`/Observation?code=${'2339-0'}&_count=2`);
      const r = await other.get(linkPath(nextLink(b)));
      assertOutcome(r, 400, 'invalid', 'invalid_parameter', 'cursor of seeder used by someone-else');
      assert.match(r.json.issue[0].diagnostics, /principal/);
    });

    it('a cursor used on another path -> 400', async () => {
      const b = await search(sys, q`/Observation?code=${'2339-0'}&_count=2`);
      const cur = cursorOf(nextLink(b));
      for (const path of ['/Condition', `/Patient/${W.id('A')}/Observation`]) {
        const r = await sys.get(`${path}?_cursor=${cur}`);
        assertOutcome(r, 400, 'invalid', 'invalid_parameter', `cursor of /Observation on ${path}`);
        assert.match(r.json.issue[0].diagnostics, /another query/);
      }
    });

    it('_count: 0 gives the count only; above max_count is capped; invalid -> 400', async () => {
      const b = await search(sys, q`/Observation?code=${'2339-0'}&_count=0`);
      assert.equal(b.total, glucose.length);
      assert.equal(entriesOf(b, 'match').length, 0);
      assert.equal(nextLink(b), undefined);
      const big = await search(sys, q`/Observation?_count=100000`);
      assert.equal(entriesOf(big, 'match').length, OBS.length, 'every Observation on one page (max_count 500)');
      for (const v of ['-1', 'abc', '1.5', '']) {
        await expectError(sys, q`/Observation?_count=${v}`, 400, 'invalid', 'invalid_parameter', /_count/);
      }
    });

    it('_total: none by default; accurate and estimate give the total', async () => {
      const none = await search(sys, q`/Observation?code=${'2339-0'}&_count=2`);
      assert.equal(none.total, undefined, 'total without _total');
      for (const t of ['accurate', 'estimate']) {
        const b = await search(sys, q`/Observation?code=${'2339-0'}&_count=2&_total=${t}`);
        assert.equal(b.total, glucose.length, `_total=${t}`);
      }
      assert.equal((await search(sys, q`/Observation?code=${'2339-0'}&_total=none`)).total, undefined);
      await expectError(sys, q`/Observation?_total=maybe`, 400, 'invalid', 'invalid_parameter');
    });
  });

  // -------------------------------------------------------------------------
  describe('_include, _revinclude, _summary, _elements, POST _search', () => {
    const modes = (b) => sorted((b.entry || []).map((e) => `${e.search.mode}:${W.keyOf(e)}`));

    it('_include: each referenced resource once, search.mode include, not counted in total', async () => {
      const hr = obsKeys((o) => o.code === 'hr'); // r1 (A, performer B), r2 (B), r3 (C), e1 (A)
      const b = await search(sys, q`/Observation?code=${'8867-4'}&_include=${'Observation:subject'}&_total=accurate`);
      assert.deepEqual(modes(b), sorted([...hr.map((k) => `match:${k}`), 'include:A', 'include:B', 'include:C']));
      assert.equal(b.total, hr.length);
      const typed = await search(sys, q`/Observation?code=${'8867-4'}&_include=${'Observation:subject:Patient'}`);
      assert.deepEqual(modes(typed), modes(b));
      const perf = await search(sys, q`/Observation?code=${'8867-4'}&_include=${'Observation:performer'}`);
      assert.deepEqual(entriesOf(perf, 'include').map(W.keyOf), ['B']);
      const all = await search(sys, q`/Observation?_id=${W.id('e1')}&_include=*`);
      assert.deepEqual(modes(all), sorted(['match:e1', 'include:A', 'include:EA']));
      const none = await search(sys, q`/Observation?code=${'no-such-code'}&_include=${'Observation:subject'}`);
      assert.equal(none.entry, undefined);
    });

    it('_include:iterate follows the included resources; without :iterate another source type is refused', async () => {
      const b = await search(sys, q`/Observation?_id=${W.id('e1')}&_include=${'Observation:encounter'}&_include:iterate=${'Encounter:subject'}`);
      assert.deepEqual(modes(b), sorted(['match:e1', 'include:EA', 'include:A']));
      const flat = await search(sys, q`/Observation?_id=${W.id('e1')}&_include=${'Observation:encounter'}`);
      assert.deepEqual(modes(flat), sorted(['match:e1', 'include:EA']));
      await expectError(sys, q`/Observation?_id=${W.id('e1')}&_include=${'Encounter:subject'}`, 400, 'invalid', 'invalid_parameter', /source type/);
      await expectError(sys, q`/Observation?_include=${'Observation:code'}`, 400, 'invalid', 'invalid_parameter', /not a reference/);
      await expectError(sys, q`/Observation?_include=${'Observation'}`, 400, 'invalid', 'invalid_parameter');
      await expectError(sys, q`/Observation?_include=${'Nothing:subject'}`, 400, 'invalid', 'invalid_parameter');
    });

    it('_revinclude and _revinclude:iterate', async () => {
      const b = await search(sys, q`/Patient?_id=${W.id('A')}&_revinclude=${'Observation:subject'}`);
      assert.deepEqual(modes(b), sorted(['match:A', ...obsKeys((o) => o.subject === 'A').map((k) => `include:${k}`)]));
      const it2 = await search(sys, q`/Patient?_id=${W.id('A')}&_revinclude=${'Encounter:subject'}&_revinclude:iterate=${'Observation:encounter'}`);
      assert.deepEqual(modes(it2), sorted(['match:A', 'include:EA', 'include:e1', 'include:chol']));
      const both = await search(sys, q`/Patient?_id=${W.id('C')}&_revinclude=${'Condition:subject'}&_include=${'Patient:organization'}`);
      assert.deepEqual(modes(both), sorted(['match:C', 'include:CC']));
      await expectError(sys, q`/Patient?_revinclude=*`, 400, 'invalid', 'invalid_parameter');
    });

    it('_summary=count and _count=0: total only', async () => {
      const lab = obsKeys((o) => o.code && CODES[o.code].cat === 'laboratory');
      const b = await search(sys, q`/Observation?category=laboratory&_summary=count`);
      assert.equal(b.total, lab.length);
      assert.equal(b.entry, undefined);
      await expectError(sys, q`/Observation?_summary=everything`, 400, 'invalid', 'invalid_parameter');
    });

    it('_summary=true and _elements subset the resources and tag them SUBSETTED', async () => {
      const isSubsetted = (r) => (r.meta && r.meta.tag || []).some((t) => t.code === 'SUBSETTED');
      const full = entriesOf(await search(sys, q`/Observation?_id=${W.id('e1')}`), 'match')[0].resource;
      assert.ok(full.note, 'e1 has a note');
      assert.ok(!isSubsetted(full), 'a full resource is tagged SUBSETTED');
      const sum = entriesOf(await search(sys, q`/Observation?_id=${W.id('e1')}&_summary=true`), 'match')[0].resource;
      assert.equal(sum.note, undefined, '_summary=true keeps note (not a summary element)');
      for (const k of ['id', 'status', 'code', 'subject', 'effectiveDateTime', 'valueQuantity']) assert.ok(sum[k] !== undefined, `_summary=true dropped ${k}`);
      assert.ok(isSubsetted(sum), '_summary=true without SUBSETTED');
      const el = entriesOf(await search(sys, q`/Observation?_id=${W.id('e1')}&_elements=${'code,value'}`), 'match')[0].resource;
      for (const k of ['code', 'valueQuantity']) assert.ok(el[k] !== undefined, `_elements dropped ${k}`);
      // Mandatory elements (status) may be kept (R4: SHOULD); nothing else may.
      for (const k of ['subject', 'effectiveDateTime', 'note', 'category', 'encounter']) assert.equal(el[k], undefined, `_elements kept ${k}`);
      assert.ok(isSubsetted(el), '_elements without SUBSETTED');
      const data = entriesOf(await search(sys, q`/Observation?_id=${W.id('e1')}&_summary=false`), 'match')[0].resource;
      assert.deepEqual(data, full, '_summary=false changed the resource');
    });

    it('_summary=text keeps the top-level mandatory elements (R4 §3.1.1.5.8)', async () => {
      const r = entriesOf(await search(sys, q`/Observation?_id=${W.id('e1')}&_summary=text`), 'match')[0].resource;
      assert.equal(r.status, 'final');
      assert.ok(r.code, '_summary=text dropped Observation.code (1..1)');
    });

    it('POST _search (form body) gives the same answer as GET, and its links work', async () => {
      const params = `code=2339-0&_sort=date&_total=accurate`;
      const g = await search(sys, `/Observation?${params}`);
      const p = await sys.post('/Observation/_search', params, { contentType: 'application/x-www-form-urlencoded' });
      assertStatus(p, 200, 'POST _search');
      assert.equal(p.json.type, 'searchset');
      assert.deepEqual(entriesOf(p.json, 'match').map(W.keyOf), entriesOf(g, 'match').map(W.keyOf));
      assert.equal(p.json.total, g.total);
      // URL and body parameters combine; the next link is a GET.
      const paged = await sys.post('/Observation/_search?_count=2', 'code=2339-0', { contentType: 'application/x-www-form-urlencoded' });
      assertStatus(paged, 200);
      const rest = await allPages(sys, linkPath(nextLink(paged.json)));
      const got = [...entriesOf(paged.json, 'match'), ...rest.entries].map(W.keyOf);
      assert.deepEqual(sorted(got), sorted(obsKeys((o) => codeOf(o) === '2339-0')));
      const bad = await sys.post('/Observation/_search', { code: '2339-0' });
      assertOutcome(bad, 415, 'not-supported', 'unsupported_media_type', 'POST _search with a JSON body');
      assertOutcome(await sys.get('/Observation/_search'), 405, 'not-supported', 'method_not_allowed', 'GET _search');
    });
  });

  // -------------------------------------------------------------------------
  describe('updates and deletes', () => {
    it('an update re-indexes (blind and plain values); a delete removes from matches, chains, _has and includes', async () => {
      const t = await W.create(sys, 'T', { resourceType: 'Patient', name: [{ family: 'Transient' }], identifier: [{ system: MRN, value: 'MRN-T-1' }] });
      const o1 = await W.create(sys, 'TO1', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: LOCAL, code: 'TMP-1' }] }, subject: { reference: W.ref('T') } });
      const o2 = await W.create(sys, 'TO2', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: LOCAL, code: 'TMP-2' }] }, subject: { reference: W.ref('T') } });
      await expectMatches(sys, q`/Patient?name=${'transient'}`, ['T']);
      await expectMatches(sys, q`/Patient?_has:Observation:patient:code=${'TMP-1'}`, ['T']);
      // Update: the old values are gone from the index, the new ones are there.
      const up = await sys.put(`/Patient/${t.id}`, { resourceType: 'Patient', id: t.id, name: [{ family: 'Renamed' }], identifier: [{ system: MRN, value: 'MRN-T-2' }] });
      assertStatus(up, 200, 'update T');
      const up2 = await sys.put(`/Observation/${o2.id}`, { ...o2, meta: undefined, code: { coding: [{ system: LOCAL, code: 'TMP-3' }] } });
      assertStatus(up2, 200, 'update TO2');
      await expectCases(sys, [
        [q`/Patient?name=${'transient'}`, []],
        [q`/Patient?family:exact=${'Transient'}`, []],
        [q`/Patient?identifier=${'MRN-T-1'}`, []],
        [q`/Patient?name=${'renamed'}`, ['T']],
        [q`/Patient?identifier=${`${MRN}|MRN-T-2`}`, ['T']],
        [q`/Observation?code=${'TMP-2'}`, []],
        [q`/Observation?code=${'TMP-3'}`, ['TO2']],
        [q`/Observation?subject:Patient.name=${'renamed'}`, ['TO1', 'TO2']],
      ]);
      // Delete an Observation: gone from matches, _has and _revinclude.
      assertStatus(await sys.del(`/Observation/${o1.id}`), 204, 'delete TO1');
      await expectCases(sys, [
        [q`/Observation?code=${'TMP-1'}`, []],
        [q`/Patient?_has:Observation:patient:code=${'TMP-1'}`, []],
      ]);
      const rev = await search(sys, q`/Patient?_id=${t.id}&_revinclude=${'Observation:subject'}`);
      assert.deepEqual(sorted((rev.entry || []).map(W.keyOf)), ['T', 'TO2']);
      // Delete the Patient: gone from matches, chains and _include.
      assertStatus(await sys.del(`/Patient/${t.id}`), 204, 'delete T');
      await expectCases(sys, [
        [q`/Patient?name=${'renamed'}`, []],
        [q`/Patient?_id=${t.id}`, []],
        [q`/Observation?subject:Patient.name=${'renamed'}`, []],
        [q`/Observation?subject=${W.ref('T')}`, ['TO2']], // the reference itself remains
      ]);
      const inc = await search(sys, q`/Observation?_id=${o2.id}&_include=${'Observation:subject'}`);
      assert.deepEqual((inc.entry || []).map(W.keyOf), ['TO2'], 'a deleted Patient included');
      assertStatus(await sys.del(`/Observation/${o2.id}`), 204, 'delete TO2');
    });
  });

  // -------------------------------------------------------------------------
  describe('unknown parameters and errors', () => {
    it('lenient (default): unknown parameters are ignored and reported in an outcome entry', async () => {
      const b = await search(sys, q`/Observation?code=${'8867-4'}&bogus=1&other-bogus=2`);
      assert.deepEqual(sorted(entriesOf(b, 'match').map(W.keyOf)), sorted(obsKeys((o) => o.code === 'hr')));
      const outcomes = outcomeEntries(b);
      assert.equal(outcomes.length, 1, `one outcome entry: ${JSON.stringify(b.entry)}`);
      assert.equal(outcomes[0].resourceType, 'OperationOutcome');
      const diags = outcomes[0].issue.map((i) => i.diagnostics).join('\n');
      assert.match(diags, /bogus/);
      assert.match(diags, /other-bogus/);
      for (const i of outcomes[0].issue) assert.equal(i.severity, 'warning');
      const self = new URL(link(b, 'self'));
      assert.equal(self.searchParams.get('bogus'), null, 'an ignored parameter in the self link');
    });

    it('lenient: a known parameter with an unsupported modifier is still refused (never widened)', async () => {
      const m = await sys.get(q`/Observation?code:below=${'8867'}`);
      assertOutcome(m, 501, 'not-supported', 'not_implemented', 'lenient, unsupported modifier');
      assert.match(m.json.issue[0].diagnostics, /code:below/);
    });

    it('Prefer: handling=strict: unknown parameter -> 400, unsupported modifier -> 501', async () => {
      const strict = { headers: { Prefer: 'handling=strict' } };
      const r = await sys.get(q`/Observation?code=${'8867-4'}&bogus=1`, strict);
      assertOutcome(r, 400, 'invalid', 'invalid_parameter', 'strict, unknown parameter');
      assert.match(r.json.issue[0].diagnostics, /bogus/);
      const m = await sys.get(q`/Observation?code:below=${'8867'}`, strict);
      assertOutcome(m, 501, 'not-supported', 'not_implemented', 'strict, unsupported modifier');
      assertStatus(await sys.get(q`/Observation?code=${'8867-4'}`, strict), 200, 'strict, known parameters');
    });

    it('errors: unknown type, malformed query, empty value', async () => {
      assertOutcome(await sys.get('/Nothing?name=x'), 404, 'not-supported', 'unknown_resource_type');
      await expectError(sys, '/Observation?code=%zz', 400, 'invalid', 'invalid_parameter', /malformed/);
      await expectError(sys, '/Observation?code=', 400, 'invalid', 'invalid_parameter', /empty/);
    });
  });

  // -------------------------------------------------------------------------
  describe('patient-scoped tokens see only their compartment', () => {
    let pa; // patient/*.rs, patient A
    let pb; // patient/*.rs, patient B
    const aObs = obsKeys(inCompartment('A')); // g1 g2 h1 r1 e1 w3 w4
    const bObs = obsKeys(inCompartment('B')); // g3 h2 r1 r2 chol
    before(() => {
      pa = client(srv, mintToken(srv, { sub: 'patient-a', scope: 'patient/*.rs', patient: W.id('A') }));
      pb = client(srv, mintToken(srv, { sub: 'patient-b', scope: 'patient/*.rs', patient: W.id('B') }));
    });

    it('matches, _total and _summary=count count only the own compartment', async () => {
      const b = await expectMatches(pa, q`/Observation?_total=accurate&_count=100`, aObs);
      assert.equal(b.total, aObs.length);
      const n = await search(pa, q`/Observation?_summary=count`);
      assert.equal(n.total, aObs.length);
      const bb = await expectMatches(pb, q`/Observation?_total=accurate`, bObs);
      assert.equal(bb.total, bObs.length);
      const p = await expectMatches(pa, q`/Patient?_total=accurate`, ['A']);
      assert.equal(p.total, 1);
      const c = await expectMatches(pa, q`/Condition?_total=accurate`, ['CA']);
      assert.equal(c.total, 1);
      // Reference data (Organization) is not confined.
      await expectMatches(pa, q`/Organization?name=${'springfield'}`, ['O2']);
    });

    it("searching for another patient's data directly finds nothing", async () => {
      for (const path of [
        q`/Observation?patient=${W.id('B')}&_total=accurate`,
        q`/Observation?subject=${W.ref('B')}&_total=accurate`,
        q`/Patient?name=${'Zzmarker'}&_total=accurate`,
        q`/Patient?_id=${W.id('B')}&_total=accurate`,
        q`/Patient?identifier=${`${MRN}|MRN-ZZ-7702`}&_total=accurate`,
        q`/Condition?subject:identifier=${`${MRN}|MRN-ZZ-7702`}&_total=accurate`,
        q`/Observation?code=${'2093-3'}&_total=accurate`,
      ]) {
        const b = await expectMatches(pa, path, [], 'patient A');
        assert.equal(b.total, 0, `total of ${readable(path)}`);
      }
    });

    it("chains never look into another patient's compartment", async () => {
      // r1 is A's own (subject A) and readable by A; its performer is B.
      await expectMatches(pa, q`/Observation?_id=${W.id('r1')}`, ['r1']);
      await expectMatches(sys, q`/Observation?performer:Patient.family=${'Zzmarker'}`, ['r1'], 'system token');
      await expectMatches(pa, q`/Observation?performer:Patient.family=${'Zzmarker'}`, [], 'patient A');
      await expectMatches(pa, q`/Observation?performer:Patient.birthdate=${'1975-11-02'}`, [], 'patient A');
      await expectMatches(pa, q`/Observation?subject:Patient.name=${'Zzmarker'}`, [], 'patient A');
      await expectMatches(pa, q`/Observation?subject:Patient.name=${'muller'}`, obsKeys((o) => o.subject === 'A'), 'patient A, own name');
    });

    it('_has never counts resources outside the compartment', async () => {
      await expectMatches(pa, q`/Patient?_has:Observation:patient:code=${'8867-4'}`, ['A']);
      await expectMatches(pa, q`/Patient?_has:Observation:patient:code=${'2093-3'}`, []);
      // EA is A's encounter; the only cholesterol recorded in it is B's.
      await expectMatches(pa, q`/Encounter?_id=${W.id('EA')}`, ['EA']);
      await expectMatches(pa, q`/Encounter?_has:Observation:encounter:code=${'2093-3'}`, [], 'patient A');
      await expectMatches(pa, q`/Encounter?_has:Observation:encounter:code=${'8867-4'}`, ['EA'], 'patient A, own observation');
      // Organizations are shared, but whether B (managed by O1) is called Zzmarker is not.
      await expectMatches(pa, q`/Organization?_has:Patient:organization:name=${'Zzmarker'}`, [], 'patient A');
      await expectMatches(pa, q`/Organization?_has:Patient:organization:name=${'muller'}`, ['O2'], 'patient A, own record');
    });

    it('_include and _revinclude add nothing from another compartment', async () => {
      const inc = await search(pa, q`/Observation?_id=${W.id('r1')}&_include=${'Observation:performer'}`);
      assert.deepEqual(sorted((inc.entry || []).map(W.keyOf)), ['r1'], 'B included through r1.performer');
      const sysInc = await search(sys, q`/Observation?_id=${W.id('r1')}&_include=${'Observation:performer'}`);
      assert.deepEqual(entriesOf(sysInc, 'include').map(W.keyOf), ['B'], 'system token (control)');
      const all = await search(pa, q`/Observation?_count=100&_include=${'Observation:subject'}&_include=${'Observation:performer'}&_include=${'Observation:encounter'}`);
      assert.deepEqual(sorted(entriesOf(all, 'include').map(W.keyOf)), ['A', 'EA']);
      const rev = await search(pa, q`/Encounter?_id=${W.id('EA')}&_revinclude=${'Observation:encounter'}`);
      assert.deepEqual(sorted((rev.entry || []).map(W.keyOf)), sorted(['EA', 'e1']), "B's cholesterol in A's encounter");
      const org = await search(pa, q`/Organization?_id=${W.id('O1')}&_revinclude=${'Patient:organization'}`);
      assert.deepEqual((org.entry || []).map(W.keyOf), ['O1'], 'B revincluded through managingOrganization');
      const sysOrg = await search(sys, q`/Organization?_id=${W.id('O1')}&_revinclude=${'Patient:organization'}`);
      assert.deepEqual(entriesOf(sysOrg, 'include').map(W.keyOf), ['B'], 'system token (control)');
      const star = await search(pa, q`/Observation?_id=${W.id('r1')}&_include=*`);
      assert.deepEqual(sorted((star.entry || []).map(W.keyOf)), ['A', 'r1'], '_include=* from r1');
      const org2 = await search(pa, q`/Patient?_include=${'Patient:organization'}`);
      assert.deepEqual(sorted((org2.entry || []).map(W.keyOf)), ['A', 'O2'], 'shared reference data is included');
      const iter = await search(pa, q`/Patient?_revinclude=${'Encounter:subject'}&_revinclude:iterate=${'Observation:encounter'}`);
      assert.deepEqual(sorted((iter.entry || []).map(W.keyOf)), sorted(['A', 'EA', 'e1']));
    });

    it('an update that moves a resource out of the compartment hides it at once', async () => {
      const o = await W.create(sys, 'MV', { resourceType: 'Observation', status: 'final', code: { coding: [{ system: LOCAL, code: 'MOVE-1' }] }, subject: { reference: W.ref('A') } });
      await expectMatches(pa, q`/Observation?code=${'MOVE-1'}`, ['MV']);
      const up = await sys.put(`/Observation/${o.id}`, { ...o, meta: undefined, subject: { reference: W.ref('C') } });
      assertStatus(up, 200, 'move MV to C');
      const b = await expectMatches(pa, q`/Observation?code=${'MOVE-1'}&_total=accurate`, []);
      assert.equal(b.total, 0);
      await expectMatches(pa, q`/Patient?_has:Observation:patient:code=${'MOVE-1'}`, []);
      await expectMatches(sys, q`/Patient?_has:Observation:patient:code=${'MOVE-1'}`, ['C']);
      assertStatus(await sys.del(`/Observation/${o.id}`), 204);
    });

    it("compartment search of another patient returns nothing", async () => {
      const b = await expectMatches(pa, q`/Patient/${W.id('B')}/Observation?_total=accurate`, []);
      assert.equal(b.total, 0);
      await expectMatches(pa, q`/Patient/${W.id('B')}/Encounter`, []);
      await expectMatches(pa, q`/Patient/${W.id('A')}/Observation`, aObs);
    });

    it('_sort and paging return only the own compartment', async () => {
      const byDate = OBS.filter(inCompartment('A')).sort((x, y) => Date.parse(y.date) - Date.parse(x.date)).map((o) => o.key);
      const b = await search(pa, q`/Observation?_sort=-date&_count=100`);
      assert.deepEqual(entriesOf(b, 'match').map(W.keyOf), byDate);
      const { entries } = await allPages(pa, q`/Observation?_sort=${'code,-date'}&_count=2`);
      const got = entries.map(W.keyOf);
      assert.equal(new Set(got).size, got.length);
      assert.deepEqual(sorted(got), sorted(aObs));
    });

    it('a cursor is bound to the patient as well as the subject', async () => {
      const b = await search(pa, q`/Observation?_count=2`);
      const next = linkPath(nextLink(b));
      assertStatus(await pa.get(next), 200, 'own cursor');
      const samesub = client(srv, mintToken(srv, { sub: 'patient-a', scope: 'patient/*.rs', patient: W.id('B') }));
      for (const [who, c] of [['patient B', pb], ['same sub, patient B', samesub], ['system token', sys]]) {
        const r = await c.get(next);
        assertOutcome(r, 400, 'invalid', 'invalid_parameter', `cursor of patient A replayed by ${who}`);
      }
    });

    it('a type the token cannot read: search -> 403, _has on it -> 403, _revinclude of it adds nothing', async () => {
      const pOnly = client(srv, mintToken(srv, { sub: 'patient-a-only', scope: 'patient/Patient.rs', patient: W.id('A') }));
      assertOutcome(await pOnly.get('/Observation'), 403, 'forbidden', 'insufficient_scope');
      const h = await pOnly.get(q`/Patient?_has:Observation:patient:code=${'8867-4'}`);
      assertOutcome(h, 403, 'forbidden', ['forbidden', 'insufficient_scope'], '_has on an unreadable type');
      const c = await pOnly.get(q`/Observation?subject:Patient.name=${'muller'}`);
      assertOutcome(c, 403, 'forbidden', ['forbidden', 'insufficient_scope'], 'search of an unreadable type');
      const r = await search(pOnly, q`/Patient?_revinclude=${'Observation:subject'}`);
      assert.deepEqual((r.entry || []).map(W.keyOf), ['A']);
    });
  });

  // -------------------------------------------------------------------------
  describe('[search] limits (small limits server)', () => {
    it('default_count and default_total apply; _total=none turns the total off; _count is capped by max_count', async () => {
      const b = await search(limSys, q`/Observation?code=${'8867-4'}`);
      assert.equal(entriesOf(b, 'match').length, 2, 'default_count = 2');
      assert.equal(b.total, 7, 'default_total = accurate');
      assert.equal((await search(limSys, q`/Observation?code=${'8867-4'}&_total=none`)).total, undefined);
      const big = await search(limSys, q`/Observation?code=${'8867-4'}&_count=100`);
      assert.equal(entriesOf(big, 'match').length, 5, 'max_count = 5');
      assert.equal(nextLink(big), undefined, 'a next link beyond max_window = 5');
    });

    it('max_params, max_values, max_includes -> 400 too-costly', async () => {
      await expectMatches(limSys, q`/Observation?code=${'8867-4'}&status=final&subject=${L.ref('L1')}&_count=5`, ['LH0', 'LH2', 'LH4', 'LH6'], '', L); // 3 parameters
      await expectError(limSys, q`/Observation?code=${'8867-4'}&status=final&subject=${L.ref('L1')}&_id=x`, 400, 'too-costly', 'too_costly', /search parameters/);
      const two = await search(limSys, q`/Observation?code=${'8867-4,1234-5'}`);
      assert.equal(two.total, 7);
      await expectError(limSys, q`/Observation?code=${'8867-4,1234-5,9999-9'}`, 400, 'too-costly', 'too_costly', /values/);
      await expectError(limSys, q`/Observation?_include=${'Observation:subject'}&_include=${'Observation:encounter'}`, 400, 'too-costly', 'too_costly', /_include/);
    });

    it('max_included caps the resources added by _include', async () => {
      const b = await search(limSys, q`/Observation?code=${'8867-4'}&_count=5&_include=${'Observation:subject'}`);
      assert.equal(entriesOf(b, 'match').length, 5);
      assert.equal(entriesOf(b, 'include').length, 1, 'max_included = 1 (the page references L1 and L2)');
    });

    it('max_window: the last page inside the window is shortened; a _count past it -> 400 too-costly', async () => {
      const p1 = await search(limSys, q`/Observation?code=${'8867-4'}&_count=2`);
      const p2 = await search(limSys, linkPath(nextLink(p1)));
      const p3 = await search(limSys, linkPath(nextLink(p2)));
      const seen = [...entriesOf(p1, 'match'), ...entriesOf(p2, 'match'), ...entriesOf(p3, 'match')].map(L.keyOf);
      assert.equal(new Set(seen).size, 5, 'pages 1-3 hold results 1-5 (page 3 has one entry)');
      assert.equal(entriesOf(p3, 'match').length, 1);
      assert.equal(nextLink(p3), undefined, 'no link past the window');
      // A client cannot ask past the window with the server's own links; the
      // only way is a query whose first page already ends beyond it.
      const big = await search(limSys, q`/Observation?code=${'8867-4'}&_count=5`);
      assert.equal(entriesOf(big, 'match').length, 5);
      assert.equal(nextLink(big), undefined);
    });

    it('max_chain_depth = 2: a two-level chain works, three levels -> 400 too-costly', async () => {
      await expectMatches(limSys, q`/Observation?encounter:Encounter.patient.family=${'deep'}`, ['LH0'], '', L);
      await expectMatches(limSys, q`/Observation?encounter:Encounter.patient.family=${'shallow'}`, [], '', L);
      await expectMatches(limSys, q`/Patient?_has:Encounter:patient:_has:Observation:encounter:code=${'8867-4'}`, ['L1'], '', L);
      await expectError(limSys, q`/Observation?encounter:Encounter.patient.organization.name=${'deep'}`, 400, 'too-costly', 'too_costly', /chains deeper than 2/);
    });

    it('every response carries the security headers and the FHIR JSON Content-Type', () => {
      assertAllResponses(srv);
      assertAllResponses(lim);
    });

    // Last: the cursor taken in before() has outlived cursor_lifetime_seconds = 10.
    it('an expired cursor -> 400', async () => {
      const wait = expiring.at + 12000 - Date.now();
      if (wait > 0) await sleep(wait);
      const r = await limSys.get(expiring.path);
      assertOutcome(r, 400, 'invalid', 'invalid_parameter', 'cursor older than cursor_lifetime_seconds');
      assert.match(r.json.issue[0].diagnostics, /expired/);
    });
  });
});
