// A real OpenID Connect provider for the console's sign-in tests: the certified `oidc-provider`
// package with its development login pages (any password), on a free loopback port.
//
//   node provider.mjs REDIRECT_URI CLIENT_SECRET
//
// prints one JSON line `{"issuer": "http://127.0.0.1:PORT"}` once it listens, then serves until
// its standard input closes (the test ends), so it never outlives the test that started it.
import http from "node:http";
import Provider from "oidc-provider";

const [redirectUri, clientSecret] = process.argv.slice(2);
if (!redirectUri || !clientSecret) {
  console.error("usage: node provider.mjs REDIRECT_URI CLIENT_SECRET");
  process.exit(2);
}

// Who may sign in, and the groups the provider releases for them. `groups` goes out through the
// user-info endpoint (the provider keeps claims out of the ID token when an access token is issued),
// so the console's fallback to user-info is exercised; `mallory` has no group latchkey knows.
const accounts = {
  alice: { name: "Alice Approver", groups: ["security-approvers"] },
  sam: { name: "Sam Security", groups: ["staff", "security-approvers"] },
  dana: { name: "Dana Desk", groups: ["facilities"] },
  vic: { name: "Vic Viewer", groups: ["staff"] },
  mallory: { name: "Mallory", groups: ["sales"] },
};

const server = http.createServer();
server.listen(0, "127.0.0.1", () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: "latchkey-console",
        client_secret: clientSecret,
        redirect_uris: [redirectUri],
        grant_types: ["authorization_code"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      },
    ],
    claims: {
      openid: ["sub"],
      profile: ["name", "preferred_username"],
      email: ["email"],
      groups: ["groups"],
    },
    scopes: ["openid", "profile", "email", "groups"],
    pkce: { required: () => true },
    cookies: { keys: ["latchkey-test-only"] },
    features: { devInteractions: { enabled: true } },
    async findAccount(_ctx, id) {
      const known = accounts[id];
      if (!known) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: id,
            name: known.name,
            email: `${id}@example.test`,
            groups: known.groups,
          };
        },
      };
    },
  });
  // The development pages warn on every start; the test's output has no use for it.
  provider.on("server_error", (_ctx, err) => console.error("provider error:", err));
  server.on("request", provider.callback());
  console.log(JSON.stringify({ issuer }));
});

process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
