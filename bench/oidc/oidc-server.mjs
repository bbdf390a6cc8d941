// The token-endpoint peer of bench/token-run: oidc-provider (the OpenID-certified Node
// authorization server) issuing client_credentials access tokens as RFC 9068 JWTs signed ES256,
// to one client that authenticates with private_key_jwt (ES256), over node:https (TLS 1.3,
// keep-alive) with the certificate of fhirward's data directory.
//
//   node oidc-server.mjs --cert PEM --key PEM --client-jwks FILE [--scope "system/*.rs"]
//
// Listens on 127.0.0.1 on a free port and prints "listening https://localhost:PORT" once ready.
// Its own ES256 signing key is generated at start (in memory only). Stops on SIGTERM/SIGINT.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

function args(argv) {
  const o = { scope: 'system/*.rs', clientId: 'bench' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
    o[k] = argv[i + 1];
  }
  for (const k of ['cert', 'key', 'clientJwks']) {
    if (!o[k]) throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is required`);
  }
  return o;
}

const opt = args(process.argv.slice(2));
const clientJwks = JSON.parse(readFileSync(opt.clientJwks, 'utf8'));

// The access-token signing key: P-256, like fhirward's issuer key.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', alg: 'ES256', use: 'sig' };

const server = https.createServer({
  cert: readFileSync(opt.cert),
  key: readFileSync(opt.key),
  minVersion: 'TLSv1.3',
  keepAliveTimeout: 60_000,
});
server.maxRequestsPerSocket = 0;  // unlimited keep-alive requests per connection
server.headersTimeout = 65_000;

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `https://localhost:${port}`;
  // The resource server the tokens are for (the counterpart of fhirward's FHIR base).
  const resource = `${issuer}/fhir`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: opt.clientId,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      id_token_signed_response_alg: 'ES256',  // the only key is EC (no ID token is issued here)
      jwks: clientJwks,
      scope: opt.scope,
    }],
    jwks: { keys: [signingJwk] },
    scopes: [opt.scope],
    clientAuthMethods: ['private_key_jwt'],
    enabledJWA: { clientAuthSigningAlgValues: ['ES256'] },
    ttl: { ClientCredentials: 300 },  // fhirward's backend_token_seconds
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: opt.scope,
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
