// The Node.js `ws` peer of `hotsock-bench fanout`: the broadcast loop a
// user would write. A member connects to `/?join=CHANNEL` and is told
// `ready`; a publisher sends `pub:CHANNEL:DATA` and every member of the
// channel gets DATA, one `send` per member.
// Usage: node fanout_ws.js PORT
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const rooms = new Map();
const server = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
server.on('connection', (ws, request) => {
  const channel = new URL(request.url, 'http://x').searchParams.get('join');
  if (channel) {
    if (!rooms.has(channel)) rooms.set(channel, new Set());
    rooms.get(channel).add(ws);
    ws.on('close', () => rooms.get(channel).delete(ws));
    ws.send('ready');
  }
  ws.on('message', (data) => {
    const text = data.toString();
    if (!text.startsWith('pub:')) return;
    const rest = text.slice(4);
    const colon = rest.indexOf(':');
    const members = rooms.get(rest.slice(0, colon));
    if (!members) return;
    const payload = rest.slice(colon + 1);
    for (const member of members) member.send(payload);
  });
});
server.on('listening', () => console.log(`node ws fan-out on 127.0.0.1:${port}`));
