// Decodes OTLP/JSON lines (one ExportTraceServiceRequest a line) with the
// OpenTelemetry protobuf definitions as the OpenTelemetry JS project
// generated them (protobufjs static code in @opentelemetry/otlp-transformer
// 0.57's build/src/generated/root.js), and checks the span structure of a
// task that ran three attempts: two transient failures, then a timeout.
//
// Usage: node decode_otlp.js MODULES_DIR SPANS_FILE TRACE_ID PARENT_SPAN_ID
//
// Each request goes JSON -> message (fromObject) -> protobuf bytes (encode)
// -> message (decode) -> JSON (toObject), and must come back as it went in
// (defaults aside): a field the schema does not know, or a value of the
// wrong type, would not. OTLP/JSON differs from the plain protobuf JSON
// mapping only in the ids, which are hex, not base64
// (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): those
// three fields are converted, and checked to be hex of the right length.
'use strict';
const fs = require('fs');
const path = require('path');
const [modules, file, wantTrace, wantParent] = process.argv.slice(2);
const root = require(path.join(modules, 'node_modules/@opentelemetry/otlp-transformer/build/src/generated/root.js'));
const Req = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
const IDS = { traceId: 32, spanId: 16, parentSpanId: 16 };

function fail(msg) { console.error('decode_otlp: ' + msg); process.exit(1); }

function idsToBytes(v) {
  if (Array.isArray(v)) return v.map(idsToBytes);
  if (v === null || typeof v !== 'object') return v;
  const out = {};
  for (const [k, x] of Object.entries(v)) {
    if (k in IDS) {
      if (typeof x !== 'string' || !new RegExp(`^[0-9a-f]{${IDS[k]}}$`).test(x))
        fail(`${k} ${JSON.stringify(x)}: want ${IDS[k]} lowercase hex digits`);
      out[k] = Buffer.from(x, 'hex');
    } else out[k] = idsToBytes(x);
  }
  return out;
}

function bytesToHex(v) {
  if (Array.isArray(v)) return v.map(bytesToHex);
  if (v === null || typeof v !== 'object') return v;
  const out = {};
  for (const [k, x] of Object.entries(v)) out[k] = k in IDS ? Buffer.from(x, 'base64').toString('hex') : bytesToHex(x);
  return out;
}

// Drops what protobuf does not carry (default values), sorts keys.
function norm(v) {
  if (Array.isArray(v)) return v.map(norm);
  if (v === null || typeof v !== 'object') return v;
  const out = {};
  for (const k of Object.keys(v).sort()) {
    const x = norm(v[k]);
    if (x === 0 || x === '' || x === '0' || x === false || x === null) continue;
    if (Array.isArray(x) && x.length === 0) continue;
    if (typeof x === 'object' && !Array.isArray(x) && Object.keys(x).length === 0) continue;
    out[k] = x;
  }
  return out;
}

const spans = [];
const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length);
if (!lines.length) fail('no spans in ' + file);
for (const line of lines) {
  const json = JSON.parse(line);
  const bin = Req.encode(Req.fromObject(idsToBytes(json))).finish();
  const msg = Req.decode(bin);
  const back = bytesToHex(Req.toObject(msg, { longs: String, enums: Number, bytes: String }));
  const a = JSON.stringify(norm(json)), b = JSON.stringify(norm(back));
  if (a !== b) fail(`request does not survive the protobuf round trip:\n in:  ${a}\n out: ${b}`);
  for (const rs of msg.resourceSpans) {
    const svc = rs.resource.attributes.find((x) => x.key === 'service.name');
    if (!svc || !svc.value.stringValue) fail('no service.name resource attribute');
    for (const ss of rs.scopeSpans) for (const s of ss.spans) spans.push(s);
  }
}

const hex = (b) => Buffer.from(b).toString('hex');
const attr = (s, k) => {
  const a = (s.attributes || []).find((x) => x.key === k);
  return a ? (a.value.stringValue || String(a.value.intValue)) : undefined;
};
if (spans.length !== 4) fail(`want 4 spans (a task and 3 attempts), got ${spans.length}`);
const task = spans.filter((s) => !s.name.endsWith(' attempt'));
const atts = spans.filter((s) => s.name.endsWith(' attempt'));
if (task.length !== 1 || atts.length !== 3) fail('want one task span and three attempt spans');
const t = task[0];
for (const s of spans) if (hex(s.traceId) !== wantTrace) fail(`span ${s.name}: trace ${hex(s.traceId)}, want ${wantTrace}`);
if (hex(t.parentSpanId) !== wantParent) fail(`task span's parent ${hex(t.parentSpanId)}, want ${wantParent}`);
const seen = new Set();
for (const a of atts) {
  if (hex(a.parentSpanId) !== hex(t.spanId)) fail(`attempt span's parent is not the task span`);
  if (!a.status || a.status.code !== 2) fail('an attempt span is not an error');
  seen.add(attr(a, 'apex.attempt'));
  if (Number(a.startTimeUnixNano) < Number(t.startTimeUnixNano) || Number(a.endTimeUnixNano) > Number(t.endTimeUnixNano))
    fail('an attempt span lies outside its task span');
}
if (![...seen].sort().join() === '1,2,3') fail('attempts are not 1, 2, 3');
if (seen.size !== 3) fail('attempt numbers repeat');
if (!t.status || t.status.code !== 2) fail('task span status is not ERROR');
const names = (t.events || []).map((e) => e.name).join(',');
if (names !== 'apex.retry,apex.retry,apex.timeout') fail(`task span events: ${names}`);
if (attr(t, 'apex.task.state') !== 'timed_out') fail('task state is not timed_out');
console.log(`decode_otlp: ${lines.length} request(s), ${spans.length} spans decoded; ids, parents and events as expected`);
