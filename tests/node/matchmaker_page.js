// Two browser pages (headless Debian Chromium, driven by playwright-core)
// find each other on the matchmaker's page and both show the peer's name.
// Usage: node matchmaker_page.js http://127.0.0.1:PORT/ SECRET
'use strict';
const { chromium } = require('playwright-core');

const [url, secret] = process.argv.slice(2);
const fail = (why) => { console.error(why); process.exit(1); };

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
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
      await page.waitForFunction(() => document.getElementById('result').dataset.peer, null, { timeout: 20000 });
      seen.push(await page.$eval('#result', (el) => el.dataset.peer));
    }
    if (seen[0] !== 'Bob' || seen[1] !== 'Ada') fail(`pages saw ${JSON.stringify(seen)}`);
    console.log(`chromium: Ada matched ${seen[0]}, Bob matched ${seen[1]}`);
  } finally {
    await browser.close();
  }
})().catch((e) => fail(e.stack || String(e)));
