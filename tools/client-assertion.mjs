#!/usr/bin/env node
// Prints an RFC 7523 client assertion (private_key_jwt) for a SMART backend
// service, signed with a PEM private key (ES256, ES384, RS384 or RS256):
//
//   node tools/client-assertion.mjs --key KEY.pem --client-id ID --token-url URL [--alg ES384] [--kid KID]
//
// Then: curl -d grant_type=client_credentials -d scope=system/Patient.rs \
//   -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
//   -d client_assertion=$(node tools/client-assertion.mjs ...) URL
//
// With --make-key FILE it instead writes a new private key (0600) to FILE and
// prints its public JWKS (for `fhirward clients add --jwks-file`).
import crypto from 'node:crypto';
import fs from 'node:fs';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const alg = args.alg || 'ES384';
const curves = { ES256: 'P-256', ES384: 'P-384' };
const hashes = { ES256: 'sha256', ES384: 'sha384', RS256: 'sha256', RS384: 'sha384' };
if (!hashes[alg]) { console.error('alg must be ES256, ES384, RS256 or RS384'); process.exit(2); }

if (args['make-key']) {
  const { privateKey, publicKey } = curves[alg]
    ? crypto.generateKeyPairSync('ec', { namedCurve: curves[alg] })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 3072 });
  fs.writeFileSync(args['make-key'], privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = crypto.createHash('sha256').update(JSON.stringify(jwk)).digest('base64url').slice(0, 16);
  process.stdout.write(JSON.stringify({ keys: [{ ...jwk, kid, alg, use: 'sig' }] }) + '\n');
  process.exit(0);
}
for (const k of ['key', 'client-id', 'token-url']) {
  if (!args[k]) { console.error(`--${k} is required`); process.exit(2); }
}
const key = crypto.createPrivateKey(fs.readFileSync(args.key));
let kid = args.kid;
if (!kid) {
  const jwk = crypto.createPublicKey(key).export({ format: 'jwk' });
  kid = crypto.createHash('sha256').update(JSON.stringify(jwk)).digest('base64url').slice(0, 16);
}
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const now = Math.floor(Date.now() / 1000);
const input = `${b64({ alg, kid, typ: 'JWT' })}.${b64({
  iss: args['client-id'], sub: args['client-id'], aud: args['token-url'],
  exp: now + 240, iat: now, jti: crypto.randomUUID(),
})}`;
const sig = crypto.sign(hashes[alg], Buffer.from(input), curves[alg] ? { key, dsaEncoding: 'ieee-p1363' } : key);
process.stdout.write(`${input}.${sig.toString('base64url')}\n`);
