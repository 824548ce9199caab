// Drives edgecar with the official Dapr JavaScript SDK in GRPC mode, exactly as an app would.
// Usage: DAPR_GRPC_PORT=<port> node grpc.mjs <app-id> <configuration items file>
// Prints one line per check; exits non-zero on the first mismatch.
import { DaprClient, CommunicationProtocolEnum, HttpMethod, StateConcurrencyEnum } from "@dapr/dapr";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";

const [appId, configFile] = process.argv.slice(2);
const client = new DaprClient({
  daprHost: "127.0.0.1",
  daprPort: process.env.DAPR_GRPC_PORT,
  communicationProtocol: CommunicationProtocolEnum.GRPC,
  logger: { level: 0 },
});
const store = "statestore";
function ok(what) { console.log(`ok ${what}`); }

await client.start();
ok("client started in GRPC mode (sidecar health checked)");

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
ok("getBulk");
await client.state.transaction(store, [
  { operation: "upsert", request: { key: "tx-1", value: "in" } },
  { operation: "delete", request: { key: "greeting" } },
]);
assert.equal(await client.state.get(store, "tx-1"), "in");
assert.equal(await client.state.get(store, "greeting"), "");
ok("transaction");
await client.state.delete(store, "tx-1");
assert.equal(await client.state.get(store, "tx-1"), "");
ok("delete");

// ETags: getBulk returns them; a stale one is refused on save and delete, the current one works.
const firstWrite = { concurrency: StateConcurrencyEnum.CONCURRENCY_FIRST_WRITE };
const [tagged] = await client.state.getBulk(store, ["order-1"]);
assert.ok(tagged.etag, "getBulk returns an etag");
await assert.rejects(client.state.save(store, [{ key: "order-1", value: "stale", etag: "999", options: firstWrite }]));
await client.state.save(store, [{ key: "order-1", value: { item: "bolt", qty: 13 }, etag: tagged.etag, options: firstWrite }]);
assert.deepEqual(await client.state.get(store, "order-1"), { item: "bolt", qty: 13 });
const [retagged] = await client.state.getBulk(store, ["order-1"]);
assert.notEqual(retagged.etag, tagged.etag);
await assert.rejects(client.state.delete(store, "order-1", { etag: tagged.etag, ...firstWrite }));
await client.state.delete(store, "order-1", { etag: retagged.etag, ...firstWrite });
assert.equal(await client.state.get(store, "order-1"), "");
ok("etags on save and delete");

// Query (alpha): filter, sort, page.
await client.state.save(store, [
  { key: "q1", value: { state: "CA", n: 3 } },
  { key: "q2", value: { state: "WA", n: 1 } },
  { key: "q3", value: { state: "CA", n: 2 } },
]);
const page = await client.state.query(store, {
  filter: { EQ: { state: "CA" } },
  sort: [{ key: "n", order: "DESC" }],
  page: { limit: 10 },
});
assert.deepEqual(page.results.map((r) => r.key), ["q1", "q3"]);
ok("query");

const pub = await client.pubsub.publish("pubsub", "orders", { id: 7 });
assert.equal(pub.error, undefined);
ok("publish");
const bulkPub = await client.pubsub.publishBulk("pubsub", "orders", [{ id: 8 }, { id: 9 }]);
assert.deepEqual(bulkPub.failedMessages, []);
ok("bulk publish");

const echoed = await client.invoker.invoke(appId, "echo", HttpMethod.POST, { hello: "grpc" });
assert.deepEqual(echoed, { hello: "grpc" });
ok("invoke over InvokeService");

await client.binding.send("erp", "post", { order: 7 });
ok("output binding");
const blob = Buffer.from(Array.from({ length: 256 }, (_, i) => i)); // not UTF-8
const echoedBlob = await client.binding.send("erp", "post", blob, { path: "echo" });
assert.deepEqual(Buffer.from(echoedBlob.data), blob);
ok("binary output binding data, byte for byte");

assert.deepEqual(await client.secret.get("secrets", "db-password"), { "db-password": "s3cret" });
const allSecrets = await client.secret.getBulk("secrets");
assert.deepEqual(allSecrets["db-password"], { "db-password": "s3cret" });
ok("secrets");

const conf = await client.configuration.get("settings", ["threshold"]);
assert.equal(conf.items["threshold"].value, "21.5");
ok("configuration get");
let changed;
const seen = new Promise((resolve) => { changed = resolve; });
const sub = await client.configuration.subscribeWithKeys("settings", ["threshold"], async (r) => {
  if (r.items["threshold"]?.value === "30") changed();
});
await new Promise((r) => setTimeout(r, 300));
writeFileSync(configFile, "threshold: 30\n");
await Promise.race([seen, new Promise((_, no) => setTimeout(() => no(new Error("no change on the stream")), 15000))]);
await sub.stop();
ok("configuration subscribe stream");

assert.equal((await client.lock.lock("lockstore", "res", "alice", 60)).success, true);
assert.equal((await client.lock.lock("lockstore", "res", "bob", 60)).success, false);
const unlocked = await client.lock.unlock("lockstore", "res", "alice");
assert.equal(unlocked.status, 0);
ok("lock + unlock");

await client.metadata.set("color", "blue");
const md = await client.metadata.get();
assert.equal(md.id, appId);
assert.equal(md.extended["color"], "blue");
ok("metadata");

await client.sidecar.shutdown();
ok("shutdown");
console.log("all checks passed");
process.exit(0);
