// Helpers for the tests of the built-in authorization server (docs/oauth.md).
// Node 20 built-ins only. Used by oauth-authorize.test.mjs and oauth-clients.test.mjs:
// keep these exports stable.
//
//   OAUTH_CONFIG                  config text: fast argon2 ([oauth] section, nothing else)
//   oauthConfig(extra)            an `[oauth]` section: OAUTH_CONFIG's values overridden/extended by extra,
//                                 e.g. oauthConfig({ session_idle_seconds: 10 }) (append other sections yourself)
//   CookieJar                     cookies of one "browser": jar.store(res), jar.header(), jar.get(name),
//                                 jar.set(name, value), jar.delete(name), jar.names()
//   Browser / newBrowser(srv)     a cookie jar bound to a server: b.get(path), b.post(path, form) ->
//                                 request() result plus .page (parsePage); b.jar
//   parsePage(html)               { kind: 'login'|'totp'|'consent'|'error'|'other', action, hidden
//                                   ({request, csrf, ...}), error (text of the alert), scopes (consent:
//                                   [{scope, required, checked}]), title }
//   pkce()                        { verifier, challenge } (S256, 43-char verifier from 32 random bytes)
//   s256(verifier)                base64url(SHA-256(verifier))
//   formBody(obj | [[k, v], ...]) application/x-www-form-urlencoded text (arrays repeat the key)
//   authorizeQuery(params)        '/authorize?...' for a params object (undefined values dropped)
//   authorizeParams(srv, o)       the standard parameters: response_type=code, client_id, redirect_uri, scope,
//                                 state, nonce, aud=srv.base, code_challenge(+method S256); o.extra overrides
//   parseLocation(res)            { url, params (plain object of the query), base (without query) } of a 302
//   authorize(srv, o)             drives /authorize -> login -> (totp) -> consent -> redirect. Options:
//                                   browser (default new), clientId, redirectUri, scope, state, nonce, launch,
//                                   extra (more/overriding authorize params; null deletes one), method ('GET'|'POST'),
//                                   username, password, totp (code string or function() -> code),
//                                   decision ('allow'|'deny'), uncheck (scopes to untick), stopAt
//                                   ('login'|'totp'|'consent': return the page response instead of submitting)
//                                 returns { code, state, iss, location, params, verifier, challenge, browser,
//                                   pages: [kinds seen], res (last response) }; throws with details when the
//                                   flow does not end in a redirect with a code (unless decision=deny/stopAt).
//   tokenRequest(srv, form, o)    POST form to o.path (default /token); o.headers, o.basic=[id, secret]
//   exchangeCode(srv, o)          authorization_code grant: { clientId, code, redirectUri, verifier } (null omits)
//   refreshGrant(srv, o)          refresh_token grant: { clientId, refreshToken, scope }
//   revokeToken(srv, o)           /revoke: { clientId, token, tokenTypeHint }
//   codeFlowTokens(srv, o)        authorize(...) then exchangeCode(...): { flow, res, json }
//   decodeJwt(jwt)                { header, payload }
//   verifyJwtWithJwks(jwt, jwks)  true when a JWKS key (by kid) verifies the signature (ES256/RS256)
//   base32Decode(s), hotp(key, counter), totp(secretB32, timeSeconds = now, step offset = 0)
//   totpSecretFromUri(uri)        the base32 secret of an otpauth:// URI
//   addUser(srv, o)               `users add`: { username, fhirUser, password, totp, roles } -> { password, totpUri, totpSecret }
//   addClient(srv, o)             `clients add`: { clientId, scope, redirectUris: [], auth, grantTypes: [], name,
//                                   noRotateRefresh, args: [more CLI args] } -> { clientSecret, stdout }
//   createLaunch(srv, o)          `launch create`: { patient, encounter, ttl } -> launch id
//   cli(args, o)                  runCli asserting exit 0; returns stdout
//   auditRecords(srv, filter)     parsed audit records (DATA/audit/audit.db) matching filter {action, outcome, ...}
//   oauthDb(srv), oauthSql(srv, sql)   path of DATA/db/oauth.db; run SQL on it
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { request, runCli, sqlite, describeRes } from './lib.mjs';

export const OAUTH_CONFIG = '[oauth]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n';

export function oauthConfig(extra = {}) {
  const values = { argon2_memory_kib: 8192, argon2_iterations: 1, ...extra };
  let text = '[oauth]\n';
  for (const [k, v] of Object.entries(values)) text += `${k} = ${typeof v === 'string' ? JSON.stringify(v) : v}\n`;
  return text;
}

// ---------------------------------------------------------------------------
// Cookies

export class CookieJar {
  constructor() { this.cookies = new Map(); }

