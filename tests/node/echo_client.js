// Third-party client check: Node `ws` against a running hotsock echo server.
// Usage: node echo_client.js ws://127.0.0.1:PORT
//
// Opens 10 connections, sends 50 numbered messages on each (pipelined), and
// checks every reply arrives once, in order, with the echo prefix; checks a
// denied handshake gets HTTP 403. Exits non-zero on any mismatch.
'use strict';
const WebSocket = require('ws');

const url = process.argv[2];
const fail = (why) => { console.error(why); process.exit(1); };
const timer = setTimeout(() => fail('timed out'), 20000);

function oneConnection(c) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/node?c=${c}`);
    let expected = 0;
    ws.on('open', () => { for (let n = 0; n < 50; n++) ws.send(`${c}:${n}`); });
    ws.on('message', (data) => {
      const want = `v1:${c}:${expected}`;
      if (data.toString() !== want) return reject(new Error(`conn ${c}: expected ${want}, got ${data}`));
      expected += 1;
      if (expected === 50) ws.close(1000);
    });
    ws.on('close', (code) => (expected === 50 ? resolve(code) : reject(new Error(`closed early with ${code}`))));
    ws.on('error', reject);
  });
}

function denied() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/?deny=1`);
    ws.on('unexpected-response', (req, res) => (res.statusCode === 403 ? resolve() : reject(new Error(`got ${res.statusCode}`))));
    ws.on('open', () => reject(new Error('a denied handshake was accepted')));
    ws.on('error', () => {});
  });
}

Promise.all([...Array(10).keys()].map(oneConnection))
  .then(denied)
  .then(() => { clearTimeout(timer); console.log('node ws: 500 messages echoed in order, deny=403 ok'); })
  .catch((e) => fail(e.message));
