// mqtt.js (5.x) against the broker, one scenario per run; prints a JSON
// line and exits 0 only if the scenario held. Used by io/tests/mqttjs.rs.
//   roundtrip: subscribe at QoS 2, publish one message at each QoS to
//              itself, all three come back (MQTT 5 or 3.1.1, plain or TLS
//              with a client certificate).
//   session:   a persistent session (MQTT 5, Session Expiry 300) gets a
//              QoS 1 message published while it was offline, and a
//              retained message reaches a later subscriber with RETAIN set.
//   will:      a client that vanishes without DISCONNECT has its will
//              published to another client.
import fs from "node:fs";
import mqtt from "mqtt";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
}
const url = `${args.ca ? "mqtts" : "mqtt"}://127.0.0.1:${args.port}`;
const base = {
  protocolVersion: args.protocol === "311" ? 4 : 5,
  reconnectPeriod: 0,
  connectTimeout: 10_000,
  keepalive: 30,
};
if (args.ca) {
  Object.assign(base, {
    ca: fs.readFileSync(args.ca),
    cert: fs.readFileSync(args.cert),
    key: fs.readFileSync(args.key),
    rejectUnauthorized: true,
  });
}
const id = args["client-id"];

// Connects; resolves with the client and its CONNACK. Listeners added by
// `collect` before this resolves see messages that follow the CONNACK.
function connect(clientId, extra = {}) {
  const client = mqtt.connect(url, { ...base, clientId, ...extra });
  const connected = new Promise((resolve, reject) => {
    client.once("connect", (connack) => resolve(connack));
    client.once("error", reject);
  });
  return { client, connected };
}

function collect(client, n) {
  const got = [];
  return new Promise((resolve) => {
    client.on("message", (topic, payload, packet) => {
      got.push({ topic, qos: packet.qos, retain: packet.retain, payload: payload.toString() });
      if (got.length >= n) resolve(got);
    });
  });
}

function within(ms, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function roundtrip() {
  const { client, connected } = connect(id);
  await connected;
  const topic = `mqttjs/${id}`;
  await client.subscribeAsync(topic, { qos: 2 });
  const arriving = collect(client, 3);
  for (const qos of [0, 1, 2]) await client.publishAsync(topic, `qos${qos}`, { qos });
  const got = await within(10_000, arriving);
  await client.endAsync();
  const seen = got.map((m) => `${m.qos}:${m.payload}`).sort();
  return { got, ok: JSON.stringify(seen) === JSON.stringify(["0:qos0", "1:qos1", "2:qos2"]) };
}

async function session() {
  const topic = `mqttjs/${id}/queued`;
  const persistent = { clean: false, properties: { sessionExpiryInterval: 300 } };
  const first = connect(id, persistent);
  await first.connected;
  await first.client.subscribeAsync(topic, { qos: 1 });
  await first.client.endAsync();

  const pub = connect(`${id}-pub`);
  await pub.connected;
  await pub.client.publishAsync(topic, "while offline", { qos: 1 });
  await pub.client.publishAsync(`mqttjs/${id}/retained`, "kept", { qos: 1, retain: true });
  await pub.client.endAsync();

  const again = connect(id, persistent);
  const queued = collect(again.client, 1);
  const connack = await again.connected;
  const [offline] = await within(10_000, queued);
  await again.client.endAsync();

  const late = connect(`${id}-late`);
  const retained = collect(late.client, 1);
  await late.connected;
  await late.client.subscribeAsync(`mqttjs/${id}/retained`, { qos: 1 });
  const [kept] = await within(10_000, retained);
  await late.client.endAsync();
  const ok =
    connack.sessionPresent === true &&
    offline.payload === "while offline" &&
    offline.qos === 1 &&
    kept.payload === "kept" &&
    kept.retain === true;
  return { sessionPresent: connack.sessionPresent, offline, kept, ok };
}

async function will() {
  const topic = `mqttjs/${id}/will`;
  const watcher = connect(`${id}-watcher`);
  await watcher.connected;
  await watcher.client.subscribeAsync(topic, { qos: 1 });
  const arriving = collect(watcher.client, 1);
  const doomed = connect(id, { will: { topic, payload: "gone", qos: 1, retain: false } });
  await doomed.connected;
  // No DISCONNECT: the socket just goes, as when a device loses power.
  doomed.client.stream.destroy();
  const [got] = await within(10_000, arriving);
  await watcher.client.endAsync();
  doomed.client.end(true);
  return { got, ok: got.payload === "gone" && got.topic === topic };
}

const scenarios = { roundtrip, session, will };
try {
  const result = await scenarios[args.scenario]();
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e) }));
  process.exit(1);
}
