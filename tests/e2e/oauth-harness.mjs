// Shared by the OAuth end-to-end tests (oauth.test.mjs) and their flows
// (oauth-flow.mjs, oauth-browser-flow.mjs), which drive fhirward's built-in
// authorization server with independent clients: oauth4webapi, jose, Playwright.
//  - In a test: `runFlow(file, srv, input)` runs a flow in its own node process
//    (so NODE_EXTRA_CA_CERTS, the server's development CA, applies to Node's
//    fetch, which oauth4webapi and jose use) and returns what it reported;
//    `cli()` runs `fhirward users|clients ...` against the server's data dir.
//  - In a flow: `flowInput()` is what the test passed; `steps()` records each
//    step's outcome and `report(extra)` prints the one line `RESULT <json>`;
//    `browserlessLogin()` is a user at the login and consent pages (cookies
//    kept, hidden `request` / `csrf` inputs posted back) without a browser.
import { spawn } from 'node:child_process';
import assert from 'node:assert/strict';

// ---------------------------------------------------------------------------
// Test side

/** Runs `node FILE` with FLOW_INPUT = JSON of input; resolves to its RESULT. */
export function runFlow(file, srv, input, { timeoutMs = 40000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_EXTRA_CA_CERTS: `${srv.dataDir}/tls/ca.pem`, FLOW_INPUT: JSON.stringify({ base: srv.base, ...input }) },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
      if (!line) {
        reject(new Error(`${file} printed no RESULT (exit ${code}, signal ${signal}):\n${stdout}\n${stderr}`));
      } else {
        resolve(JSON.parse(line.slice(7)));
      }
    });
  });
}

/** The value of a step that must have succeeded. */
export function okStep(out, name) {
  const r = out.results[name];
  assert.ok(r, `step ${name} did not run`);
  assert.ok(r.ok, `step ${name} failed: ${JSON.stringify(r.error)}`);
  return r.value;
}

/** A short account of a flow's RESULT for a failed test: each step's outcome, and the rest. */
export function summarize(out) {
  const lines = [];
  for (const [name, r] of Object.entries(out.results || {})) {
    lines.push(r.ok ? `${name}: ok` : `${name}: FAILED ${JSON.stringify(r.error).slice(0, 600)}`);
  }
  for (const [k, v] of Object.entries(out)) {
    if (k !== 'results') lines.push(`${k}: ${JSON.stringify(v).slice(0, 1500)}`);
  }
  return lines.map((l) => `# ${l}`).join('\n');
}

/** The error of a step that must have failed. */
export function failedStep(out, name) {
  const r = out.results[name];
  assert.ok(r, `step ${name} did not run`);
  assert.equal(r.ok, false, `step ${name} succeeded: ${JSON.stringify(r.value)}`);
  return r.error;
}

// ---------------------------------------------------------------------------
// Flow side

export function flowInput() {
  return JSON.parse(process.env.FLOW_INPUT || '{}');
}

/** What a test needs to know about a thrown error (oauth4webapi, jose, fetch). */
function errorOf(e) {
  if (!e || typeof e !== 'object') return { message: String(e) };
  const out = { name: e.name, code: e.code, message: e.message };
  for (const k of ['error', 'error_description', 'status', 'claim', 'reason']) {
    if (e[k] !== undefined) out[k] = e[k];
  }
  if (e.cause && typeof e.cause === 'object') {
    try { out.cause = JSON.parse(JSON.stringify(e.cause)); } catch { out.cause = String(e.cause); }
  }
  if (e.response && typeof e.response.status === 'number') out.status = e.response.status;
  if (!e.code && !e.error) out.stack = String(e.stack || '').split('\n').slice(0, 4).join('\n');
  return out;
}

export function steps() {
  const results = {};
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

const decodeEntities = (s) => s
  .replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>')
  .replace(/&amp;/g, '&');

/**
 * The fields a browser would submit from the first <form> of `html` (hidden
 * inputs, checked and enabled checkboxes; named text inputs are left to the
 * caller) and the form's action.
 */
export function formFields(html) {
  const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(html);
  if (!form) throw new Error(`no <form> in page: ${html.slice(0, 300)}`);
  const attrs = (tag) => Object.fromEntries([...tag.matchAll(/([a-zA-Z-]+)(?:="([^"]*)")?/g)]
    .slice(1).map((m) => [m[1].toLowerCase(), m[2] === undefined ? true : decodeEntities(m[2])]));
  const action = attrs(`<form ${form[1]}`).action;
  const fields = new URLSearchParams();
  for (const m of form[2].matchAll(/<input\b[^>]*>/gi)) {
    const a = attrs(m[0]);
    if (!a.name || a.disabled) continue;
    if (a.type === 'hidden' || (a.type === 'checkbox' && a.checked)) fields.append(a.name, a.value ?? 'on');
  }
  return { action, fields };
}

/**
 * A user agent without a browser: GETs the authorization URL, signs in, allows
 * every requested scope, and returns the 302 Location sent to the client.
 * Cookies (`__Host-` Secure ones) are kept in `jar` across calls, so a second
 * authorization with the same jar goes straight to the consent page.
 */
export async function browserlessLogin(authorizationUrl, { username, password, jar = new Map() }) {
  const go = async (url, init = {}) => {
    const headers = new Headers(init.headers || {});
    if (jar.size) headers.set('cookie', [...jar].map(([k, v]) => `${k}=${v}`).join('; '));
    const res = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const c of res.headers.getSetCookie()) {
      const [nv, ...attrs] = c.split(';');
      const i = nv.indexOf('=');
      const name = nv.slice(0, i).trim();
      if (attrs.some((x) => /^\s*max-age=0\s*$/i.test(x))) jar.delete(name); else jar.set(name, nv.slice(i + 1).trim());
    }
    return res;
  };
  const post = (action, fields) => go(new URL(action, authorizationUrl), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: fields.toString(),
  });
  const pages = [];
  let res = await go(authorizationUrl);
  for (let i = 0; i < 4; i++) {
    if (res.status === 302 || res.status === 303) {
      return { location: res.headers.get('location'), pages, cookies: [...jar.keys()] };
    }
    const html = await res.text();
    const title = (/<title>([^<]*)<\/title>/.exec(html) || [])[1];
    pages.push({ status: res.status, title, csp: res.headers.get('content-security-policy') });
    if (res.status !== 200) throw new Error(`HTTP ${res.status} on page "${title}": ${html.replace(/<style>[\s\S]*<\/style>/, '').slice(0, 600)}`);
    const { action, fields } = formFields(html);
    if (/\/login$/.test(action)) {
      fields.set('username', username);
      fields.set('password', password);
    } else if (/\/consent$/.test(action)) {
      fields.set('decision', 'allow');
    } else {
      throw new Error(`unexpected form action ${action} on page "${title}"`);
    }
    res = await post(action, fields);
  }
  throw new Error(`no redirect to the client after ${pages.length} pages: ${JSON.stringify(pages)}`);
}
