"use strict";
// A client of the control plane written the way a service in another
// language would write it: nats.js for NATS and JetStream, Ajv for strict
// JSON Schema (draft 2020-12) validation. tests/test_interop.py runs it
// against a real `ControlPlane` and reads the summary it prints as JSON.
//
// What it does, with the settings in the JSON file given as argv[2]:
//   1. discovers the API through the NATS micro protocol ($SRV.INFO);
//   2. publishes a CloudEvent `interop.ping` twice with one Nats-Msg-Id (the
//      documented de-duplication key), as the `publisher` user;
//   3. reads the events stream through an unnamed JetStream consumer, as the
//      `observer` user, validating every event against `ctrlplane schema
//      events`, until the worker's `interop.pong` for that ping arrives;
//   4. calls one API endpoint, validates the reply against `ctrlplane schema
//      api`, and sends it a body that is not JSON to see the error convention.
// Every wait is bounded by `timeout_ms`; the process exits by itself.

const fs = require("node:fs");
const { connect, AckPolicy, DeliverPolicy, RequestStrategy } = require("nats");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

function readJson(path) {
  return JSON.parse(fs.readFileSync(path, "utf8"));
}

function serviceError(msg) {
  const h = msg.headers;
  if (!h || !h.has("Nats-Service-Error-Code")) {
    return null;
  }
  return { code: Number(h.get("Nats-Service-Error-Code")), message: h.get("Nats-Service-Error") };
}

async function discover(nc, cfg) {
  const found = [];
  // Every process answers $SRV.INFO: stop at the count expected, or at maxWait.
  const infos = await nc.services
    .client({ strategy: RequestStrategy.Count, maxMessages: cfg.processes, maxWait: cfg.timeout_ms })
    .info(cfg.service_name);
  for await (const info of infos) {
    found.push({ name: info.name, version: info.version, endpoints: info.endpoints.map((e) => e.subject) });
  }
  return found;
}

async function publishPing(nc, cfg) {
  const js = nc.jetstream();
  const ping = {
    specversion: "1.0",
    id: cfg.ping_id,
    source: "interop/nats.js",
    type: "interop.ping",
    time: new Date().toISOString(),
    datacontenttype: "application/json",
    data: { client: "nats.js" },
  };
  const acks = [];
  for (let i = 0; i < 2; i++) {
    const ack = await js.publish(`${cfg.prefix}.events.interop.ping`, JSON.stringify(ping), {
      msgID: `event/${ping.source}/${ping.id}`,
    });
    acks.push({ seq: ack.seq, duplicate: ack.duplicate });
  }
  return acks;
}

async function readEvents(nc, cfg, validate) {
  const jsm = await nc.jetstreamManager();
  // Unnamed: the observer may create only those (a named create could
  // rewrite a worker's durable consumer), so no ordered consumer here.
  const created = await jsm.consumers.add(cfg.stream, {
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    filter_subject: `${cfg.prefix}.events.>`,
    inactive_threshold: 30 * 1e9,
  });
  const consumer = await nc.jetstream().consumers.get(cfg.stream, created.name);
  const summary = { count: 0, types: [], invalid: [], pong: null };
  const types = new Set();
  const deadline = Date.now() + cfg.timeout_ms;
  while (summary.pong === null && Date.now() < deadline) {
    const batch = await consumer.fetch({ max_messages: 100, expires: 1000 });
    for await (const m of batch) {
      summary.count += 1;
      const event = m.json();
      if (!validate(event)) {
        summary.invalid.push({ subject: m.subject, event, errors: validate.errors });
      }
      types.add(event.type);
      if (event.type === "interop.pong" && event.data && event.data.ping === cfg.ping_id) {
        summary.pong = event;
      }
    }
  }
  summary.types = [...types].sort();
  return summary;
}

async function callApi(nc, cfg, ajv) {
  const subject = `${cfg.prefix}.api.v1.${cfg.endpoint}`;
  const reply = await nc.request(subject, JSON.stringify({}), { timeout: cfg.timeout_ms });
  const body = reply.json();
  const validate = ajv.compile({ $ref: `ctrlplane-api#/$defs/${cfg.endpoint_reply}` });
  const result = { subject, error: serviceError(reply), body, valid: validate(body), errors: validate.errors };
  const bad = await nc.request(subject, "not json", { timeout: cfg.timeout_ms });
  result.bad_request = { headers: serviceError(bad), body: bad.json() };
  return result;
}

async function main() {
  const cfg = readJson(process.argv[2]);
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  const validateEvent = ajv.compile(readJson(cfg.events_schema));
  const apiSchema = readJson(cfg.api_schema);
  ajv.addSchema(apiSchema, "ctrlplane-api");

  const observer = await connect({ servers: cfg.server, user: "observer", pass: cfg.observer_password });
  const publisher = await connect({ servers: cfg.server, user: "publisher", pass: cfg.publisher_password });
  try {
    const out = {};
    out.services = await discover(observer, cfg);
    out.acks = await publishPing(publisher, cfg);
    out.events = await readEvents(observer, cfg, validateEvent);
    out.api = await callApi(observer, cfg, ajv);
    process.stdout.write(JSON.stringify(out));
  } finally {
    await publisher.close();
    await observer.close();
  }
}

main().catch((err) => {
  process.stderr.write(`interop client failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
