// Seeded synthetic population in the shape Synthea writes: FHIR R4 transaction Bundles, one per
// patient, for loading and search benchmarks (bench/search-run) and hand-computed test answers.
// No npm dependencies; the same --seed gives byte-identical output, and patient n is the same
// whatever --patients is (each patient draws from its own generator, seeded from (seed, n)).
//
// usage: node tools/synth.mjs --seed 42 --patients N [--format transaction|ndjson] [--out DIR]
//                             [--answers FILE]
//
// transaction (default): DIR/bundle-00000.json creates 20 Practitioners and 5 Organizations
//   (POST with ifNoneExist on their identifier); DIR/bundle-00001.json .. one per patient:
//   Patient, 2-6 Encounters, 10-40 Observations, 1-4 Conditions, POSTed with fullUrl
//   urn:uuid:... and urn:uuid references between them; Practitioner and Organization are
//   referenced conditionally, as Synthea does:
//     Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|<npi>
//     Organization?identifier=https://github.com/synthetichealth/synthea|<id>
// ndjson: DIR/resources.ndjson, one resource a line, practitioners and organizations first,
//   each with its id (the uuid of its fullUrl) and literal references (Patient/<id>, ...).
// --answers FILE: facts for hand-computed test answers, keyed by MRN (id-independent):
//   {"seed", "patients", "practitioners": [{npi, family, given}], "organizations": [{id, name}],
//    "resources": {type: count},
//    "population": [{"mrn", "family", "given", "birthDate", "gender", "city", "state",
//      "gp": npi, "encounters": n, "conditions": [snomed], "counts": {loinc: n},
//      "obs": {loinc: [[value, effectiveDateTime], ...]}}]}   (+ "id" with --format ndjson)
// Prints a one-line summary on stderr.
import { mkdirSync, openSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const SYS = {
  mrn: 'http://hospital.example.org/mrn',
  ssn: 'http://hl7.org/fhir/sid/us-ssn',
  npi: 'http://hl7.org/fhir/sid/us-npi',
  synthea: 'https://github.com/synthetichealth/synthea',
  loinc: 'http://loinc.org',
  snomed: 'http://snomed.info/sct',
  ucum: 'http://unitsofmeasure.org',
  obsCategory: 'http://terminology.hl7.org/CodeSystem/observation-category',
  actCode: 'http://terminology.hl7.org/CodeSystem/v3-ActCode',
  participationType: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType',
  conditionClinical: 'http://terminology.hl7.org/CodeSystem/condition-clinical',
  conditionVer: 'http://terminology.hl7.org/CodeSystem/condition-ver-status',
  conditionCategory: 'http://terminology.hl7.org/CodeSystem/condition-category',
  identifierType: 'http://terminology.hl7.org/CodeSystem/v2-0203',
  orgType: 'http://terminology.hl7.org/CodeSystem/organization-type',
};

// No family is a prefix of another family or of a given name, so that a name search for a
// family (a prefix match in FHIR) finds exactly the patients with that family.
export const FAMILIES = [
  'Smith', 'Johnson', 'Nguyen', 'Müller', 'Ångström', "O'Brien", 'García', 'Kowalski',
  'Okafor', 'Tanaka', 'Rossi', 'Novak', 'Dubois', 'Larsen', 'Silva', 'Chen', 'Patel',
  'Haddad', 'Ivanova', 'Papadopoulos', 'Fitzgerald', 'Yamamoto', 'Bianchi', 'Wójcik',
  'Andersson', 'Moreau', 'Hernández', 'Nakamura', 'Schröder', 'MacDonald',
];
const GIVEN_FEMALE = ['Mary', 'Aisha', 'Zoë', 'Chloé', 'Ingrid', 'Mei', 'Priya', 'Fatima',
  'Olga', 'Lucía', 'Grace', 'Yuki', 'Amara', 'Sofia', 'Helen', 'Nora'];
const GIVEN_MALE = ['James', 'José', 'Søren', 'Wei', 'Omar', 'Rahul', 'Lars', 'Kwame',
  'Pierre', 'Tomasz', 'Hiro', 'David', 'Ethan', 'Mateo', 'Ivan', 'Björn'];
const CITIES = [
  ['Boston', 'MA', '02108'], ['Springfield', 'MA', '01103'], ['Worcester', 'MA', '01608'],
  ['Cambridge', 'MA', '02139'], ['Lowell', 'MA', '01852'], ['Salem', 'MA', '01970'],
  ['Quincy', 'MA', '02169'], ['Framingham', 'MA', '01701'], ['Providence', 'RI', '02903'],
  ['Hartford', 'CT', '06103'], ['Portland', 'ME', '04101'], ['Burlington', 'VT', '05401'],
];
const STREETS = ['Main St', 'Elm St', 'Oak Ave', 'Maple Dr', 'Cedar Ln', 'Pine St',
  'Washington Blvd', 'Lake Rd', 'Hill St', 'Park Ave'];
const ORG_NAMES = ['Synthetic General Hospital', 'Example Community Health Center',
  'Riverside Family Practice', 'North Shore Medical Group', 'Harbor Urgent Care'];
// Offsets (minutes) a patient's timestamps are written in; 0 is written as +00:00.
const TZ_OFFSETS = [-300, -240, -360, -420, -480, 0, 60, 120, 330, -180];

// LOINC vital signs and labs: [code, display, unit (UCUM), min, max, decimals, category].
export const OBSERVATION_CODES = [
  ['8867-4', 'Heart rate', '/min', 52, 110, 0, 'vital-signs'],
  ['8480-6', 'Systolic blood pressure', 'mm[Hg]', 95, 175, 0, 'vital-signs'],
  ['8462-4', 'Diastolic blood pressure', 'mm[Hg]', 55, 105, 0, 'vital-signs'],
  ['8302-2', 'Body height', 'cm', 0, 0, 1, 'vital-signs'],  // from the patient's height
  ['29463-7', 'Body weight', 'kg', 0, 0, 1, 'vital-signs'],  // from the patient's weight
  ['39156-5', 'Body mass index (BMI) [Ratio]', 'kg/m2', 0, 0, 1, 'vital-signs'],
  ['9279-1', 'Respiratory rate', '/min', 12, 22, 0, 'vital-signs'],
  ['8310-5', 'Body temperature', 'Cel', 36.1, 38.4, 1, 'vital-signs'],
  ['2339-0', 'Glucose [Mass/volume] in Blood', 'mg/dL', 65, 210, 0, 'laboratory'],
  ['4548-4', 'Hemoglobin A1c/Hemoglobin.total in Blood', '%', 4.6, 9.8, 1, 'laboratory'],
  ['2093-3', 'Cholesterol [Mass/volume] in Serum or Plasma', 'mg/dL', 140, 280, 0, 'laboratory'],
  ['2571-8', 'Triglycerides', 'mg/dL', 60, 320, 0, 'laboratory'],
  ['2160-0', 'Creatinine [Mass/volume] in Serum or Plasma', 'mg/dL', 0.6, 1.6, 2, 'laboratory'],
  ['718-7', 'Hemoglobin [Mass/volume] in Blood', 'g/dL', 11.0, 17.5, 1, 'laboratory'],
];
const CONDITIONS = [
  ['44054006', 'Diabetes mellitus type 2 (disorder)', true],
  ['38341003', 'Hypertension (disorder)', true],
  ['55822004', 'Hyperlipidemia (disorder)', true],
  ['15777000', 'Prediabetes (finding)', true],
  ['162864005', 'Body mass index 30+ - obesity (finding)', true],
  ['195662009', 'Acute viral pharyngitis (disorder)', false],
  ['10509002', 'Acute bronchitis (disorder)', false],
  ['444814009', 'Viral sinusitis (disorder)', false],
  ['233604007', 'Pneumonia (disorder)', false],
  ['40055000', 'Chronic sinusitis (disorder)', true],
];
// [class code, class display, type SNOMED, type display, min minutes, max minutes, weight]
const ENCOUNTER_KINDS = [
  ['AMB', 'ambulatory', '185349003', 'Encounter for check up (procedure)', 15, 45, 6],
  ['AMB', 'ambulatory', '185345009', 'Encounter for symptom (procedure)', 15, 60, 3],
  ['EMER', 'emergency', '50849002', 'Emergency room admission (procedure)', 60, 360, 1],
  ['IMP', 'inpatient', '183452005', 'Emergency hospital admission (procedure)', 1440, 7200, 0.5],
];

// ---- deterministic randomness -------------------------------------------------------------
function mix32(h) {  // murmur3 finalizer
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
export class Rng {  // sfc32, seeded from (seed, stream)
  constructor(seed, stream) {
    this.a = mix32(seed ^ 0x9e3779b9);
    this.b = mix32(stream ^ 0x243f6a88);
    this.c = mix32((seed + Math.imul(stream, 0x01000193)) ^ 0xb7e15162);
    this.d = 1;
    for (let i = 0; i < 15; i++) this.u32();
  }
  u32() {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  float() { return this.u32() / 4294967296; }
  int(lo, hi) { return lo + Math.floor(this.float() * (hi - lo + 1)); }  // inclusive
  pick(a) { return a[Math.floor(this.float() * a.length)]; }
  weighted(a, w) {
    let r = this.float() * w.reduce((s, x) => s + x, 0);
    for (let i = 0; i < a.length; i++) { r -= w[i]; if (r < 0) return a[i]; }
    return a[a.length - 1];
  }
  shuffle(a) {
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(this.float() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
  uuid() {  // RFC 4122 version 4 layout
    const h = [this.u32(), this.u32(), this.u32(), this.u32()]
      .map((x) => x.toString(16).padStart(8, '0')).join('');
    const v = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${v}${h.slice(17, 20)}-${h.slice(20, 32)}`;
  }
}

// ---- dates ---------------------------------------------------------------------------------
const DAY = 86400000;
const pad = (n, w = 2) => String(n).padStart(w, '0');
export function formatDate(ms) {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}
// ms is an instant; written as local time at offsetMin with its offset, seconds precision.
export function formatDateTime(ms, offsetMin) {
  const d = new Date(ms + offsetMin * 60000);
  const sign = offsetMin < 0 ? '-' : '+';
  const off = Math.abs(offsetMin);
  return `${formatDate(d.getTime())}T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:` +
    `${pad(d.getUTCSeconds())}${sign}${pad(Math.floor(off / 60))}:${pad(off % 60)}`;
}
const BIRTH_MIN = Date.UTC(1930, 0, 1);
const BIRTH_MAX = Date.UTC(2020, 11, 31);
const CARE_MIN = Date.UTC(2015, 0, 1);
const CARE_END = Date.UTC(2025, 11, 31, 12, 0, 0);  // nothing happens later (in any time zone)
const CARE_MAX = CARE_END - 8 * DAY;  // last encounter start: an inpatient stay ends in 2025

const escapeXml = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
  .replace(/"/g, '&quot;');
const round = (x, dec) => { const f = 10 ** dec; return Math.round(x * f) / f; };

// ---- shared practitioners and organizations ------------------------------------------------
export function makeProviders(seed) {
  const rng = new Rng(seed, 0x7fffffff);
  const organizations = ORG_NAMES.map((name, i) => {
    const city = CITIES[i % CITIES.length];
    return {
      uuid: rng.uuid(),
      id: rng.uuid(),  // Synthea's organization identifier value
      name, city,
      phone: `555-${pad(100 + i, 3)}-${pad(rng.int(0, 9999), 4)}`,
    };
  });
  const practitioners = [];
  for (let i = 0; i < 20; i++) {
    const gender = i % 2 ? 'male' : 'female';
    practitioners.push({
      uuid: rng.uuid(),
      npi: `99999${pad(10000 + i * 37 + rng.int(0, 30), 5)}`,
      family: FAMILIES[(i * 7 + 3) % FAMILIES.length],
      given: rng.pick(gender === 'male' ? GIVEN_MALE : GIVEN_FEMALE),
      gender,
      org: organizations[i % organizations.length],
    });
  }
  return { practitioners, organizations };
}
const practitionerRef = (p) => `Practitioner?identifier=${SYS.npi}|${p.npi}`;
const organizationRef = (o) => `Organization?identifier=${SYS.synthea}|${o.id}`;

function organizationResource(o) {
  return {
    resourceType: 'Organization',
    identifier: [{ system: SYS.synthea, value: o.id }],
    active: true,
    type: [{ coding: [{ system: SYS.orgType, code: 'prov', display: 'Healthcare Provider' }],
      text: 'Healthcare Provider' }],
    name: o.name,
    telecom: [{ system: 'phone', value: o.phone }],
    address: [{ line: ['1 Hospital Way'], city: o.city[0], state: o.city[1],
      postalCode: o.city[2], country: 'US' }],
  };
}
function practitionerResource(p) {
  return {
    resourceType: 'Practitioner',
    identifier: [{ system: SYS.npi, value: p.npi }],
    active: true,
    name: [{ family: p.family, given: [p.given], prefix: ['Dr.'] }],
    telecom: [{ system: 'email', value: `${p.npi}@example.org`, use: 'work' }],
    address: [{ line: ['1 Hospital Way'], city: p.org.city[0], state: p.org.city[1],
      postalCode: p.org.city[2], country: 'US' }],
    gender: p.gender,
  };
}

// ---- one patient ---------------------------------------------------------------------------
// Returns {entries: [{uuid, resource}], facts}; references to other entries are urn:uuid,
// to practitioners and organizations conditional.
export function makePatient(seed, n, providers) {
  const rng = new Rng(seed, n);
  const uuid = rng.uuid();
  const gender = rng.weighted(['female', 'male', 'other'], [49, 49, 2]);
  const family = rng.pick(FAMILIES);
  const givenPool = gender === 'male' ? GIVEN_MALE : gender === 'female' ? GIVEN_FEMALE
    : rng.pick([GIVEN_MALE, GIVEN_FEMALE]);
  const given = [rng.pick(givenPool)];
  if (rng.float() < 0.3) {
    const second = rng.pick(givenPool);
    if (second !== given[0]) given.push(second);
  }
  const birthMs = BIRTH_MIN + Math.floor(rng.float() * ((BIRTH_MAX - BIRTH_MIN) / DAY + 1)) * DAY;
  const birthDate = formatDate(birthMs);
  const [city, state, postalCode] = rng.pick(CITIES);
  const tz = rng.pick(TZ_OFFSETS);
  const gp = rng.pick(providers.practitioners);
  const mrn = `MRN-${n}`;
  const ssn = `999-${pad(rng.int(10, 99))}-${pad(rng.int(0, 9999), 4)}`;
  const phone = `555-${pad(rng.int(200, 999), 3)}-${pad(rng.int(0, 9999), 4)}`;
  const emailLocal = `${given[0]}.${family}`.normalize('NFD').replace(/[^A-Za-z.]/g, '')
    .toLowerCase();
  const fullName = `${given.join(' ')} ${family}`;
  const patientUrl = `urn:uuid:${uuid}`;
  const patient = {
    resourceType: 'Patient',
    text: {
      status: 'generated',
      div: `<div xmlns="http://www.w3.org/1999/xhtml"><p><a href="${patientUrl}">` +
        `${escapeXml(fullName)}</a></p><p>${escapeXml(mrn)}, ${gender}, born ${birthDate}, ` +
        `${escapeXml(city)} ${state}</p></div>`,
    },
    identifier: [
      { type: { coding: [{ system: SYS.identifierType, code: 'MR', display: 'Medical Record Number' }],
        text: 'Medical Record Number' }, system: SYS.mrn, value: mrn },
      { type: { coding: [{ system: SYS.identifierType, code: 'SS', display: 'Social Security Number' }],
        text: 'Social Security Number' }, system: SYS.ssn, value: ssn },
    ],
    active: true,
    name: [{ use: 'official', family, given }],
    telecom: [
      { system: 'phone', value: phone, use: 'home' },
      { system: 'email', value: `${emailLocal}${n}@example.com`, use: 'home' },
    ],
    gender,
    birthDate,
    address: [{ use: 'home', line: [`${rng.int(1, 999)} ${rng.pick(STREETS)}`], city, state,
      postalCode, country: 'US' }],
    generalPractitioner: [{ reference: practitionerRef(gp),
      display: `Dr. ${gp.given} ${gp.family}` }],
  };
  const entries = [{ uuid, resource: patient }];
  const subject = { reference: patientUrl, display: fullName };

  // Encounters, in time order, from 2015 (or birth) to 2025.
  const nEnc = rng.int(2, 6);
  const careStart = Math.max(CARE_MIN, birthMs + DAY);
  const starts = [];
  for (let i = 0; i < nEnc; i++) {
    // whole minutes, between 07:00 and 19:00 local time
    const day = careStart + Math.floor(rng.float() * ((CARE_MAX - careStart) / DAY)) * DAY;
    starts.push(day - tz * 60000 + (7 * 60 + rng.int(0, 12 * 60)) * 60000);
  }
  starts.sort((a, b) => a - b);
  const encounters = starts.map((start) => {
    const kind = rng.weighted(ENCOUNTER_KINDS, ENCOUNTER_KINDS.map((k) => k[6]));
    const end = start + rng.int(kind[4], kind[5]) * 60000;
    const doc = rng.float() < 0.6 ? gp : rng.pick(providers.practitioners);
    const encUuid = rng.uuid();
    const resource = {
      resourceType: 'Encounter',
      status: 'finished',
      class: { system: SYS.actCode, code: kind[0], display: kind[1] },
      type: [{ coding: [{ system: SYS.snomed, code: kind[2], display: kind[3] }], text: kind[3] }],
      subject,
      participant: [{
        type: [{ coding: [{ system: SYS.participationType, code: 'PPRF',
          display: 'primary performer' }], text: 'primary performer' }],
        period: { start: formatDateTime(start, tz), end: formatDateTime(end, tz) },
        individual: { reference: practitionerRef(doc), display: `Dr. ${doc.given} ${doc.family}` },
      }],
      period: { start: formatDateTime(start, tz), end: formatDateTime(end, tz) },
      serviceProvider: { reference: organizationRef(doc.org), display: doc.org.name },
    };
    entries.push({ uuid: encUuid, resource });
    return { uuid: encUuid, start, end, kind };
  });

  // Observations: 10-40, spread over the encounters; every encounter records a heart rate.
  const nObs = rng.int(10, 40);
  const perEnc = new Array(nEnc).fill(1);
  for (let i = nEnc; i < nObs; i++) perEnc[rng.int(0, nEnc - 1)]++;
  const adultHeight = gender === 'male' ? rng.int(165, 195) : rng.int(152, 182);
  const bmiBase = 19 + rng.float() * 14;
  const obsFacts = {};
  const counts = {};
  const obsEntries = [];
  encounters.forEach((enc, ei) => {
    const ageYears = (enc.start - birthMs) / (365.25 * DAY);
    const growth = ageYears >= 18 ? 1 : Math.max(0.3, 0.3 + 0.7 * (ageYears / 18));
    const height = round(adultHeight * growth + rng.float() * 2 - 1, 1);
    const bmi = round(bmiBase * (ageYears >= 18 ? 1 : 0.65 + 0.35 * Math.min(1, ageYears / 18)) +
      rng.float() * 1.5, 1);
    const weight = round(bmi * (height / 100) ** 2, 1);
    const order = [OBSERVATION_CODES[0], ...rng.shuffle(OBSERVATION_CODES.slice(1))];
    for (let j = 0; j < perEnc[ei]; j++) {
      const [code, display, unit, lo, hi, dec, category] = order[j % order.length];
      let value;
      if (code === '8302-2') value = height;
      else if (code === '29463-7') value = weight;
      else if (code === '39156-5') value = round(weight / (height / 100) ** 2, 1);
      else value = round(lo + rng.float() * (hi - lo), dec);
      // taken during the encounter, a minute apart; repeats of a code come later
      const when = Math.min(enc.end, enc.start + (5 + j) * 60000);
      const effective = formatDateTime(when, tz);
      const catDisplay = category === 'vital-signs' ? 'Vital Signs' : 'Laboratory';
      obsEntries.push({ uuid: rng.uuid(), resource: {
        resourceType: 'Observation',
        status: 'final',
        category: [{ coding: [{ system: SYS.obsCategory, code: category, display: catDisplay }],
          text: catDisplay }],
        code: { coding: [{ system: SYS.loinc, code, display }], text: display },
        subject,
        encounter: { reference: `urn:uuid:${enc.uuid}` },
        effectiveDateTime: effective,
        valueQuantity: { value, unit, system: SYS.ucum, code: unit },
      } });
      (obsFacts[code] ??= []).push([value, effective]);
      counts[code] = (counts[code] ?? 0) + 1;
    }
  });
  entries.push(...obsEntries);

  // Conditions: 1-4 distinct, each diagnosed at one of the encounters.
  const nCond = rng.int(1, 4);
  const condCodes = [];
  for (const [code, display, chronic] of rng.shuffle(CONDITIONS.slice()).slice(0, nCond)) {
    const enc = rng.pick(encounters);
    const resolved = !chronic && rng.float() < 0.8;
    const resource = {
      resourceType: 'Condition',
      clinicalStatus: { coding: [{ system: SYS.conditionClinical,
        code: resolved ? 'resolved' : 'active', display: resolved ? 'Resolved' : 'Active' }] },
      verificationStatus: { coding: [{ system: SYS.conditionVer, code: 'confirmed',
        display: 'Confirmed' }] },
      category: [{ coding: [{ system: SYS.conditionCategory, code: 'encounter-diagnosis',
        display: 'Encounter Diagnosis' }] }],
      code: { coding: [{ system: SYS.snomed, code, display }], text: display },
      subject,
      encounter: { reference: `urn:uuid:${enc.uuid}` },
      onsetDateTime: formatDateTime(enc.start, tz),
      recordedDate: formatDateTime(enc.end, tz),
    };
    if (resolved) {
      resource.abatementDateTime = formatDateTime(Math.min(enc.start + rng.int(5, 30) * DAY, CARE_END), tz);
    }
    entries.push({ uuid: rng.uuid(), resource });
    condCodes.push(code);
  }

  const facts = { mrn, family, given, birthDate, gender, city, state, gp: gp.npi,
    encounters: nEnc, conditions: condCodes, counts, obs: obsFacts };
  return { entries, facts };
}

// ---- output forms --------------------------------------------------------------------------
function ifNoneExistFor(resource) {
  const id = resource.identifier[0];
  return `identifier=${id.system}|${id.value}`;
}
export function providersBundle(providers) {
  const entry = [];
  for (const o of providers.organizations) {
    const resource = organizationResource(o);
    entry.push({ fullUrl: `urn:uuid:${o.uuid}`, resource,
      request: { method: 'POST', url: 'Organization', ifNoneExist: ifNoneExistFor(resource) } });
  }
  for (const p of providers.practitioners) {
    const resource = practitionerResource(p);
    entry.push({ fullUrl: `urn:uuid:${p.uuid}`, resource,
      request: { method: 'POST', url: 'Practitioner', ifNoneExist: ifNoneExistFor(resource) } });
  }
  return { resourceType: 'Bundle', type: 'transaction', entry };
}
export function patientBundle(entries) {
  return {
    resourceType: 'Bundle',
    type: 'transaction',
    entry: entries.map(({ uuid, resource }) => ({
      fullUrl: `urn:uuid:${uuid}`, resource,
      request: { method: 'POST', url: resource.resourceType },
    })),
  };
}
// ndjson: ids from the uuids, urn:uuid and conditional references made literal.
function withRealIds(entries, providers) {
  const byUrn = new Map(entries.map(({ uuid, resource }) =>
    [`urn:uuid:${uuid}`, `${resource.resourceType}/${uuid}`]));
  for (const p of providers.practitioners) byUrn.set(practitionerRef(p), `Practitioner/${p.uuid}`);
  for (const o of providers.organizations) byUrn.set(organizationRef(o), `Organization/${o.uuid}`);
  const rewrite = (s) => byUrn.get(s) ??
    s.replace(/urn:uuid:[0-9a-f-]{36}/g, (u) => byUrn.get(u) ?? u);
  const walk = (v) => {
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === 'object') {
      const out = {};
      for (const [k, x] of Object.entries(v)) out[k] = (k === 'reference' || k === 'div') ? rewrite(x) : walk(x);
      return out;
    }
    return v;
  };
  return entries.map(({ uuid, resource }) => {
    const r = walk(resource);
    return { resourceType: r.resourceType, id: uuid, ...r };
  });
}

// ---- main ----------------------------------------------------------------------------------
function parseArgs(argv) {
  const opts = { seed: 42, patients: 10, format: 'transaction', out: 'out/synth', answers: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--seed') opts.seed = Number(val());
    else if (a === '--patients') opts.patients = Number(val());
    else if (a === '--format') opts.format = val();
    else if (a === '--out') opts.out = val();
    else if (a === '--answers') opts.answers = val();
    else if (a === '-h' || a === '--help') opts.help = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!Number.isInteger(opts.seed) || opts.seed < 0 || opts.seed > 0xffffffff) {
    throw new Error('--seed must be an integer 0..4294967295');
  }
  if (!Number.isInteger(opts.patients) || opts.patients < 0) throw new Error('--patients must be an integer >= 0');
  if (!['transaction', 'ndjson'].includes(opts.format)) throw new Error('--format is transaction or ndjson');
  return opts;
}

export function main(argv) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`synth: ${e.message}\nusage: node tools/synth.mjs --seed 42 --patients N ` +
      '[--format transaction|ndjson] [--out DIR] [--answers FILE]\n');
    return 2;
  }
  if (opts.help) {
    process.stdout.write('usage: node tools/synth.mjs --seed 42 --patients N ' +
      '[--format transaction|ndjson] [--out DIR] [--answers FILE]\n');
    return 0;
  }
  const t0 = process.hrtime.bigint();
  mkdirSync(opts.out, { recursive: true });
  const providers = makeProviders(opts.seed);
  const byType = {};
  const count = (r) => { byType[r.resourceType] = (byType[r.resourceType] ?? 0) + 1; };
  const population = [];
  let bundles = 0;
  let fd = null;
  let buf = [];
  let bufLen = 0;
  const flush = () => { if (buf.length) { writeSync(fd, buf.join('')); buf = []; bufLen = 0; } };
  const line = (r) => {
    const s = JSON.stringify(r) + '\n';
    buf.push(s);
    bufLen += s.length;
    if (bufLen > 1 << 20) flush();
  };

  const pb = providersBundle(providers);
  pb.entry.forEach((e) => count(e.resource));
  if (opts.format === 'transaction') {
    writeFileSync(join(opts.out, 'bundle-00000.json'), JSON.stringify(pb));
    bundles++;
  } else {
    fd = openSync(join(opts.out, 'resources.ndjson'), 'w');
    const provEntries = pb.entry.map((e) => ({ uuid: e.fullUrl.slice(9), resource: e.resource }));
    for (const r of withRealIds(provEntries, providers)) line(r);
  }
  const width = Math.max(5, String(opts.patients).length);
  for (let n = 1; n <= opts.patients; n++) {
    const { entries, facts } = makePatient(opts.seed, n, providers);
    entries.forEach((e) => count(e.resource));
    if (opts.format === 'transaction') {
      writeFileSync(join(opts.out, `bundle-${pad(n, width)}.json`), JSON.stringify(patientBundle(entries)));
      bundles++;
    } else {
      for (const r of withRealIds(entries, providers)) line(r);
      facts.id = entries[0].uuid;
    }
    population.push(facts);
  }
  if (fd !== null) { flush(); closeSync(fd); }

  const total = Object.values(byType).reduce((s, x) => s + x, 0);
  if (opts.answers) {
    const answers = {
      seed: opts.seed,
      patients: opts.patients,
      format: opts.format,
      practitioners: providers.practitioners.map((p) => ({ npi: p.npi, family: p.family, given: p.given })),
      organizations: providers.organizations.map((o) => ({ id: o.id, name: o.name })),
      resources: byType,
      population,
    };
    // one patient a line: compact, yet diff- and grep-friendly
    const head = JSON.stringify({ ...answers, population: undefined }).slice(0, -1);
    writeFileSync(opts.answers, `${head},"population":[\n${population.map((p) => JSON.stringify(p)).join(',\n')}\n]}\n`);
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const types = Object.entries(byType).map(([t, c]) => `${t} ${c}`).join(', ');
  process.stderr.write(`synth: seed ${opts.seed}, ${opts.patients} patients, ` +
    (opts.format === 'transaction' ? `${bundles} bundles` : 'ndjson') +
    `, ${total} resources (${types}) in ${opts.out}, ${secs.toFixed(1)} s\n`);
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = main(process.argv.slice(2));
