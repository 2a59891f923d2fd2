// Two browser pages (headless Debian Chromium, driven by playwright-core)
// find each other on the matchmaker's page and both show the peer's name
// and the rule that matched them. Then Ada searches again and the driver
// stops the server under her: the page must say the search closed early
// (it used to keep showing "waiting" once a first match had set data-peer).
// Usage: node matchmaker_page.js http://127.0.0.1:PORT/ SECRET
// Prints "searching again" when the driver should stop the server.
'use strict';
const { launch } = require('./browser');

const [url, secret] = process.argv.slice(2);
const fail = (why) => { console.error(why); process.exit(1); };
const WAIT_MS = 20000;
const result = (page) => page.$eval('#result', (el) => ({ text: el.textContent, ...el.dataset }));

(async () => {
  const browser = await launch();
  try {
    const players = [['Ada', 'f'], ['Bob', 'm']];
    const pages = [];
    for (const [name, gender] of players) {
      const page = await browser.newPage();
      await page.goto(url);
      await page.fill('#name', name);
      await page.selectOption('#gender', gender);
      await page.selectOption('#game', 'chess');
      await page.fill('#secret', secret);
      pages.push(page);
    }
    for (const page of pages) await page.click('#find');
    const seen = [];
    for (const page of pages) {
      await page.waitForFunction(() => document.getElementById('result').dataset.state === 'matched', null, { timeout: WAIT_MS });
      const shown = await result(page);
      if (shown.rules !== 'opposite-gender' || !shown.text.includes('by the rule opposite-gender')) {
        fail(`the rule is not shown after a match: ${JSON.stringify(shown)}`);
      }
      seen.push(shown.peer);
    }
    if (seen[0] !== 'Bob' || seen[1] !== 'Ada') fail(`pages saw ${JSON.stringify(seen)}`);
    console.log(`chromium: Ada matched ${seen[0]}, Bob matched ${seen[1]}, rule shown`);

    const ada = pages[0];
    await ada.click('#find');
    await ada.waitForFunction(() => document.getElementById('result').dataset.state === 'waiting', null, { timeout: WAIT_MS });
    console.log('searching again');
    try {
      await ada.waitForFunction(() => document.getElementById('result').textContent.startsWith('Closed ('), null, { timeout: WAIT_MS });
    } catch (e) {
      fail(`the early close was not reported: ${JSON.stringify(await result(ada))}`);
    }
    const shown = await result(ada);
    if (shown.peer !== undefined) fail(`a new search still shows the last peer: ${JSON.stringify(shown)}`);
    console.log(`chromium: early close reported: ${shown.text}`);
  } finally {
    await browser.close();
  }
})().catch((e) => fail(e.stack || String(e)));
