// The client side of bench/search-run, the same for fhirward and the Medplum peer: loads the
// transaction Bundles written by tools/synth.mjs, checks search answers against the
// generator's facts, and writes the URL path lists that wrk rotates over.
//
//   node bench-client.mjs load  --base URL --dir DIR --out FILE [--concurrency 2] [--ca PEM]
//   node bench-client.mjs check --base URL --loaded FILE --answers FILE --out FILE [--ca PEM]
//   node bench-client.mjs paths --loaded FILE --answers FILE --out-prefix PREFIX [--max 500]
//
// A bearer token, when the server wants one, comes in the environment (BENCH_TOKEN), not on
// the command line. --ca trusts that certificate for https:// (the server's name is checked).
//
// load: POSTs DIR/bundle-00000.json (practitioners and organizations, referenced
//   conditionally by every other bundle) alone, then the patients' bundles with CONCURRENCY
//   clients on keep-alive connections, with "Prefer: return=minimal". Every answer must be 200
//   with a transaction-response Bundle whose entries all have a 2xx status. Writes
//   {"bundles", "resources", "seconds", "resources_per_second", "failed_bundles",
//    "errors": [first few], "patients": [Patient id of bundle 1, 2, ...]}; exits 1 if any failed.
// check: a few name searches and Observation searches, every page followed, compared with the
//   answers; writes {"checked", "failed", "failures": [...]}, always exits 0 once it ran.
// paths: PREFIX.name.txt, PREFIX.obs.txt, PREFIX.include.txt, one request path a line.
import { readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { join } from 'node:path';

// Families the name search rotates over (non-ASCII and an apostrophe among them).
export const SEARCH_FAMILIES = ['Smith', 'Nguyen', 'Müller', "O'Brien", 'García', 'Tanaka',
  'Kowalski', 'Okafor'];
export const HEART_RATE = 'http://loinc.org|8867-4';
export const DATE_FROM = '2020-01-01';

function args(argv) {
  const o = { concurrency: 2, max: 500 };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
    o[k] = argv[i + 1];
  }
  o.concurrency = Number(o.concurrency);
  o.max = Number(o.max);
  return o;
}

