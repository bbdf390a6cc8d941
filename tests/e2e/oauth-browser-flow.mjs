// Child process of oauth.test.mjs: a real browser (Debian's Chromium driven by
// playwright-core) at fhirward's login and consent pages. The SMART app's
// redirect URI is a loopback one served here (http://127.0.0.1:PORT/cb).
// Input (FLOW_INPUT): base, clientId, user {username, password}, chromium.
// Writes oauth-consent.png to $FHIRWARD_ARTIFACTS (default: the OS temp dir).
// Prints one line `RESULT <json>`: step -> outcome.
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import * as oauth from 'oauth4webapi';
import { chromium } from 'playwright-core';
import { flowInput, steps } from './oauth-harness.mjs';

const input = flowInput();
const { base, user } = input;
const { step, report } = steps();

// The client's redirect endpoint.
let callbackUrl = null;
let callbackHit;
const callbackSeen = new Promise((resolve) => { callbackHit = resolve; });
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/cb') && !callbackUrl) {
    callbackUrl = new URL(req.url, `http://${req.headers.host}`);
    callbackHit(callbackUrl);
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end('<!DOCTYPE html><title>Callback</title><p>Signed in.</p>');
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const redirectUri = `http://127.0.0.1:${server.address().port}/cb`;

const codeVerifier = oauth.generateRandomCodeVerifier();
const state = oauth.generateRandomState();
const nonce = oauth.generateRandomNonce();
const url = new URL(`${base}/authorize`);
url.search = new URLSearchParams({
  response_type: 'code',
  client_id: input.clientId,
  redirect_uri: redirectUri,
  scope: 'openid fhirUser launch/patient offline_access patient/*.rs',
  state,
  nonce,
  aud: base,
  code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
  code_challenge_method: 'S256',
}).toString();

const consoleMessages = [];
const pageErrors = [];
const navigations = [];
const exchanges = [];
let browser;
let page;
const artifacts = process.env.FHIRWARD_ARTIFACTS || os.tmpdir();
const shot = path.join(artifacts, 'oauth-consent.png');

const launched = await step('launch', async () => {
  browser = await chromium.launch({ executablePath: input.chromium, args: ['--no-sandbox'], timeout: 20000 });
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  page = await context.newPage();
  page.setDefaultTimeout(10000);
  page.on('console', (m) => consoleMessages.push({ type: m.type(), text: m.text(), url: page.url() }));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  page.on('response', (r) => exchanges.push({
    method: r.request().method(), url: r.url().split('?')[0], status: r.status(), location: r.headers().location,
  }));
  page.on('requestfailed', (r) => exchanges.push({ method: r.method(), url: r.url().split('?')[0], failure: r.failure() && r.failure().errorText }));
  return browser.version();
});

if (launched.ok) {
  const login = await step('loginPage', async () => {
    const res = await page.goto(url.href);
    return { status: res.status(), title: await page.title(), csp: res.headers()['content-security-policy'] };
  });
  const consent = login.ok && await step('consentPage', async () => {
    await page.fill('#username', user.username);
    await page.fill('#password', user.password);
    const [res] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/authorize/login') && r.request().method() === 'POST'),
      page.click('button[type=submit]'),
    ]);
    await page.waitForSelector('button[name=decision][value=allow]');
    return {
      status: res && res.status(),
      title: await page.title(),
      heading: await page.textContent('h1'),
      scopes: await page.$$eval('input[type=checkbox]', (xs) => xs.map((x) => ({ value: x.value, checked: x.checked, disabled: x.disabled }))),
    };
  });
  if (consent && consent.ok) {
    await step('screenshot', async () => {
      fs.mkdirSync(artifacts, { recursive: true });
      await page.screenshot({ path: shot, fullPage: true });
      const buf = fs.readFileSync(shot);
      return { path: shot, size: buf.length, signature: buf.subarray(0, 8).toString('hex') };
    });
    // Console errors so far (login and consent pages), before the CSP probe adds one.
    await step('consoleBeforeProbe', async () => consoleMessages.filter((m) => m.type === 'error'));
    // The page's CSP is live in the browser: an image (default-src 'none') is
    // blocked and reported as a securitypolicyviolation event.
    await step('cspProbe', async () => page.evaluate(() => new Promise((resolve) => {
      document.addEventListener('securitypolicyviolation', (e) => resolve({
        effectiveDirective: e.effectiveDirective, blockedURI: e.blockedURI, disposition: e.disposition,
      }), { once: true });
      const img = document.createElement('img');
      img.src = 'data:image/gif;base64,R0lGODlhAQABAAAAACw=';
      img.alt = '';
      document.body.appendChild(img);
      setTimeout(() => resolve(null), 3000);
    })));
    const errorsBeforeAllow = consoleMessages.length;
    await step('allow', async () => {
      // Ends at the callback, or soon after the browser gives up on the consent POST.
      const consentFailed = new Promise((resolve) => {
        page.on('requestfailed', (r) => { if (r.url().includes('/authorize/consent')) setTimeout(() => resolve(null), 500); });
      });
      await page.click('button[name=decision][value=allow]');
      const hit = await Promise.race([
        callbackSeen,
        consentFailed,
        new Promise((resolve) => { setTimeout(() => resolve(null), 8000); }),
      ]);
      if (hit) await page.waitForURL((u) => u.href.startsWith(redirectUri), { timeout: 5000 }).catch(() => {});
      return {
        callback: hit ? Object.fromEntries(hit.searchParams) : null,
        pageUrl: page.url(),
        expectedState: state,
        consoleAfterAllow: consoleMessages.slice(errorsBeforeAllow),
      };
    });
    // The app's side: oauth4webapi checks the callback (state, iss) and redeems the code.
    if (callbackUrl) {
      await step('exchange', async () => {
        const issuer = new URL(base);
        const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oidc' }));
        const client = { client_id: input.clientId, token_endpoint_auth_method: 'none' };
        const params = oauth.validateAuthResponse(as, client, callbackUrl, state);
        const res = await oauth.authorizationCodeGrantRequest(as, client, oauth.None(), params, redirectUri, codeVerifier);
        const t = await oauth.processAuthorizationCodeResponse(as, client, res, { expectedNonce: nonce });
        return { token_type: t.token_type, scope: t.scope, patient: t.patient, hasIdToken: !!t.id_token };
      });
    }
  }
}

try { if (browser) await browser.close(); } catch { /* gone */ }
server.close();
report({ redirectUri, consoleMessages, pageErrors, navigations, exchanges });
process.exit(0);
