// Drives edgecar's pub/sub with the official Dapr JavaScript SDK in HTTP mode: DaprServer
// subscribes (programmatic /dapr/subscribe, plain and rule routes), DaprClient publishes (single
// and bulk), and a callback answering RETRY gets the event again.
// Usage: DAPR_HTTP_PORT=<port> APP_PORT=<port> node pubsub.mjs
// Prints one line per check; exits non-zero on the first mismatch.
import { DaprServer, DaprClient, CommunicationProtocolEnum, DaprPubSubStatusEnum } from "@dapr/dapr";
import assert from "node:assert/strict";

const clientOptions = {
  daprHost: "127.0.0.1",
  daprPort: process.env.DAPR_HTTP_PORT,
  communicationProtocol: CommunicationProtocolEnum.HTTP,
  logger: { level: 0 },
};
const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: process.env.APP_PORT,
  clientOptions,
  logger: { level: 0 },
});
const client = new DaprClient(clientOptions);

function ok(what) { console.log(`ok ${what}`); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, f, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await f();
    if (v) return v;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const orders = [];
const widgets = [];
const others = [];
let retries = 0;
const retried = [];

await server.pubsub.subscribe("pubsub", "orders", async (data) => { orders.push(data); });
await server.pubsub.subscribeWithOptions("pubsub", "things", {
  route: { rules: [{ match: 'event.type == "widget"', path: "/widgets" }], default: "/things" },
});
server.pubsub.subscribeToRoute("pubsub", "things", "widgets", async (data) => { widgets.push(data); });
server.pubsub.subscribeToRoute("pubsub", "things", "things", async (data) => { others.push(data); });
await server.pubsub.subscribe("pubsub", "flaky", async (data) => {
  retries += 1;
  if (retries < 3) return DaprPubSubStatusEnum.RETRY;
  retried.push(data);
  return DaprPubSubStatusEnum.SUCCESS;
});
await server.start();
ok("DaprServer started");

await until("the subscriptions in the sidecar's metadata", async () => {
  const m = await client.metadata.get();
  return (m.subscriptions ?? []).length >= 3;
});
const meta = await client.metadata.get();
const things = meta.subscriptions.find((s) => s.topic === "things");
assert.equal(things.type, "PROGRAMMATIC");
assert.ok(things.rules.some((r) => r.match === 'event.type == "widget"'));
ok("metadata lists the SDK's subscriptions");

let r = await client.pubsub.publish("pubsub", "orders", { id: 1, item: "bolt" });
assert.equal(r.error, undefined);
r = await client.pubsub.publish("pubsub", "orders", "plain text");
assert.equal(r.error, undefined);
await until("two orders", () => orders.length >= 2);
assert.ok(orders.some((o) => o.id === 1 && o.item === "bolt"), JSON.stringify(orders));
assert.ok(orders.includes("plain text"), JSON.stringify(orders));
ok("publish + subscribe (JSON and text)");

r = await client.pubsub.publish("pubsub", "things",
  { specversion: "1.0", id: "w1", source: "test", type: "widget", datacontenttype: "application/json", data: { n: 1 } },
  { contentType: "application/cloudevents+json" });
assert.equal(r.error, undefined);
r = await client.pubsub.publish("pubsub", "things", { n: 2 });
assert.equal(r.error, undefined);
await until("the widget and the other thing", () => widgets.length >= 1 && others.length >= 1);
assert.deepEqual(widgets[0], { n: 1 });
assert.deepEqual(others[0], { n: 2 });
ok("routing rules");

const bulk = await client.pubsub.publishBulk("pubsub", "orders", [{ id: 2 }, "bulk text", { id: 3 }]);
assert.equal(bulk.failedMessages.length, 0, JSON.stringify(bulk));
await until("the bulk orders", () => orders.length >= 5);
assert.ok(orders.some((o) => o.id === 3));
assert.ok(orders.includes("bulk text"));
ok("publishBulk (entryID)");

await client.pubsub.publish("pubsub", "flaky", { try: "again" });
await until("the retried event", () => retried.length >= 1);
assert.equal(retries, 3);
ok("RETRY redelivers");

const bad = await client.pubsub.publish("nope", "orders", { id: 9 });
assert.ok(bad.error, "publishing to an unknown pubsub must fail");
ok("unknown pubsub is an error");

await server.stop();
console.log("all checks passed");
process.exit(0);
