// Drives `apex mcp --http` with the official TypeScript SDK client and raw
// fetch: 100 concurrent calls with progress over one session (each its own
// progress stream, all complete), a stream resumed by Last-Event-ID after
// its connection dropped, DELETE cancelling a session's calls with reason
// "disconnected", and Origin/Host checks. Exit 0 when every check holds.
//
// Usage: node sdk_http.mjs URL TMPDIR
import assert from 'node:assert/strict';
import { readFileSync, existsSync, rmSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, tmp] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// 1. 100 calls in flight on one session, each with its own progress token.
{
  const client = new Client({ name: 'apex-http-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  assert.ok(transport.sessionId, 'a session id');
  const N = 100;
  const progress = Array.from({ length: N }, () => []);
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: N }, (_, i) =>
      client.callTool(
        { name: 'mcp_kit.sleep', arguments: { ms: 200, tick_ms: 20 } },
        undefined,
        { onprogress: (p) => progress[i].push(p), timeout: 120000 })));
  const ms = performance.now() - t0;
  for (let i = 0; i < N; i++) {
    assert.equal(results[i].structuredContent.slept, 200, `call ${i} result`);
    assert.ok(progress[i].length >= 1, `call ${i} got progress`);
    for (let k = 1; k < progress[i].length; k++)
      assert.ok(progress[i][k].progress > progress[i][k - 1].progress, `call ${i} increasing`);
  }
  const total = progress.reduce((a, p) => a + p.length, 0);
  console.log(`100 concurrent calls: all done in ${ms.toFixed(0)} ms, ${total} progress notifications`);
  await client.close();
}

// Raw helpers for what the SDK hides.
const H = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' };
async function initSession() {
  const r = await fetch(url, {
    method: 'POST', headers: H,
    body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize',
      params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } }),
  });
  assert.equal(r.status, 200);
  const sid = r.headers.get('mcp-session-id');
  assert.ok(sid);
  await r.json();
  const n = await fetch(url, { method: 'POST', headers: { ...H, 'Mcp-Session-Id': sid },
    body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) });
  assert.equal(n.status, 202);
  return sid;
}
// Reads SSE events from a response until pred says stop; returns them.
async function readEvents(resp, stop) {
  const events = [];
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const raw = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev = {};
      for (const line of raw.split('\n')) {
        const c = line.indexOf(':');
        if (c <= 0) continue;
        ev[line.slice(0, c)] = line.slice(c + 1).trimStart();
      }
      if (ev.id !== undefined) events.push(ev);
      if (stop(events)) {
        await reader.cancel();
        return events;
      }
    }
  }
  return events;
}

// 2. A dropped stream resumes by Last-Event-ID: nothing lost, nothing twice.
{
  const sid = await initSession();
  const post = await fetch(url, { method: 'POST', headers: { ...H, 'Mcp-Session-Id': sid },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call',
      params: { name: 'mcp_kit.sleep', arguments: { ms: 600, tick_ms: 30 }, _meta: { progressToken: 'r' } } }) });
  assert.equal(post.status, 200);
  assert.match(post.headers.get('content-type'), /text\/event-stream/);
  // The priming event and two progress events, then the connection drops.
  const first = await readEvents(post, (e) => e.length >= 3);
  assert.equal(first[0].data, '', 'priming event first');
  const last = first.at(-1).id;
  const get = await fetch(url, { headers: { Accept: 'text/event-stream', 'Mcp-Session-Id': sid,
    'Last-Event-ID': last } });
  assert.equal(get.status, 200);
  const rest = await readEvents(get, (e) => e.some((x) => x.data && JSON.parse(x.data).id === 1));
  const seqs = [...first, ...rest].map((e) => Number(e.id.split('-')[1]));
  for (let k = 1; k < seqs.length; k++) assert.equal(seqs[k], seqs[k - 1] + 1, 'no gap, no repeat');
  const answer = JSON.parse(rest.at(-1).data);
  assert.equal(answer.result.structuredContent.slept, 600);
  console.log(`resumed after event ${last}: ${rest.length} more events, the answer last`);
  // An unknown event id is refused.
  const bad = await fetch(url, { headers: { Accept: 'text/event-stream', 'Mcp-Session-Id': sid,
    'Last-Event-ID': '999-1' } });
  assert.equal(bad.status, 404);
  await bad.body?.cancel();
}

