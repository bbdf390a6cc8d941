// Child process of crud.test.mjs: drives fhirward with fhir-kit-client.
// It runs in its own node process so that NODE_EXTRA_CA_CERTS (the server's
// development CA) applies to Node's built-in fetch, which fhir-kit-client uses.
// Env: FHIR_BASE, FHIR_TOKEN. Prints one line `RESULT <json>`: step -> outcome.
import Client from 'fhir-kit-client';
import { steps } from './fkc-harness.mjs';

const client = new Client({ baseUrl: process.env.FHIR_BASE, bearerToken: process.env.FHIR_TOKEN });
const { step, report } = steps();

const family = `Kit-${Date.now()}`;
const meta = await step('capabilities', async () => {
  const cs = await client.capabilityStatement();
  return { resourceType: cs.resourceType, fhirVersion: cs.fhirVersion };
});
void meta;

const created = await step('create', async () => client.create({
  resourceType: 'Patient',
  body: { resourceType: 'Patient', active: true, name: [{ family, given: ['Fhir', 'Kit'] }], birthDate: '1970-01-01' },
}));
const id = created.ok ? created.value.id : undefined;

if (id) {
  await step('read', async () => client.read({ resourceType: 'Patient', id }));
  await step('update', async () => client.update({
    resourceType: 'Patient', id,
    body: { resourceType: 'Patient', id, active: false, name: [{ family, given: ['Fhir', 'Kit', 'Updated'] }], birthDate: '1970-01-01' },
  }));
  await step('vread', async () => client.vread({ resourceType: 'Patient', id, version: '1' }));
  await step('history', async () => client.resourceHistory({ resourceType: 'Patient', id }));
  await step('historyPaged', async () => {
    const versions = [];
    let page = await client.request(`Patient/${id}/_history?_count=1`);
    for (let i = 0; page && i < 10; i++) {
      for (const e of page.entry || []) versions.push(e.resource && e.resource.meta.versionId);
      page = await client.nextPage(page);
    }
    return versions;
  });
  await step('delete', async () => client.delete({ resourceType: 'Patient', id }));
  await step('readAfterDelete', async () => client.read({ resourceType: 'Patient', id }));
  await step('vreadAfterDelete', async () => client.vread({ resourceType: 'Patient', id, version: '2' }));
}

report({ id, family });
