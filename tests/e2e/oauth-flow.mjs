// Child process of oauth.test.mjs: a SMART app (oauth4webapi) and a resource
// checker (jose) against fhirward's built-in authorization server.
// It runs in its own node process so that NODE_EXTRA_CA_CERTS (the server's
// development CA) applies to Node's fetch, which oauth4webapi and jose use.
// Input (FLOW_INPUT): base, patientId, user {username, password},
//   app {clientId, redirectUri}, introspector {clientId, secret},
//   backend {clientId, kid, privateJwk}.
// Prints one line `RESULT <json>`: step -> outcome.
import * as oauth from 'oauth4webapi';
import * as jose from 'jose';
import { flowInput, steps, browserlessLogin } from './oauth-harness.mjs';

const input = flowInput();
const { base, patientId, user } = input;
const issuer = new URL(base);
const { step, report } = steps();

const SCOPE = 'openid fhirUser launch/patient offline_access patient/*.rs';
const app = { client_id: input.app.clientId, token_endpoint_auth_method: 'none' };
const introspector = { client_id: input.introspector.clientId, token_endpoint_auth_method: 'client_secret_basic' };
const introspectorAuth = oauth.ClientSecretBasic(input.introspector.secret);
const jar = new Map(); // the user's browser cookies, shared by both authorizations

const claimsOf = (jwt) => jose.decodeJwt(jwt);
const readPatient = async (accessToken, options) => {
  const res = await oauth.protectedResourceRequest(accessToken, 'GET', new URL(`${base}/Patient/${patientId}`),
    new Headers({ accept: 'application/fhir+json' }), null, options);
  const body = await res.text();
  let json;
  try { json = JSON.parse(body); } catch { /* not JSON */ }
  return { status: res.status, resourceType: json && json.resourceType, id: json && json.id, body: json ? undefined : body.slice(0, 300) };
};
/** A FHIR request whose 401 is a result, not an exception. */
const rawRead = async (headers) => {
  const res = await fetch(`${base}/Patient/${patientId}`, { headers: { accept: 'application/fhir+json', ...headers } });
  return { status: res.status, wwwAuthenticate: res.headers.get('www-authenticate') };
};
const introspect = async (token) => {
  const res = await oauth.introspectionRequest(as, introspector, introspectorAuth, token);
  return oauth.processIntrospectionResponse(as, introspector, res);
};

/** Builds an authorization URL, lets the user allow it, validates the callback. */
async function authorize(extra = {}) {
  const codeVerifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const nonce = oauth.generateRandomNonce();
  const url = new URL(as.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: app.client_id,
    redirect_uri: input.app.redirectUri,
    scope: SCOPE,
    state,
    nonce,
    aud: base,
    code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    ...extra,
  }).toString();
  const login = await browserlessLogin(url.href, { ...user, jar });
  const callback = new URL(login.location);
  // Checks state and, since discovery says authorization_response_iss_parameter_supported, iss.
  const params = oauth.validateAuthResponse(as, app, callback, state);
  return { codeVerifier, nonce, state, callback: callback.href, params, pages: login.pages, cookies: login.cookies };
}

// --- 1. discovery ----------------------------------------------------------
let as;
await step('discovery', async () => {
  as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oidc' }));
  return as;
});
await step('smartConfiguration', async () => {
  const res = await fetch(`${base}/.well-known/smart-configuration`);
  return { status: res.status, json: await res.json() };
});

