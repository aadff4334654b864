// W16: `apex mcp` against the official TypeScript SDK's McpServer, driven
// by the same SDK client (bench/README.md, W16). Prints the protocol's
// figure lines on stdout; fails (exit 1, reason on stderr) if a call fails.
//
// Usage: node bench_mcp.mjs PEER SIZE BUILD
//   PEER apex | mcp_sdk | null; SIZE the calls of the round-trip and
//   throughput runs; BUILD the build dir (bin/apex, tests/plugins/mcp_kit.so).
//   Peer null is `mcp_raw_client --serve` (stdio) and `--serve-http`
//   (HTTP, libmicrohttpd on one thread): a server that answers every
//   request at once with canned bytes, so its rows are the clients' own
//   cost (the floor no server can go under with that client); it has no
//   memory row (no sleeping tool).
//   W16_STDIO_ONLY=1: the stdio round trip only (A/B runs).
//   W16_HTTP_ONLY=sdk | raw: that HTTP run only (A/B runs); its figures
//   come from the same code as in the full run.
//   W16_CLIENT_CPU=1: also each section's client CPU per call, on stderr.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [peer, sizeArg, build] = process.argv.slice(2);
const size = Number(sizeArg);
const here = dirname(fileURLToPath(import.meta.url));
const OPEN_TASKS = Math.min(1000, size);
const IN_FLIGHT = 100;

const apexArgs = ['mcp', '--plugin-path', join(build, 'tests', 'plugins'), '--plugin', 'mcp_kit',
  '--workers', '2'];
const server = peer === 'apex'
  ? { cmd: join(build, 'bin', 'apex'), args: apexArgs, noop: 'mcp_kit.noop', sleep: 'mcp_kit.sleep' }
  : peer === 'null'
    ? { cmd: join(build, 'bench', 'mcp_raw_client'), args: ['--serve'], noop: 'noop' }
    : { cmd: process.execPath, args: [join(here, 'mcp_sdk_server.mjs')], noop: 'noop', sleep: 'sleep' };
if (process.env.APEX_W16_BIN && peer === 'apex') server.cmd = process.env.APEX_W16_BIN;
const stdioOnly = process.env.W16_STDIO_ONLY === '1';
// The HTTP server's arguments (the SDK server takes a mode word).
const httpArgs = peer === 'apex' ? [...apexArgs, '--http', '127.0.0.1:0']
  : peer === 'null' ? ['--serve-http'] : [...server.args, 'http'];

function line(figure, value, unit) {
  console.log(`peer=${peer} workload=W16 size=${size} figure=${figure} value=${Math.round(value)} unit=${unit}`);
}
// user + system time of a process, ns (from /proc; clock ticks of 10 ms).
function cpuNs(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * 1e7;
}
function rssBytes(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]) * 1024;
}
function check(r) {
  if (r.isError) throw new Error(`a call failed: ${JSON.stringify(r.content)}`);
}
const pct = (a, p) => a[Math.min(a.length - 1, Math.floor(a.length * p))];
// W16_CLIENT_CPU=1: also the client's own CPU per call (this process, all
// its threads), on stderr: what the client costs on the same 2 cores.
const clientCpu0 = () => cpuNs(process.pid);
function clientLine(what, c0, n) {
  if (process.env.W16_CLIENT_CPU === '1')
    console.error(`peer=${peer} ${what}_client_cpu_ns_per_call=${Math.round((cpuNs(process.pid) - c0) / n)}`);
}

const httpOnly = process.env.W16_HTTP_ONLY || '';

// 1. stdio: SIZE calls in a row; then OPEN_TASKS calls open at once (memory).
if (!httpOnly) {
  const transport = new StdioClientTransport({ command: server.cmd,
    args: peer === 'mcp_sdk' ? [...server.args, 'stdio'] : server.args, stderr: 'inherit' });
  const client = new Client({ name: 'w16', version: '1' });
  await client.connect(transport);
  const pid = transport.pid;
  for (let i = 0; i < Math.min(200, size); i++) check(await client.callTool({ name: server.noop, arguments: {} }));
  const lat = new Array(size);
  const c0 = cpuNs(pid);
  const k0 = clientCpu0();
  const t0 = performance.now();
  for (let i = 0; i < size; i++) {
    const s = performance.now();
    check(await client.callTool({ name: server.noop, arguments: {} }));
    lat[i] = (performance.now() - s) * 1e6;
  }
  const wall = performance.now() - t0;
  const cpu = cpuNs(pid) - c0;
  lat.sort((a, b) => a - b);
  line('stdio_p50', pct(lat, 0.5), 'ns');
  line('stdio_p99', pct(lat, 0.99), 'ns');
  line('stdio_calls_per_s', size / (wall / 1000), 'calls/s');
  line('server_cpu_ns_per_call', cpu / size, 'ns');
  clientLine('stdio', k0, size);
  if (stdioOnly) {
    await client.close();
    process.exit(0);
  }
  if (peer === 'null') { // no sleeping tool: no memory row
    await client.close();
  } else {
    // Memory: OPEN_TASKS sleeping calls in flight at once.
    // (Apex runs 2 at a time and queues the rest, the SDK server keeps them
    // all as timers: either way they are open calls the server holds.) Then
    // the client cancels them all (notifications/cancelled).
    const before = rssBytes(pid);
    const ac = new AbortController();
    const open = Array.from({ length: OPEN_TASKS }, () =>
      client.callTool({ name: server.sleep, arguments: { ms: 3000 } }, undefined,
        { signal: ac.signal, timeout: 120000 }).catch(() => null));
    await client.ping(); // every call above was read before this answer
    await new Promise((r) => setTimeout(r, 500));
    const during = rssBytes(pid);
    ac.abort('measured');
    await Promise.all(open);
    await client.ping();
    line('rss_bytes_per_open_call', (during - before) / OPEN_TASKS, 'B');
    await client.close();
  }
}

