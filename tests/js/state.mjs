// Drives edgecar with the official Dapr JavaScript SDK in HTTP mode, exactly as an app would.
// Usage: DAPR_HTTP_PORT=<port> [DAPR_API_TOKEN=<token>] node state.mjs
// Prints one line per check; exits non-zero on the first mismatch.
import { DaprClient, CommunicationProtocolEnum } from "@dapr/dapr";
import assert from "node:assert/strict";

const client = new DaprClient({
  daprHost: "127.0.0.1",
  daprPort: process.env.DAPR_HTTP_PORT,
  communicationProtocol: CommunicationProtocolEnum.HTTP,
  daprApiToken: process.env.DAPR_API_TOKEN,
  logger: { level: 0 },
});
const store = "statestore";

function ok(what) { console.log(`ok ${what}`); }

await client.start();
ok("client started (sidecar health checked)");
assert.equal(await client.health.isHealthy(), true);
ok("health");

await client.state.save(store, [
  { key: "order-1", value: { item: "bolt", qty: 12 } },
  { key: "greeting", value: "hello" },
]);
assert.deepEqual(await client.state.get(store, "order-1"), { item: "bolt", qty: 12 });
assert.equal(await client.state.get(store, "greeting"), "hello");
ok("save + get");

const bulk = await client.state.getBulk(store, ["order-1", "greeting"]);
const byKey = Object.fromEntries(bulk.map((e) => [e.key, e.data]));
assert.deepEqual(byKey["order-1"], { item: "bolt", qty: 12 });
assert.equal(byKey["greeting"], "hello");
ok("getBulk");

await client.state.transaction(store, [
  { operation: "upsert", request: { key: "tx-1", value: "in" } },
  { operation: "delete", request: { key: "greeting" } },
]);
assert.equal(await client.state.get(store, "tx-1"), "in");
ok("transaction");

await client.state.delete(store, "order-1");
const gone = await client.state.get(store, "order-1");
assert.ok(gone === "" || gone === undefined || gone === null, `deleted key read back as ${JSON.stringify(gone)}`);
ok("delete");

const meta = await client.metadata.get();
assert.equal(meta.id, process.env.EXPECT_APP_ID ?? "edgecar");
assert.ok(meta.components.some((c) => c.name === store && c.type === "state.sled"));
await client.metadata.set("sdk", "js");
assert.equal((await client.metadata.get()).extended.sdk, "js");
ok("metadata get + set");

await client.stop();
console.log("all checks passed");