// 3. DELETE ends the session: its running call is cancelled "disconnected".
{
  const sid = await initSession();
  const file = `${tmp}/apex-mcp-http-reason-${process.pid}`;
  const post = await fetch(url, { method: 'POST', headers: { ...H, 'Mcp-Session-Id': sid },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call',
      params: { name: 'mcp_kit.sleep', arguments: { ms: 60000, tick_ms: 10, reason_file: file },
        _meta: { progressToken: 1 } } }) });
  await readEvents(post, (e) => e.length >= 2); // running: a progress event came
  const del = await fetch(url, { method: 'DELETE', headers: { 'Mcp-Session-Id': sid } });
  assert.equal(del.status, 200);
  const t0 = performance.now();
  // The handler creates the file, then writes the reason: await the text.
  const reason = () => (existsSync(file) ? readFileSync(file, 'utf8') : '');
  for (let i = 0; i < 300 && reason() === ''; i++) await sleep(10);
  assert.equal(reason(), 'disconnected');
  rmSync(file, { force: true });
  // Well before the idle timeout (5 s) could have done it instead.
  assert.ok(performance.now() - t0 < 2500, 'the DELETE itself cancelled the call');
  const after = await fetch(url, { method: 'POST', headers: { ...H, 'Mcp-Session-Id': sid },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' }) });
  assert.equal(after.status, 404, 'the session is gone');
}

// 3b. A client that vanishes without DELETE: once its session is idle past
// --session-timeout (5 s here), its call is cancelled "disconnected" too.
{
  const sid = await initSession();
  const file = `${tmp}/apex-mcp-http-idle-${process.pid}`;
  // The session's last activity is this POST or later, so its idle timeout
  // cannot end the call before t0 + 5 s. (t0 taken after the first progress
  // event came lost up to a second of that under load and failed the bound.)
  const t0 = performance.now();
  const post = await fetch(url, { method: 'POST', headers: { ...H, 'Mcp-Session-Id': sid },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call',
      params: { name: 'mcp_kit.sleep', arguments: { ms: 60000, tick_ms: 10, reason_file: file },
        _meta: { progressToken: 1 } } }) });
  await readEvents(post, (e) => e.length >= 2); // running; then the client is gone
  const reason = () => (existsSync(file) ? readFileSync(file, 'utf8') : '');
  for (let i = 0; i < 1500 && reason() === ''; i++) await sleep(20);
  assert.equal(reason(), 'disconnected');
  rmSync(file, { force: true });
  assert.ok(performance.now() - t0 > 4000, 'not before the idle timeout');
  console.log(`idle session ended after ${(performance.now() - t0).toFixed(0)} ms`);
  const after = await fetch(url, { method: 'POST', headers: { ...H, 'Mcp-Session-Id': sid },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' }) });
  assert.equal(after.status, 404, 'the session is gone');
}

// 4. DNS rebinding protection, and the transport's refusals.
{
  const evil = await fetch(url, { method: 'POST', headers: { ...H, Origin: 'http://evil.example.com' },
    body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
  assert.equal(evil.status, 403);
  const noSession = await fetch(url, { method: 'POST', headers: H,
    body: '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' });
  assert.equal(noSession.status, 400);
  const badJson = await fetch(url, { method: 'POST', headers: H, body: '{nope' });
  assert.equal(badJson.status, 400);
  assert.equal((await badJson.json()).error.code, -32700);
  const wrongType = await fetch(url, { method: 'POST', headers: { ...H, 'Content-Type': 'text/plain' },
    body: '{}' });
  assert.equal(wrongType.status, 415);
  const huge = await fetch(url, { method: 'POST', headers: H,
    body: `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"p":"${'x'.repeat(5 << 20)}"}}` });
  assert.equal(huge.status, 413, 'a body above --max-message-bytes (4 MiB)');
  await huge.body?.cancel();
  const sid = await initSession();
  const badVer = await fetch(url, { method: 'POST',
    headers: { ...H, 'Mcp-Session-Id': sid, 'MCP-Protocol-Version': '1999-01-01' },
    body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
  assert.equal(badVer.status, 400, 'an unsupported MCP-Protocol-Version');
  const okVer = await fetch(url, { method: 'POST',
    headers: { ...H, 'Mcp-Session-Id': sid, 'MCP-Protocol-Version': '2025-11-25' },
    body: '{"jsonrpc":"2.0","id":2,"method":"ping"}' });
  assert.equal(okVer.status, 200);
  assert.deepEqual((await okVer.json()).result, {});
  const put = await fetch(url, { method: 'PUT', headers: H, body: '{}' });
  assert.equal(put.status, 405);
}
console.log('ok');