// 2. HTTP: SIZE calls, IN_FLIGHT at a time, over one session.
if (!httpOnly || httpOnly === 'sdk') {
  const child = spawn(server.cmd, httpArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
  const port = await new Promise((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      const m = err.match(/(?:listening on http:\/\/127\.0\.0\.1:|port )(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`server exited: ${err}`)));
  });
  const client = new Client({ name: 'w16', version: '1' });
  await client.connect(new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${port}/mcp`)));
  let next = 0;
  const worker = async () => {
    while (next < size) {
      next++;
      check(await client.callTool({ name: server.noop, arguments: {} }));
    }
  };
  for (let i = 0; i < 200 && i < size; i++) check(await client.callTool({ name: server.noop, arguments: {} }));
  const c0 = cpuNs(child.pid);
  const k0 = clientCpu0();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  const wall = performance.now() - t0;
  line('http_calls_per_s', size / (wall / 1000), 'calls/s');
  line('http_server_cpu_ns_per_call', (cpuNs(child.pid) - c0) / size, 'ns');
  clientLine('http', k0, size);
  await client.close();
  child.removeAllListeners('exit');
  child.kill();
}

// 3. HTTP again, with a raw client: Node's own http, keep-alive, 100 calls
// in flight, each answer read whole (JSON or an SSE stream) and checked
// for an error by text. The SDK client above costs more per call than
// Apex's server does, so its throughput is the client's; this one's own
// cost is smaller, so more of the servers' difference shows.
if (!httpOnly || httpOnly === 'raw') {
  const http = await import('node:http');
  const child = spawn(server.cmd, httpArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
  const port = await new Promise((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      const m = err.match(/(?:listening on http:\/\/127\.0\.0\.1:|port )(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`server exited: ${err}`)));
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
  let sid = null;
  const post = (body) => new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/json',
      accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' };
    if (sid) headers['mcp-session-id'] = sid;
    const req = http.request({ host: '127.0.0.1', port, path: '/mcp', method: 'POST', agent, headers },
      (res) => {
        if (!sid && res.headers['mcp-session-id']) sid = res.headers['mcp-session-id'];
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { text += d; });
        res.on('end', () => resolve({ status: res.statusCode, text }));
        res.on('error', reject);
      });
    req.on('error', reject);
    req.end(body);
  });
  const init = await post(JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: {
    protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } }));
  if (init.status !== 200 || !sid) throw new Error(`raw initialize: ${init.status} ${init.text}`);
  await post(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }));
  let id = 1;
  const rawCall = async () => {
    const r = await post(JSON.stringify({ jsonrpc: '2.0', id: id++, method: 'tools/call',
      params: { name: server.noop, arguments: {} } }));
    if (r.status !== 200 || !r.text.includes('"result"') || r.text.includes('"isError":true'))
      throw new Error(`raw call failed: ${r.status} ${r.text.slice(0, 300)}`);
  };
  for (let i = 0; i < 200 && i < size; i++) await rawCall();
  let next = 0;
  const worker = async () => {
    while (next < size) {
      next++;
      await rawCall();
    }
  };
  const c0 = cpuNs(child.pid);
  const k0 = clientCpu0();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  const wall = performance.now() - t0;
  line('raw_http_calls_per_s', size / (wall / 1000), 'calls/s');
  line('raw_http_server_cpu_ns_per_call', (cpuNs(child.pid) - c0) / size, 'ns');
  clientLine('raw_http', k0, size);
  agent.destroy();
  child.removeAllListeners('exit');
  child.kill();
}
