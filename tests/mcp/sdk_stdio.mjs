// Drives `apex mcp` over stdio with the official TypeScript SDK client
// (code nobody here wrote): list tools, a call with progress, a cancel, a
// failing call. Exit 0 when every check holds; the first failure throws.
//
// Usage: node sdk_stdio.mjs APEX PLUGIN_DIR STRICT
//   STRICT 1: the cancel must free the worker within 50 ms (a plain
//   build); 0: within 2 s (sanitizer builds run many times slower).
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const [apex, pluginDir, strict] = process.argv.slice(2);
const cancelBoundMs = strict === '1' ? 50 : 2000;

// One worker: a call can only start once the one before it freed it.
const transport = new StdioClientTransport({
  command: apex,
  args: ['mcp', '--workers', '1', '--plugin', 'example_async', '--plugin', 'files',
         '--plugin', 'mcp_kit', '--plugin-path', pluginDir],
  stderr: 'inherit',
});
const client = new Client({ name: 'apex-sdk-test', version: '1.0.0' });
await client.connect(transport);
console.log('negotiated', client.getServerVersion());

// 1. tools/list: one tool per action, schemas from the param spec.
const { tools } = await client.listTools();
const byName = Object.fromEntries(tools.map((t) => [t.name, t]));
for (const n of ['example_async.long_task', 'files.checksum', 'mcp_kit.noop'])
  assert.ok(byName[n], `tool ${n} listed`);
const lt = byName['example_async.long_task'].inputSchema;
assert.equal(lt.type, 'object');
assert.equal(lt.properties.steps.type, 'integer');
assert.equal(lt.properties.steps.default, 10);
assert.equal(byName['files.checksum'].inputSchema.required[0], 'path');
assert.equal(byName['mcp_kit.noop'].annotations.idempotentHint, true);

// 2. A call with progress: at least five notifications, progress strictly
// increasing, total 100, then the result.
const updates = [];
const res = await client.callTool(
  { name: 'example_async.long_task', arguments: { steps: 8, step_ms: 80 } },
  undefined,
  { onprogress: (p) => updates.push(p) });
assert.ok(updates.length >= 5, `>= 5 progress notifications, got ${updates.length}`);
for (let i = 1; i < updates.length; i++)
  assert.ok(updates[i].progress > updates[i - 1].progress, 'progress strictly increasing');
assert.ok(updates.every((u) => u.total === 100), 'total 100');
assert.equal(res.isError, undefined);
assert.equal(res.structuredContent.steps, 8);
console.log('progress notifications', updates.length, 'last', updates.at(-1));

// 3. A cancel ends a five-second call: once the client's cancel is sent, a
// quick call needing the one worker completes within the bound.
const ac = new AbortController();
let running;
const started = new Promise((r) => (running = r));
const long = client.callTool(
  { name: 'example_async.long_task', arguments: { steps: 50, step_ms: 100 } },
  undefined,
  { signal: ac.signal, onprogress: () => running(), timeout: 60000 });
long.catch(() => {});
await started;
const t0 = performance.now();
ac.abort('test cancel');
const quick = await client.callTool({ name: 'mcp_kit.noop', arguments: {} });
const freedMs = performance.now() - t0;
await assert.rejects(long);
assert.equal(quick.isError, undefined);
console.log(`cancel: the worker was free again after ${freedMs.toFixed(1)} ms`);
assert.ok(freedMs < cancelBoundMs, `cancel within ${cancelBoundMs} ms, took ${freedMs} ms`);

// 4. A failing action is a tool result with isError, not a protocol error.
const bad = await client.callTool({ name: 'files.checksum', arguments: { path: '/nonexistent/apex-mcp' } });
assert.equal(bad.isError, true);
assert.equal(bad.structuredContent.error.code, 'execution');
assert.match(bad.content[0].text, /No such file/);

// 5. Bad arguments are a protocol error (-32602) naming the argument.
await assert.rejects(
  client.callTool({ name: 'example_async.long_task', arguments: { steps: 'many' } }),
  (e) => e.code === -32602 && /steps/.test(e.message));

await client.ping();
await client.close();
console.log('ok');
