// How `apex mcp --http` answers a POST (cli/mcp_http.c): a call that ends
// at once with nothing before its answer gets one JSON body; a call still
// running after a moment gets an SSE stream whose headers and priming event
// come long before its end; 200 calls in flight over 50 connections all get
// their own answers. Leaves a call waiting and a GET stream open when it
// exits: http_answers.sh then checks the server ends cleanly on SIGTERM.
// Exit 0 when every check holds.
//
// Usage: node http_answers.mjs URL TMPDIR
import assert from 'node:assert/strict';
import http from 'node:http';

const [url] = process.argv.slice(2);
const u = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });

// One request; resolves at its headers with { status, headers, ms, body(),
// first() }: ms after the request its headers came, first() resolves to
// the time its first body bytes came.
function request(method, body, headers = {}) {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method, agent,
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream',
        ...headers } }, (res) => {
      const ms = performance.now() - t0;
      let text = '';
      let markFirst;
      const first = new Promise((r) => { markFirst = r; });
      res.setEncoding('utf8');
      const done = new Promise((r, j) => {
        res.on('data', (d) => {
          if (!text) markFirst(performance.now() - t0);
          text += d;
        });
        res.on('end', () => r(text));
        res.on('error', j);
      });
      resolve({ status: res.statusCode, headers: res.headers, ms, body: () => done,
        first: () => first });
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function session(version) {
  const r = await request('POST', JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize',
    params: { protocolVersion: version, capabilities: {}, clientInfo: { name: 't', version: '1' } } }));
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /application\/json/);
  const sid = r.headers['mcp-session-id'];
  assert.ok(sid);
  await r.body();
  const n = await request('POST', JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }),
    { 'mcp-session-id': sid });
  assert.equal(n.status, 202);
  await n.body();
  return sid;
}
const call = (sid, id, name, args) => request('POST', JSON.stringify({ jsonrpc: '2.0', id,
  method: 'tools/call', params: { name, arguments: args } }), { 'mcp-session-id': sid });

// 1. A no-op call ends at once: one JSON body, its answer.
for (const version of ['2025-06-18', '2025-11-25']) {
  const sid = await session(version);
  const r = await call(sid, 1, 'mcp_kit.noop', {});
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^application\/json/, `${version}: JSON for an answer alone`);
  const a = JSON.parse(await r.body());
  assert.equal(a.id, 1);
  assert.ok(a.result.content, 'a tool result');
  assert.notEqual(a.result.isError, true);
}

// 2. A call still running gets its SSE stream early: headers and the
// priming event well before the call's 1.5 s end, the answer last.
{
  const sid = await session('2025-11-25');
  const r = await call(sid, 2, 'mcp_kit.sleep', { ms: 1500 });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/event-stream/);
  assert.ok(r.ms < 1000, `headers after ${r.ms.toFixed(0)} ms: not held until the call ended`);
  const firstMs = await r.first();
  assert.ok(firstMs < 1000, `first event after ${firstMs.toFixed(0)} ms: not held until the end`);
  const text = await r.body();
  assert.match(text, /^id: \d+-0\nretry: \d+\ndata: \n\n/, 'the priming event first');
  const events = text.split('\n\n').filter((e) => e.includes('data: {'));
  assert.equal(events.length, 1, 'one message: the answer');
  const a = JSON.parse(events[0].slice(events[0].indexOf('data: ') + 6));
  assert.equal(a.id, 2);
  assert.equal(a.result.structuredContent.slept, 1500);
}

// 3. 200 calls in flight over 50 connections: each its own answer.
{
  const sid = await session('2025-06-18');
  const rs = await Promise.all(Array.from({ length: 200 }, (_, i) =>
    call(sid, 100 + i, i % 2 ? 'mcp_kit.noop' : 'mcp_kit.sleep', i % 2 ? {} : { ms: 5 })
      .then(async (r) => ({ status: r.status, type: r.headers['content-type'], text: await r.body() }))));
  for (let i = 0; i < 200; i++) {
    assert.equal(rs[i].status, 200);
    const data = rs[i].type.startsWith('text/event-stream')
      ? rs[i].text.split('\n').filter((l) => l.startsWith('data: {')).at(-1).slice(6) : rs[i].text;
    assert.equal(JSON.parse(data).id, 100 + i, `call ${i} got its own answer`);
  }
}

// 4. Left waiting for SIGTERM: a call that runs a minute (its stream
// open, no events) and the session's GET stream.
{
  const sid = await session('2025-06-18');
  const r = await call(sid, 3, 'mcp_kit.sleep', { ms: 60000 });
  assert.match(r.headers['content-type'], /^text\/event-stream/);
  const g = await request('GET', undefined, { 'mcp-session-id': sid, accept: 'text/event-stream' });
  assert.equal(g.status, 200);
}
console.log('ok');
process.exit(0);
