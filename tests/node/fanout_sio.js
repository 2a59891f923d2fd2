// The Socket.IO peer of `hotsock-bench fanout`: rooms as its users write
// them. A member connects with `?join=CHANNEL` (WebSocket transport), joins
// the room and gets a `ready` event; a publisher emits `pub` with the
// channel and the data, and `io.to(channel).emit('m', data)` sends it.
// Usage: node fanout_sio.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
const io = new Server({ transports: ['websocket'], perMessageDeflate: false, serveClient: false });
io.on('connection', (socket) => {
  const channel = socket.handshake.query.join;
  if (channel) {
    socket.join(channel);
    socket.emit('ready');
  }
  socket.on('pub', (room, data) => io.to(room).emit('m', data));
});
const httpServer = http.createServer();
io.attach(httpServer);
httpServer.listen(port, '127.0.0.1', () => console.log(`socket.io fan-out on 127.0.0.1:${port}`));
