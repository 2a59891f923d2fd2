// The peer in hotsock's benchmarks: a Node.js `ws` echo server, the server a
// user would most likely pick instead. Answers each text message with
// `v1:<message>` like hotsock's echo example.
// Usage: node echo_server.js PORT
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const server = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
server.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `v1:${data}`));
});
server.on('listening', () => console.log(`node ws echo on 127.0.0.1:${port}`));