  /** Takes the Set-Cookie headers of a response (Max-Age<=0 deletes). */
  store(res) {
    let list = res.headers['set-cookie'] || [];
    if (!Array.isArray(list)) list = [list];
    for (const line of list) {
      const parts = line.split(';').map((p) => p.trim());
      const eq = parts[0].indexOf('=');
      if (eq <= 0) continue;
      const name = parts[0].slice(0, eq);
      const value = parts[0].slice(eq + 1);
      const attrs = {};
      for (const a of parts.slice(1)) {
        const i = a.indexOf('=');
        attrs[(i < 0 ? a : a.slice(0, i)).toLowerCase()] = i < 0 ? true : a.slice(i + 1);
      }
      const maxAge = attrs['max-age'] !== undefined ? Number(attrs['max-age']) : undefined;
      if (maxAge !== undefined && maxAge <= 0) { this.cookies.delete(name); continue; }
      this.cookies.set(name, { value, attrs, expires: maxAge !== undefined ? Date.now() + maxAge * 1000 : undefined });
    }
  }

  /** The Cookie header for an https request to the server ('' when empty). */
  header() {
    const now = Date.now();
    const out = [];
    for (const [name, c] of this.cookies) {
      if (c.expires !== undefined && c.expires <= now) continue;
      out.push(`${name}=${c.value}`);
    }
    return out.join('; ');
  }

  get(name) { const c = this.cookies.get(name); return c ? c.value : undefined; }

  attrs(name) { const c = this.cookies.get(name); return c ? c.attrs : undefined; }

  set(name, value) { this.cookies.set(name, { value, attrs: {} }); }

  delete(name) { this.cookies.delete(name); }

  names() { return [...this.cookies.keys()]; }
}

// ---------------------------------------------------------------------------
// Pages

function unescapeHtml(s) {
  return s.replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

export function parsePage(html) {
  const out = { kind: 'other', action: undefined, hidden: {}, error: undefined, scopes: [], title: undefined };
  if (typeof html !== 'string') return out;
  const t = /<title>([^<]*)<\/title>/.exec(html);
  if (t) out.title = unescapeHtml(t[1]);
  const f = /<form[^>]*action="([^"]*)"/.exec(html);
  if (f) out.action = unescapeHtml(f[1]);
  for (const m of html.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g)) {
    const name = unescapeHtml(m[1]);
    if (name === 'scope') continue; // consent: required scopes, collected below
    out.hidden[name] = unescapeHtml(m[2]);
  }
  const e = /<p class="error" role="alert">([^<]*)<\/p>/.exec(html);
  if (e) out.error = unescapeHtml(e[1]);
  if (out.action === '/authorize/login') out.kind = 'login';
  else if (out.action === '/authorize/totp') out.kind = 'totp';
  else if (out.action === '/authorize/consent') out.kind = 'consent';
  else if (/<html/i.test(html)) out.kind = 'error';
  if (out.kind === 'consent') {
    for (const m of html.matchAll(/<input type="checkbox"([^>]*)>/g)) {
      const attrs = m[1];
      const v = /value="([^"]*)"/.exec(attrs);
      if (!v) continue;
      out.scopes.push({
        scope: unescapeHtml(v[1]),
        required: /\bdisabled\b/.test(attrs),
        checked: /\bchecked\b/.test(attrs),
      });
    }
  }
  return out;
}

export class Browser {
  constructor(srv) { this.srv = srv; this.jar = new CookieJar(); }

  async send(method, path, opts = {}) {
    const headers = { ...(opts.headers || {}) };
    const cookie = this.jar.header();
    if (cookie && opts.cookies !== false) headers.Cookie = cookie;
    const res = await request(this.srv, method, path, { accept: 'text/html', ...opts, headers });
    this.jar.store(res);
    res.page = parsePage(res.text);
    return res;
  }

  get(path, opts = {}) { return this.send('GET', path, opts); }

  post(path, form, opts = {}) {
    return this.send('POST', path, {
      body: typeof form === 'string' ? form : formBody(form),
      contentType: 'application/x-www-form-urlencoded',
      ...opts,
    });
  }
}

export function newBrowser(srv) { return new Browser(srv); }

// ---------------------------------------------------------------------------
// Encoding, PKCE

export function formBody(data) {
  const sp = new URLSearchParams();
  const entries = Array.isArray(data) ? data : Object.entries(data);
  for (const [k, v] of entries) {
    if (v === undefined || v === null) continue;
    if (Array.isArray(v)) for (const x of v) sp.append(k, String(x));
    else sp.append(k, String(v));
  }
  return sp.toString();
}

export function s256(verifier) {
  return crypto.createHash('sha256').update(verifier).digest('base64url');
}

