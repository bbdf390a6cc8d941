// Child process of search.test.mjs: transaction, search (paging with the
// client's own nextPage/prevPage), compartment search, conditional update and
// JSON Patch, all through fhir-kit-client. Env: FHIR_BASE, FHIR_TOKEN.
// Prints one line `RESULT <json>`: step -> outcome.
import crypto from 'node:crypto';
import Client from 'fhir-kit-client';
import { steps } from './fkc-harness.mjs';

const client = new Client({ baseUrl: process.env.FHIR_BASE, bearerToken: process.env.FHIR_TOKEN });
const { step, report } = steps();

const family = `Kitsearch${Date.now()}`;
const mrn = `MRN-${crypto.randomUUID()}`;
const pUrn = `urn:uuid:${crypto.randomUUID()}`;
const obs = (value, date) => ({
  fullUrl: `urn:uuid:${crypto.randomUUID()}`,
  resource: {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }] },
    subject: { reference: pUrn },
    effectiveDateTime: date,
    valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  },
  request: { method: 'POST', url: 'Observation' },
});

const tx = await step('transaction', async () => {
  const r = await client.transaction({
    body: {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: pUrn,
          resource: {
            resourceType: 'Patient',
            identifier: [{ system: 'http://hospital.example.org/mrn', value: mrn }],
            name: [{ family, given: ['Émile'] }],
          },
          request: { method: 'POST', url: 'Patient' },
        },
        obs(61, '2021-03-01T10:00:00Z'),
        obs(72, '2022-03-01T10:00:00Z'),
        obs(83, '2023-03-01T10:00:00Z'),
        obs(94, '2024-03-01T10:00:00Z'),
        obs(105, '2025-03-01T10:00:00Z'),
      ],
    },
  });
  return { type: r.type, statuses: r.entry.map((e) => e.response.status), locations: r.entry.map((e) => e.response.location) };
});
const patientId = tx.ok ? tx.value.locations[0].split('/')[1] : undefined;

if (patientId) {
  await step('searchByName', async () => {
    const b = await client.search({ resourceType: 'Patient', searchParams: { name: family.toLowerCase(), _total: 'accurate' } });
    return { total: b.total, ids: (b.entry || []).map((e) => e.resource.id) };
  });
  await step('searchByIdentifier', async () => {
    const b = await client.search({ resourceType: 'Patient', searchParams: { identifier: `http://hospital.example.org/mrn|${mrn}` } });
    return { ids: (b.entry || []).map((e) => e.resource.id) };
  });
  await step('pagedSearch', async () => {
    const values = [];
    let page = await client.search({
      resourceType: 'Observation',
      searchParams: { subject: `Patient/${patientId}`, date: 'ge2022-01-01', _sort: 'date', _count: 2 },
    });
    let pages = 0;
    let last = page;
    while (page && pages < 10) {
      pages += 1;
      for (const e of page.entry || []) values.push(e.resource.valueQuantity.value);
      last = page;
      page = await client.nextPage(page);
    }
    const back = await client.prevPage(last);
    return { values, pages, back: (back.entry || []).map((e) => e.resource.valueQuantity.value) };
  });
  await step('compartmentSearch', async () => {
    const b = await client.compartmentSearch({
      resourceType: 'Observation',
      compartment: { resourceType: 'Patient', id: patientId },
      searchParams: { 'value-quantity': 'gt90', _include: 'Observation:subject' },
    });
    return {
      matches: (b.entry || []).filter((e) => e.search.mode === 'match').map((e) => e.resource.valueQuantity.value).sort((a, b) => a - b),
      included: (b.entry || []).filter((e) => e.search.mode === 'include').map((e) => e.resource.resourceType),
    };
  });
  await step('conditionalUpdate', async () => {
    const r = await client.update({
      resourceType: 'Patient',
      searchParams: { identifier: `http://hospital.example.org/mrn|${mrn}` },
      body: {
        resourceType: 'Patient',
        identifier: [{ system: 'http://hospital.example.org/mrn', value: mrn }],
        name: [{ family, given: ['Émile', 'Updated'] }],
      },
    });
    return { id: r.id, versionId: r.meta.versionId, given: r.name[0].given };
  });
  await step('patch', async () => {
    const r = await client.patch({
      resourceType: 'Patient',
      id: patientId,
      JSONPatch: [{ op: 'add', path: '/active', value: true }, { op: 'test', path: '/name/0/family', value: family }],
    });
    return { versionId: r.meta.versionId, active: r.active };
  });
}

report({ patientId, family });
