// Headless Debian Chromium for the page tests, with the flags this machine
// needs (no sandbox as root; no background networking, which the closed
// network would refuse over and over).
'use strict';
const { chromium } = require('playwright-core');

exports.launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