export function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  return { verifier, challenge: s256(verifier) };
}

export function authorizeQuery(params) {
  return `/authorize?${formBody(params)}`;
}

export function authorizeParams(srv, o = {}) {
  const p = {
    response_type: 'code',
    client_id: o.clientId,
    redirect_uri: o.redirectUri,
    scope: o.scope,
    state: o.state ?? crypto.randomBytes(8).toString('hex'),
    nonce: o.nonce,
    aud: srv.base,
    code_challenge: o.challenge,
    code_challenge_method: 'S256',
    launch: o.launch,
  };
  for (const [k, v] of Object.entries(o.extra || {})) {
    if (v === null) delete p[k]; else p[k] = v;
  }
  for (const k of Object.keys(p)) if (p[k] === undefined) delete p[k];
  return p;
}

export function parseLocation(res) {
  const loc = res.headers.location;
  if (!loc) return undefined;
  const u = new URL(loc);
  const params = {};
  for (const [k, v] of u.searchParams) params[k] = v;
  return { url: loc, params, base: `${u.origin}${u.pathname}` };
}

// ---------------------------------------------------------------------------
// The browser flow

export async function authorize(srv, o = {}) {
  const browser = o.browser || new Browser(srv);
  const { verifier, challenge } = o.pkce || pkce();
  const params = authorizeParams(srv, { ...o, challenge });
  const pages = [];
  let res = o.method === 'POST'
    ? await browser.post('/authorize', params)
    : await browser.get(authorizeQuery(params));
  const fail = (why) => {
    throw new Error(`authorize flow (${pages.join(' -> ')}): ${why}; last response: ${describeRes(res)}`);
  };
  for (let step = 0; step < 5; step++) {
    if (res.status === 302) {
      const loc = parseLocation(res);
      const result = {
        code: loc.params.code, state: loc.params.state, iss: loc.params.iss, location: loc.url,
        params: loc.params, verifier, challenge, browser, pages, res, redirectBase: loc.base,
      };
      if (!loc.params.code && o.decision !== 'deny' && !o.allowError) fail(`redirect without a code: ${loc.url}`);
      return result;
    }
    const kind = res.page.kind;
    pages.push(`${kind}:${res.status}`);
    if (o.stopAt === kind) return { res, browser, verifier, challenge, pages, page: res.page };
    if (res.status !== 200 && !(kind === 'login' || kind === 'totp')) fail(`unexpected HTTP ${res.status}`);
    if (res.status !== 200) fail(`${kind} page refused (HTTP ${res.status}: ${res.page.error})`);
    if (kind === 'login') {
      if (o.username === undefined) fail('login page shown but no username given');
      res = await browser.post('/authorize/login', { ...res.page.hidden, username: o.username, password: o.password });
    } else if (kind === 'totp') {
      if (o.totp === undefined) fail('TOTP page shown but no totp given');
      const code = typeof o.totp === 'function' ? o.totp() : o.totp;
      res = await browser.post('/authorize/totp', { ...res.page.hidden, totp: code });
    } else if (kind === 'consent') {
      const uncheck = o.uncheck || [];
      const scopes = res.page.scopes.filter((s) => !s.required && s.checked && !uncheck.includes(s.scope)).map((s) => s.scope);
      const required = [...res.text.matchAll(/<input type="hidden" name="scope" value="([^"]*)">/g)].map((m) => unescapeHtml(m[1]));
      res = await browser.post('/authorize/consent', [
        ...Object.entries(res.page.hidden),
        ...required.map((s) => ['scope', s]),
        ...scopes.map((s) => ['scope', s]),
        ['decision', o.decision || 'allow'],
      ]);
    } else {
      fail(`unexpected page ${kind}`);
    }
  }
  return fail('too many steps');
}

// ---------------------------------------------------------------------------
// Token endpoint

