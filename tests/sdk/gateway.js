// Drives gcpool's gateway mode with the real Genesys JavaScript SDK
// (purecloud-platform-client-v2), run by tests/gateway_sdks.rs with NODE_PATH at the
// node_modules scripts/sdk-env.sh makes. Reads GCPOOL_HOST, GCPOOL_PORT, GCPOOL_LOGIN_PATH,
// GCPOOL_API_PATH, GCPOOL_CLIENT_ID and GCPOOL_CLIENT_SECRET; logs in with a wrong secret,
// then the right one, through the SDK's own login code, calls a few APIs and prints what
// happened as JSON (never the token).
'use strict';

const platformClient = require('purecloud-platform-client-v2');

async function main() {
  const env = process.env;
  const client = platformClient.ApiClient.instance;
  client.setGateway({
    host: env.GCPOOL_HOST,
    protocol: 'http',
    port: Number(env.GCPOOL_PORT),
    path_params_login: env.GCPOOL_LOGIN_PATH,
    path_params_api: env.GCPOOL_API_PATH,
  });
  client.setReturnExtendedResponses(true);
  const out = { sdk: 'javascript', calls: [] };

  try {
    await client.loginClientCredentialsGrant(env.GCPOOL_CLIENT_ID, 'not-the-key');
    out.wrong_secret = { status: 200 };
  } catch (e) {
    out.wrong_secret = { status: e.response && e.response.status, body: e.response && e.response.data };
  }

  const auth = await client.loginClientCredentialsGrant(env.GCPOOL_CLIENT_ID, env.GCPOOL_CLIENT_SECRET);
  out.token_length = auth.accessToken.length;
  out.expires_in_ms = auth.tokenExpiryTime - Date.now();

  const users = new platformClient.UsersApi();
  const routing = new platformClient.RoutingApi();
  for (const [op, call] of [
    ['UsersApi.getUser', () => users.getUser('u-1')],
    ['UsersApi.getUsers', () => users.getUsers({ pageSize: 2 })],
    ['RoutingApi.getRoutingQueue', () => routing.getRoutingQueue('q-1')],
  ]) {
    const answer = await call();
    out.calls.push({ op, status: answer.status, client: answer.headers['x-gcpool-client'], echo: answer.body });
  }

  // A token the SDK did not get from the login is refused: gcpool's 401, Genesys-shaped.
  client.setAccessToken('gcp1.aXZy.9999999999.AAAA');
  try {
    await users.getUser('u-1');
    out.forged = { status: 200 };
  } catch (e) {
    out.forged = { status: e.status, body: e.body };
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error('sdk run failed:', e && e.message ? e.message : e);
  process.exit(1);
});
