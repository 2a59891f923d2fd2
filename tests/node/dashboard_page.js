// The live dashboard in headless Debian Chromium (playwright-core): it shows
// the workers, and a reload the driver runs appears on the page without a
// refresh (generation 2, the outcome, draining or replaced workers).
// Usage: node dashboard_page.js http://127.0.0.1:METRICS_PORT/ SCREENSHOT.png
// Prints "ready" when the driver should reload, "done" at the end.
'use strict';
const { launch } = require('./browser');

const [url, screenshot] = process.argv.slice(2);
const fail = (why) => { console.error(why); process.exit(1); };
const WAIT_MS = 20000;

(async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 800 } });
    await page.goto(url);
    await page.waitForFunction(() => document.body.dataset.generation === '1'
      && document.querySelectorAll('#workers tr[data-state="ready"]').length === 2, null, { timeout: WAIT_MS });
    console.log('ready');
    // The old worker holds a slow event, so the switch is visible: it
    // drains (or, handing its state over, is suspended) while the page looks.
    await page.waitForFunction(() => document.querySelector('#workers td.draining, #workers td.suspended') !== null
      && document.body.dataset.reloading === 'yes', null, { timeout: WAIT_MS });
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log('chromium: the switch shown during the reload');
    await page.waitForFunction(() => document.body.dataset.generation === '2', null, { timeout: WAIT_MS });
    await page.waitForFunction(() => document.getElementById('reload').textContent.startsWith('ok: 1 → 2'), null, { timeout: WAIT_MS });
    const rates = await page.$eval('#rate-in', (e) => Number(e.textContent));
    if (!(rates >= 0)) fail(`no message rate shown: ${rates}`);
    console.log(`chromium: generation 2 shown live, reload outcome shown, message rate ${rates}/s`);
    console.log('done');
  } finally {
    await browser.close();
  }
})().catch((e) => fail(String(e)));