function client(base, caFile, sockets) {
  const url = new URL(base);
  const tls = url.protocol === 'https:';
  const mod = tls ? https : http;
  const agent = new mod.Agent({ keepAlive: true, maxSockets: sockets,
    ...(tls && caFile ? { ca: readFileSync(caFile) } : {}) });
  const token = process.env.BENCH_TOKEN;
  return (method, path, body) => new Promise((resolve, reject) => {
    const headers = { Accept: 'application/fhir+json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      headers['Content-Type'] = 'application/fhir+json';
      headers.Prefer = 'return=minimal';
      headers['Content-Length'] = body.length;
    }
    // localhost is 127.0.0.1 here (the servers listen there only), checked as "localhost"
    const req = mod.request({ host: url.hostname === 'localhost' ? '127.0.0.1' : url.hostname,
      port: url.port, method, path, headers, agent,
      ...(tls && !/^[\d.]+$|:/.test(url.hostname) ? { servername: url.hostname } : {}) }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.setTimeout(300000, () => req.destroy(new Error(`${method} ${path}: no answer in 300 s`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// "Patient/ID", "Patient/ID/_history/1" or an absolute URL ending in either -> ID
export function idFromLocation(location, type) {
  const m = new RegExp(`(?:^|/)${type}/([A-Za-z0-9.\\-]{1,64})(?:/_history/[^/]+)?/?$`).exec(location ?? '');
  return m ? m[1] : null;
}

async function load(o) {
  const request = client(o.base, o.ca, o.concurrency);
  const files = readdirSync(o.dir).filter((f) => /^bundle-\d+\.json$/.test(f)).sort();
  if (files[0] !== 'bundle-00000.json') throw new Error(`${o.dir}: no bundle-00000.json`);
  const patients = new Array(files.length - 1).fill(null);
  const errors = [];
  let resources = 0;
  let failed = 0;
  const post = async (file) => {
    const body = await readFile(join(o.dir, file));
    const sent = JSON.parse(body.toString('utf8'));
    let res;
    try {
      res = await request('POST', new URL(o.base).pathname.replace(/\/?$/, '/'), body);
    } catch (e) {
      failed++;
      if (errors.length < 5) errors.push(`${file}: ${e.message}`);
      return;
    }
    const b = res.json;
    const bad = [];
    if (res.status !== 200) bad.push(`HTTP ${res.status}`);
    else if (b?.resourceType !== 'Bundle' || b.type !== 'transaction-response') bad.push('not a transaction-response Bundle');
    else if ((b.entry?.length ?? 0) !== sent.entry.length) bad.push(`${b.entry?.length ?? 0} entries for ${sent.entry.length}`);
    else {
      b.entry.forEach((e, i) => {
        if (!/^2\d\d/.test(String(e.response?.status ?? ''))) bad.push(`entry ${i}: ${e.response?.status}`);
      });
    }
    if (bad.length) {
      failed++;
      if (errors.length < 5) errors.push(`${file}: ${bad.slice(0, 3).join('; ')}: ${res.text.slice(0, 400)}`);
      return;
    }
    resources += sent.entry.length;
    const n = Number(file.slice(7, -5));
    if (n > 0) {
      const i = sent.entry.findIndex((e) => e.resource?.resourceType === 'Patient');
      patients[n - 1] = idFromLocation(b.entry[i]?.response?.location, 'Patient');
    }
  };
  const t0 = process.hrtime.bigint();
  await post(files[0]);
  let next = 1;
  const worker = async () => {
    while (next < files.length) await post(files[next++]);
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const out = { bundles: files.length, resources, seconds: +seconds.toFixed(3),
    resources_per_second: +(resources / seconds).toFixed(1), failed_bundles: failed, errors,
    patients };
  writeFileSync(o.out, JSON.stringify(out));
  process.stderr.write(`load ${o.base}: ${files.length - failed}/${files.length} bundles, ${resources} resources in ` +
    `${seconds.toFixed(1)} s: ${out.resources_per_second} resources/s${failed ? `; ${failed} FAILED: ${errors[0]}` : ''}\n`);
  return failed ? 1 : 0;
}

function readAnswers(file) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

export const namePath = (family) => `/Patient?name=${encodeURIComponent(family)}`;
export const obsPath = (id) => `/Observation?patient=${encodeURIComponent(id)}` +
  `&code=${encodeURIComponent(HEART_RATE)}&date=ge${DATE_FROM}`;
export const includePath = (id) => `${obsPath(id)}&_include=Observation:subject`;

// The patients the Observation searches rotate over: evenly spread, the same bundles for
// every server.
function samplePatients(loaded, max) {
  const n = loaded.patients.length;
  const step = Math.max(1, Math.floor(n / max));
  const out = [];
  for (let i = 0; i < n && out.length < max; i += step) if (loaded.patients[i]) out.push(i);
  return out;
}

function paths(o) {
  const loaded = JSON.parse(readFileSync(o.loaded, 'utf8'));
  const answers = readAnswers(o.answers);
  const present = new Set(answers.population.map((p) => p.family));
  const families = SEARCH_FAMILIES.filter((f) => present.has(f));
  const sample = samplePatients(loaded, o.max);
  if (!families.length || !sample.length) throw new Error('no families or patients to search for');
  writeFileSync(`${o.outPrefix}.name.txt`, families.map((f) => namePath(f) + '\n').join(''));
  writeFileSync(`${o.outPrefix}.obs.txt`, sample.map((i) => obsPath(loaded.patients[i]) + '\n').join(''));
  writeFileSync(`${o.outPrefix}.include.txt`, sample.map((i) => includePath(loaded.patients[i]) + '\n').join(''));
  return 0;
}

// Every page of a search: [matches, includes] (entries without search.mode count as matches).
async function searchAll(request, base, path) {
  const matches = [];
  const includes = [];
  const prefix = new URL(base).pathname.replace(/\/$/, '');
  let next = prefix + path;
  for (let pages = 0; next && pages < 200; pages++) {
    const res = await request('GET', next);
    if (res.status !== 200 || res.json?.resourceType !== 'Bundle') {
      throw new Error(`GET ${next}: HTTP ${res.status}: ${res.text.slice(0, 300)}`);
    }
    for (const e of res.json.entry ?? []) (e.search?.mode === 'include' ? includes : matches).push(e.resource);
    const link = res.json.link?.find((l) => l.relation === 'next')?.url;
    if (!link) break;
    const u = new URL(link, base);
    next = u.pathname + u.search;
  }
  return [matches, includes];
}

async function check(o) {
  const request = client(o.base, o.ca, 1);
  const loaded = JSON.parse(readFileSync(o.loaded, 'utf8'));
  const answers = readAnswers(o.answers);
  const failures = [];
  let checked = 0;
  const expect = (what, ok, detail) => {
    checked++;
    if (!ok) failures.push(`${what}: ${detail}`);
  };
  for (const family of SEARCH_FAMILIES.slice(0, 4)) {
    const want = answers.population.filter((p) => p.family === family).length;
    try {
      const [m] = await searchAll(request, o.base, namePath(family));
      const wrong = m.filter((r) => r?.resourceType !== 'Patient' || !r.name?.some((n) => n.family === family));
      expect(`name=${family}`, m.length === want && !wrong.length, `${m.length} matches (${wrong.length} without that family), expected ${want}`);
    } catch (e) {
      expect(`name=${family}`, false, e.message);
    }
  }
  // Where a date sits in 2020-01-01 depends on the time zone the server reads the date in;
  // an observation within 14 hours of midnight UTC may fall on either side.
  const certain = Date.parse(`${DATE_FROM}T14:00:00Z`);
  const possible = Date.parse(`${DATE_FROM}T00:00:00Z`) - 14 * 3600000;
  for (const i of samplePatients(loaded, 8)) {
    const id = loaded.patients[i];
    const facts = answers.population[i];
    const dates = (facts.obs['8867-4'] ?? []).map(([, when]) => Date.parse(when));
    const lo = dates.filter((t) => t >= certain).length;
    const hi = dates.filter((t) => t >= possible).length;
    try {
      const [m] = await searchAll(request, o.base, obsPath(id));
      const wrong = m.filter((r) => r?.resourceType !== 'Observation' ||
        !r.code?.coding?.some((c) => c.code === '8867-4') || !r.subject?.reference?.endsWith(`Patient/${id}`));
      expect(`Observation ${facts.mrn}`, m.length >= lo && m.length <= hi && !wrong.length,
        `${m.length} matches (${wrong.length} wrong), expected ${lo === hi ? lo : `${lo}..${hi}`}`);
      const [m2, inc] = await searchAll(request, o.base, includePath(id));
      const pats = inc.filter((r) => r?.resourceType === 'Patient' && r.id === id);
      expect(`_include ${facts.mrn}`, m2.length === m.length && (m2.length === 0 || pats.length >= 1),
        `${m2.length} matches, ${inc.length} included (${pats.length} the patient)`);
    } catch (e) {
      expect(`Observation ${facts.mrn}`, false, e.message);
    }
  }
  const out = { checked, failed: failures.length, failures };
  writeFileSync(o.out, JSON.stringify(out));
  process.stderr.write(`check ${o.base}: ${checked - failures.length}/${checked} answers right` +
    `${failures.length ? `; wrong: ${failures.slice(0, 3).join(' | ')}` : ''}\n`);
  return 0;
}

const [cmd, ...rest] = process.argv.slice(2);
const commands = { load, check, paths };
if (!commands[cmd]) {
  process.stderr.write('usage: bench-client.mjs load|check|paths --option value ...\n');
  process.exit(2);
}
try {
  process.exitCode = await commands[cmd](args(rest));
} catch (e) {
  process.stderr.write(`bench-client ${cmd}: ${e.message}\n`);
  process.exitCode = 1;
}
