// Two browser pages (headless Debian Chromium, driven by playwright-core)
// in one room of the chat example. They chat, see each other in the
// presence list, and see each other typing. Then page B's network drops:
// a TCP proxy in front of the server (here, so the cut is real: the
// browser's socket gets a reset, and its reconnects are refused for a
// while) cuts it while page A sends several messages. When the network
// is back, B reconnects with its position and shows every message, none
// twice, with `recovered` true.
// Usage: node chat_page.js http://127.0.0.1:PORT/
'use strict';
const net = require('net');
const { launch } = require('./browser');

const server = new URL(process.argv[2]);
const fail = (why) => { console.error(why); process.exit(1); };
const WAIT_MS = 20000;
const AWAY = ['away 1', 'away 2', 'away 3', 'away 4', 'away 5'];

// Forwards every connection to the server; connections whose request line
// names `cutName` are reset at once while it is cut.
function proxy() {
  const state = { cut: null, sockets: new Set(), refused: 0 };
  const listener = net.createServer((client) => {
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n');
      if (end === -1) return;
      client.off('data', onData);
      client.pause();
      const line = head.subarray(0, end).toString();
      const isCut = state.cut !== null && line.includes(`name=${state.cut}`);
      if (isCut) {
        state.refused += 1;
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(Number(server.port), server.hostname, () => {
        upstream.write(head);
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      const pair = { line, client, upstream };
      state.sockets.add(pair);
      const drop = () => { state.sockets.delete(pair); client.destroy(); upstream.destroy(); };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    };
    client.on('data', onData);
    client.on('error', () => client.destroy());
  });
  return new Promise((resolve) => listener.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${listener.address().port}/`,
    // The network drops for `name`: its open sockets are reset (RST, no
    // WebSocket close) and new ones refused until `restore`.
    cut(name) {
      state.cut = name;
      for (const pair of [...state.sockets]) {
        if (pair.line.includes(`name=${name}`)) {
          pair.client.resetAndDestroy();
          pair.upstream.resetAndDestroy();
        }
      }
    },
    restore() { state.cut = null; },
    refused: () => state.refused,
    close: () => listener.close(),
  })));
}

const chats = (page) => page.$$eval('#messages li.chat', (items) => items.map((li) => ({
  from: li.querySelector('.from').textContent,
  text: li.lastChild.textContent,
  elements: li.querySelectorAll('*').length,
})));
const texts = async (page) => (await chats(page)).map((c) => c.text);
const presence = (page) => page.$$eval('#presence li', (items) => items.map((li) => li.textContent));
const status = (page) => page.$eval('#status', (el) => ({ ...el.dataset, text: el.textContent }));

async function waitFor(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

(async () => {
  const network = await proxy();
  const browser = await launch();
  try {
    const pages = {};
    for (const name of ['Ada', 'Bea']) {
      const page = await browser.newPage();
      await page.goto(`${network.url}?room=lobby&name=${name}`);
      await page.waitForFunction(() => document.getElementById('status').dataset.state === 'open', null, { timeout: WAIT_MS });
      pages[name] = page;
    }
    const { Ada: a, Bea: b } = pages;
    for (const page of [a, b]) {
      await waitFor('both names in the presence list', async () => JSON.stringify(await presence(page)) === '["Ada","Bea"]');
    }
    console.log('chromium: presence shows Ada and Bea on both pages');

    await say(a, 'hello <b>from</b> Ada');
    await waitFor('Ada\'s line on both pages', async () => (await texts(b)).length === 1 && (await texts(a)).length === 1);
    await say(b, 'hi Ada');
    for (const page of [a, b]) {
      await waitFor('both lines', async () => (await texts(page)).length === 2);
      const [first, second] = await chats(page);
      // One element (the name): the <b> in the text must stay characters.
      if (first.elements !== 1) fail(`markup was interpreted: ${JSON.stringify(first)}`);
      const lines = [first, second].map((c) => `${c.from}: ${c.text}`);
      if (JSON.stringify(lines) !== '["Ada: hello <b>from</b> Ada","Bea: hi Ada"]') fail(`lines: ${JSON.stringify(lines)}`);
    }
    console.log('chromium: the pages chat; markup shows as text');

    await b.type('#text', 'typing something', { delay: 20 });
    await waitFor('Bea typing, on Ada\'s page', async () => (await a.textContent('#typing')) === 'Bea is typing…');
    if ((await b.textContent('#typing')) !== '') fail('a page shows its own typing');
    await b.fill('#text', '');
    console.log('chromium: typing indicator shown on the other page');

    network.cut('Bea');
    await waitFor('Bea\'s page to notice the cut', async () => (await status(b)).state !== 'open');
    for (const text of AWAY) await say(a, text);
    const expected = ['hello <b>from</b> Ada', 'hi Ada', ...AWAY];
    await waitFor('Ada\'s page to show her lines', async () => JSON.stringify(await texts(a)) === JSON.stringify(expected));
    await waitFor('a refused reconnect', async () => network.refused() > 0);
    const during = await texts(b);
    if (during.length !== 2) fail(`Bea's page got messages while cut off: ${JSON.stringify(during)}`);
    console.log(`chromium: Bea cut off while Ada sent ${AWAY.length} (${network.refused()} reconnects refused)`);

    network.restore();
    await waitFor('Bea back, with every message', async () => (await status(b)).state === 'open' && (await texts(b)).length >= expected.length);
    await say(a, 'welcome back');
    expected.push('welcome back');
    await waitFor('the line after the reconnect', async () => (await texts(b)).includes('welcome back'));
    const shown = await texts(b);
    if (JSON.stringify(shown) !== JSON.stringify(expected)) fail(`Bea's page shows ${JSON.stringify(shown)}, want ${JSON.stringify(expected)}`);
    const after = await status(b);
    if (after.recovered !== 'true') fail(`the reconnect did not recover: ${JSON.stringify(after)}`);
    const notice = await b.textContent('#notice');
    if (notice !== '') fail(`a notice after a recovered reconnect: ${notice}`);
    await waitFor('presence after the reconnect', async () => JSON.stringify(await presence(a)) === '["Ada","Bea"]');
    const duplicates = await b.evaluate(() => window.chat.client.duplicates);
    console.log(`chromium: Bea recovered: ${shown.length} messages, each once, in order (duplicates dropped by the client: ${duplicates})`);
  } finally {
    await browser.close();
    network.close();
  }
})().catch((e) => fail(e.stack || String(e)));
