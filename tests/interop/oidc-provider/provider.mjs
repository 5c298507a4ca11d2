// A real OpenID provider for the gateway's interop tests (panva/node-oidc-provider):
// client_credentials tokens that are opaque for the resource
// https://orders.example.com and JWTs for https://jwt.orders.example.com,
// RFC 7662 introspection and RFC 7009 revocation. Listens on a free loopback
// port and prints `listening <port>` once ready.
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  scopes: ['openid', 'orders:read', 'orders:write'],
  clients: [
    {
      client_id: 'shop',
      client_secret: 'shop-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'orders:read orders:write',
    },
    {
      // The gateway's own client, used only to introspect.
      client_id: 'portcullis',
      client_secret: 'portcullis-introspection-secret',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
    },
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://orders.example.com',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'orders:read orders:write',
        audience: 'orders-api',
        accessTokenTTL: 600,
        accessTokenFormat: resource === 'https://jwt.orders.example.com' ? 'jwt' : 'opaque',
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
server.on('request', provider.callback());
console.log(`listening ${port}`);
