// W16's peer: the official TypeScript SDK's McpServer with the tools the
// Apex peer serves (bench/README.md, W16): `noop` (returns at once) and
// `sleep` (ms milliseconds, a timer). Run by bench_mcp.mjs.
//
// Usage: node mcp_sdk_server.mjs stdio
//        node mcp_sdk_server.mjs http   (prints "port N" on stderr)
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

function makeServer() {
  const s = new McpServer({ name: 'sdk-bench', version: '1.0.0' });
  s.registerTool('noop', { description: 'Does nothing', inputSchema: {} },
    async () => ({ content: [{ type: 'text', text: '{}' }], structuredContent: {} }));
  s.registerTool('sleep', { description: 'Sleeps ms', inputSchema: { ms: z.number().int() } },
    async ({ ms }) => {
      await new Promise((r) => setTimeout(r, ms));
      return { content: [{ type: 'text', text: `{"slept":${ms}}` }], structuredContent: { slept: ms } };
    });
  return s;
}

if (process.argv[2] === 'stdio') {
  await makeServer().connect(new StdioServerTransport());
} else {
  const sessions = new Map();
  const srv = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : undefined;
    const sid = req.headers['mcp-session-id'];
    let t = sid && sessions.get(sid);
    if (!t) {
      if (sid || !body || body.method !== 'initialize') {
        res.writeHead(400).end();
        return;
      }
      t = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => sessions.set(id, t),
      });
      await makeServer().connect(t);
    }
    await t.handleRequest(req, res, body);
  });
  srv.listen(0, '127.0.0.1', () => console.error(`port ${srv.address().port}`));
}