export function tokenRequest(srv, form, o = {}) {
  const headers = { ...(o.headers || {}) };
  if (o.basic) {
    const [id, secret] = o.basic;
    headers.Authorization = `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  }
  return request(srv, o.method || 'POST', o.path || '/token', {
    body: typeof form === 'string' ? form : formBody(form),
    contentType: o.contentType || 'application/x-www-form-urlencoded',
    accept: 'application/json',
    headers,
  });
}

export function exchangeCode(srv, o, opts = {}) {
  return tokenRequest(srv, {
    grant_type: 'authorization_code',
    client_id: o.clientId,
    code: o.code,
    redirect_uri: o.redirectUri,
    code_verifier: o.verifier,
  }, opts);
}

export function refreshGrant(srv, o, opts = {}) {
  return tokenRequest(srv, {
    grant_type: 'refresh_token',
    client_id: o.clientId,
    refresh_token: o.refreshToken,
    scope: o.scope,
  }, opts);
}

export function revokeToken(srv, o, opts = {}) {
  return tokenRequest(srv, {
    client_id: o.clientId,
    token: o.token,
    token_type_hint: o.tokenTypeHint,
  }, { ...opts, path: '/revoke' });
}

/** authorize() and then the code exchange; asserts a 200. */
export async function codeFlowTokens(srv, o) {
  const flow = await authorize(srv, o);
  const res = await exchangeCode(srv, { clientId: o.clientId, code: flow.code, redirectUri: o.redirectUri, verifier: flow.verifier });
  assert.equal(res.status, 200, `code exchange: ${describeRes(res)}`);
  return { flow, res, json: res.json };
}

// ---------------------------------------------------------------------------
// JWT

export function decodeJwt(jwt) {
  const [h, p] = String(jwt).split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

export function verifyJwtWithJwks(jwt, jwks) {
  const [h, p, s] = String(jwt).split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'));
  const jwk = (jwks.keys || []).find((k) => k.kid === header.kid);
  if (!jwk) return false;
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  if (header.alg === 'ES256') return crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
  if (header.alg === 'RS256') return crypto.verify('sha256', data, key, sig);
  return false;
}

// ---------------------------------------------------------------------------
// TOTP (RFC 4226 / RFC 6238, SHA-1, 6 digits, 30 s)

export function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = s.toUpperCase().replace(/=+$/, '').replace(/\s+/g, '');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const i = alphabet.indexOf(ch);
    if (i < 0) throw new Error(`not base32: ${s}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

export function hotp(key, counter) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = crypto.createHmac('sha1', key).update(msg).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 1000000).padStart(6, '0');
}

export function totp(secretB32, timeSeconds = Math.floor(Date.now() / 1000), offset = 0) {
  return hotp(base32Decode(secretB32), Math.floor(timeSeconds / 30) + offset);
}

export function totpSecretFromUri(uri) {
  return new URL(uri).searchParams.get('secret');
}

// ---------------------------------------------------------------------------
// CLI set-up

export function cli(args, o = {}) {
  const r = runCli(args, o);
  assert.equal(r.code, 0, `fhirward ${args.join(' ')} failed (exit ${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export function addUser(srv, o) {
  const args = ['users', 'add', '--data-dir', srv.dataDir, '--username', o.username, '--fhir-user', o.fhirUser];
  if (o.roles) args.push('--roles', o.roles);
  if (o.totp) args.push('--totp');
  let input;
  if (o.password !== undefined) { args.push('--password-stdin'); input = `${o.password}\n`; }
  const out = cli(args, { input });
  const pw = /^password: (.+)$/m.exec(out);
  const uri = /^totp: (\S+)$/m.exec(out);
  return {
    password: o.password ?? (pw && pw[1]),
    totpUri: uri ? uri[1] : undefined,
    totpSecret: uri ? totpSecretFromUri(uri[1]) : undefined,
    stdout: out,
  };
}

export function addClient(srv, o) {
  const args = ['clients', 'add', '--data-dir', srv.dataDir, '--client-id', o.clientId, '--scope', o.scope];
  if (o.auth) args.push('--auth', o.auth);
  if (o.name) args.push('--name', o.name);
  for (const r of o.redirectUris || []) args.push('--redirect-uri', r);
  for (const g of o.grantTypes || []) args.push('--grant-type', g);
  if (o.noRotateRefresh) args.push('--no-rotate-refresh');
  args.push(...(o.args || []));
  const out = cli(args);
  const sec = /^client_secret: (\S+)$/m.exec(out);
  if (sec) srv.secrets.push(sec[1]);
  return { clientSecret: sec ? sec[1] : undefined, stdout: out };
}

export function createLaunch(srv, o) {
  const args = ['launch', 'create', '--data-dir', srv.dataDir, '--patient', o.patient];
  if (o.encounter) args.push('--encounter', o.encounter);
  if (o.ttl !== undefined) args.push('--ttl', String(o.ttl));
  return cli(args).trim().split('\n').pop().trim();
}

// ---------------------------------------------------------------------------
// Stores

export function auditRecords(srv, filter = {}) {
  const text = sqlite(`${srv.dataDir}/audit/audit.db`, 'SELECT record FROM audit_records ORDER BY seq;');
  const recs = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  return recs.filter((r) => Object.entries(filter).every(([k, v]) => r[k] === v));
}

export function oauthDb(srv) { return `${srv.dataDir}/db/oauth.db`; }

export function oauthSql(srv, sql) { return sqlite(oauthDb(srv), sql); }