if (as) {
  // --- 2. authorization code + PKCE (public SMART app) ---------------------
  let a;
  await step('authorize', async () => {
    a = await authorize();
    return { ...a, params: Object.fromEntries(a.params) };
  });
  let tokens;
  if (a) {
    await step('codeGrant', async () => {
      const res = await oauth.authorizationCodeGrantRequest(as, app, oauth.None(), a.params, input.app.redirectUri, a.codeVerifier);
      tokens = await oauth.processAuthorizationCodeResponse(as, app, res, { expectedNonce: a.nonce, requireIdToken: true });
      return { ...tokens, idTokenClaims: oauth.getValidatedIdTokenClaims(tokens) };
    });
    await step('codeReplay', async () => {
      const res = await oauth.authorizationCodeGrantRequest(as, app, oauth.None(), a.params, input.app.redirectUri, a.codeVerifier);
      return oauth.processAuthorizationCodeResponse(as, app, res, { expectedNonce: a.nonce });
    });
  }

  if (tokens) {
    // The code replay above revokes everything issued from that code (docs/oauth.md):
    // the rest runs on a second grant, made with the live session (consent only).
    await step('readAfterCodeReplay', async () => rawRead({ authorization: `Bearer ${tokens.access_token}` }));
    const second = await step('authorizeAgain', async () => {
      const a = await authorize();
      const res = await oauth.authorizationCodeGrantRequest(as, app, oauth.None(), a.params, input.app.redirectUri, a.codeVerifier);
      tokens = await oauth.processAuthorizationCodeResponse(as, app, res, { expectedNonce: a.nonce });
      return { pages: a.pages, token_type: tokens.token_type, scope: tokens.scope, hasRefresh: !!tokens.refresh_token };
    });
    if (!second.ok) tokens = undefined;
  }

  if (tokens) {
    // --- FHIR read with the access token -----------------------------------
    await step('fhirRead', async () => readPatient(tokens.access_token));

    // --- 3. jose verifies our tokens against /jwks --------------------------
    const JWKS = jose.createRemoteJWKSet(new URL(`${base}/jwks`));
    await step('joseAccessToken', async () => {
      const { payload, protectedHeader } = await jose.jwtVerify(tokens.access_token, JWKS, {
        issuer: base, audience: base, typ: 'at+jwt', algorithms: ['ES256'],
      });
      return { payload, protectedHeader };
    });
    await step('joseIdToken', async () => {
      const { payload, protectedHeader } = await jose.jwtVerify(tokens.id_token, JWKS, {
        issuer: base, audience: app.client_id, algorithms: ['RS256'],
      });
      return { payload, protectedHeader };
    });
    await step('joseRejectsIdTokenAsAccessToken', async () => jose.jwtVerify(tokens.id_token, JWKS, {
      issuer: base, audience: base, typ: 'at+jwt', algorithms: ['ES256'],
    }));

    // --- refresh with rotation ---------------------------------------------
    const first = tokens;
    let rotated;
    await step('refresh', async () => {
      const res = await oauth.refreshTokenGrantRequest(as, app, oauth.None(), first.refresh_token);
      rotated = await oauth.processRefreshTokenResponse(as, app, res);
      return { ...rotated, previousRefreshToken: first.refresh_token };
    });
    if (rotated) {
      await step('fhirReadAfterRefresh', async () => readPatient(rotated.access_token));
      // --- introspection (confidential client) and revocation -----------------
      await step('introspectActive', async () => introspect(rotated.access_token));
      await step('introspectRefreshActive', async () => introspect(rotated.refresh_token));
      await step('introspectByPublicClient', async () => {
        const res = await oauth.introspectionRequest(as, app, oauth.None(), rotated.access_token);
        return oauth.processIntrospectionResponse(as, app, res);
      });
      await step('revoke', async () => {
        const res = await oauth.revocationRequest(as, app, oauth.None(), rotated.access_token);
        return { status: res.status, processed: await oauth.processRevocationResponse(res) ?? null };
      });
      await step('introspectAfterRevoke', async () => introspect(rotated.access_token));
      await step('fhirReadAfterRevoke', async () => rawRead({ authorization: `Bearer ${rotated.access_token}` }));
      // --- reuse of the rotated-out refresh token ------------------------------
      await step('refreshReuse', async () => {
        const res = await oauth.refreshTokenGrantRequest(as, app, oauth.None(), first.refresh_token);
        return oauth.processRefreshTokenResponse(as, app, res);
      });
      // Reuse revokes the whole grant, the new refresh token included.
      await step('refreshAfterReuse', async () => {
        const res = await oauth.refreshTokenGrantRequest(as, app, oauth.None(), rotated.refresh_token);
        return oauth.processRefreshTokenResponse(as, app, res);
      });
      await step('introspectRefreshAfterReuse', async () => introspect(rotated.refresh_token));
    }
  }

  // --- 2. client_credentials with private_key_jwt (ES384) -------------------
  await step('clientCredentials', async () => {
    const backend = { client_id: input.backend.clientId, token_endpoint_auth_method: 'private_key_jwt' };
    const key = await jose.importJWK(input.backend.privateJwk, 'ES384');
    const clientAuth = oauth.PrivateKeyJwt({ key, kid: input.backend.kid });
    const res = await oauth.clientCredentialsGrantRequest(as, backend, clientAuth, { scope: 'system/Patient.rs' });
    const t = await oauth.processClientCredentialsResponse(as, backend, res);
    const search = await oauth.protectedResourceRequest(t.access_token, 'GET', new URL(`${base}/Patient?_count=5`),
      new Headers({ accept: 'application/fhir+json' }));
    const bundle = await search.json();
    const other = await fetch(`${base}/Observation?_count=1`, { headers: { authorization: `Bearer ${t.access_token}`, accept: 'application/fhir+json' } });
    return {
      token: { ...t, access_token: undefined },
      claims: claimsOf(t.access_token),
      search: { status: search.status, resourceType: bundle.resourceType, type: bundle.type, ids: (bundle.entry || []).map((e) => e.resource.id) },
      outOfScope: other.status,
    };
  });

  // --- 4. DPoP-bound tokens ------------------------------------------------
  await step('dpop', async () => {
    const keyPair = await oauth.generateKeyPair('ES256');
    const DPoP = oauth.DPoP(app, keyPair);
    const a = await authorize();
    const grant = () => oauth.authorizationCodeGrantRequest(as, app, oauth.None(), a.params, input.app.redirectUri, a.codeVerifier, { DPoP });
    let t;
    let nonceRetry = false;
    try {
      t = await oauth.processAuthorizationCodeResponse(as, app, await grant(), { expectedNonce: a.nonce });
    } catch (e) {
      if (!oauth.isDPoPNonceError(e)) throw e;
      nonceRetry = true; // the handle cached the DPoP-Nonce; try once more
      t = await oauth.processAuthorizationCodeResponse(as, app, await grant(), { expectedNonce: a.nonce });
    }
    const read = await readPatient(t.access_token, { DPoP });
    const asBearer = await rawRead({ authorization: `Bearer ${t.access_token}` });
    // Refresh of a DPoP-bound public grant, with the same key.
    let refreshed;
    const refresh = () => oauth.refreshTokenGrantRequest(as, app, oauth.None(), t.refresh_token, { DPoP });
    try {
      refreshed = await oauth.processRefreshTokenResponse(as, app, await refresh());
    } catch (e) {
      if (!oauth.isDPoPNonceError(e)) throw e;
      refreshed = await oauth.processRefreshTokenResponse(as, app, await refresh());
    }
    return {
      nonceRetry,
      token_type: t.token_type,
      cnf: claimsOf(t.access_token).cnf,
      thumbprint: await DPoP.calculateThumbprint(),
      read,
      asBearer,
      refreshed: { token_type: refreshed.token_type, cnf: claimsOf(refreshed.access_token).cnf },
    };
  });
}

report({});
