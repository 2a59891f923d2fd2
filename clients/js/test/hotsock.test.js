// The client's pure logic: back-off bounds, position tracking (duplicates
// dropped, gaps reported), the reconnect URL, envelope parsing. Run with
// `node --test clients/js/test/` (Node 20's built-in runner); the whole
// client against a real server is tests/node/chat_page.js in Chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  DEFAULT_BACKOFF, HotsockClient, Positions, backoffDelay, buildUrl, checkBackoff, parseEnvelope, positionsParam,
} from '../hotsock.js';

const EPOCH = '9f3a0c5e1b2d4f60';

test('back-off doubles from initialMs and never passes maxMs, whatever the attempt', () => {
  const top = () => 0; // no jitter taken off
  assert.deepEqual([0, 1, 2, 3].map((a) => backoffDelay(a, DEFAULT_BACKOFF, top)), [250, 500, 1000, 2000]);
  for (const attempt of [6, 7, 30, 31, 1000, 1e9, Infinity]) {
    assert.equal(backoffDelay(attempt, DEFAULT_BACKOFF, top), DEFAULT_BACKOFF.maxMs, `attempt ${attempt}`);
  }
});

test('jitter takes at most its fraction off, and a bad random() cannot escape the bounds', () => {
  const backoff = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(1000, 100 * 2 ** attempt);
    for (const r of [0, 0.25, 0.999, 1, -5, 7, NaN]) {
      const delay = backoffDelay(attempt, backoff, () => r);
      assert.ok(delay >= ceiling * 0.5 && delay <= ceiling, `attempt ${attempt} r ${r}: ${delay}`);
    }
  }
});

test('unusable back-off settings are refused by name', () => {
  assert.throws(() => checkBackoff({ ...DEFAULT_BACKOFF, initialMs: 0 }), /initialMs/);
  assert.throws(() => checkBackoff({ ...DEFAULT_BACKOFF, maxMs: 10 }), /maxMs/);
  assert.throws(() => checkBackoff({ ...DEFAULT_BACKOFF, factor: 0.5 }), /factor/);
  assert.throws(() => checkBackoff({ ...DEFAULT_BACKOFF, jitter: 2 }), /jitter/);
  assert.throws(() => new HotsockClient('ws://x/', { WebSocket: function WebSocket() {}, backoff: { maxMs: -1 } }), /maxMs/);
});

test('a client without a WebSocket constructor says how to give it one', () => {
  if (globalThis.WebSocket) return; // Node 22 and browsers have one
  assert.throws(() => new HotsockClient('ws://x/'), /pass one as new HotsockClient/);
});

test('publications advance the position; at or below it in the same epoch they are duplicates', () => {
  const positions = new Positions();
  positions.set('room', EPOCH, 41);
  assert.deepEqual(positions.publication('room', EPOCH, 42), { accept: true, gap: null });
  assert.deepEqual(positions.publication('room', EPOCH, 42), { accept: false, gap: null });
  assert.deepEqual(positions.publication('room', EPOCH, 40), { accept: false, gap: null });
  assert.deepEqual(positions.get('room'), { epoch: EPOCH, offset: 42 });
  assert.deepEqual(positions.publication('room', EPOCH, 43), { accept: true, gap: null });
});

test('a skipped offset is reported as a gap, then the position moves on', () => {
  const positions = new Positions({ room: { epoch: EPOCH, offset: 5 } });
  assert.deepEqual(positions.publication('room', EPOCH, 9), { accept: true, gap: { from: 6, to: 8 } });
  assert.deepEqual(positions.get('room'), { epoch: EPOCH, offset: 9 });
});

test('another epoch or an unknown channel is taken as it comes', () => {
  const positions = new Positions({ room: { epoch: EPOCH, offset: 50 } });
  assert.deepEqual(positions.publication('room', '0000000000000001', 3), { accept: true, gap: null });
  assert.deepEqual(positions.get('room'), { epoch: '0000000000000001', offset: 3 });
  assert.deepEqual(positions.publication('other', EPOCH, 7), { accept: true, gap: null });
});

test('positions refuse what the server never sends', () => {
  const positions = new Positions();
  assert.throws(() => positions.set('room', 'XYZ', 1), /bad epoch/);
  assert.throws(() => positions.set('room', EPOCH, -1), /bad offset/);
  assert.throws(() => positions.set('room', EPOCH, 1.5), /bad offset/);
});

test('the URL carries CHANNEL.EPOCH.OFFSET per channel, channel names percent-encoded', () => {
  const positions = new Positions({ 'room:lobby': { epoch: EPOCH, offset: 7 }, 'a,b&c=d.e': { epoch: '00000000000000ff', offset: 0 } });
  assert.equal(positionsParam(positions), `room%3Alobby.${EPOCH}.7,a%2Cb%26c%3Dd.e.00000000000000ff.0`);
  assert.equal(
    buildUrl('ws://h:1/chat?room=lobby&name=Ada', positions),
    `ws://h:1/chat?room=lobby&name=Ada&since=room%3Alobby.${EPOCH}.7,a%2Cb%26c%3Dd.e.00000000000000ff.0`,
  );
});

test('an old positions parameter is replaced, never repeated, and dropped when there is nothing to recover', () => {
  const one = new Positions({ r: { epoch: EPOCH, offset: 3 } });
  assert.equal(buildUrl(`ws://h/?since=r.${EPOCH}.1&room=x`, one), `ws://h/?room=x&since=r.${EPOCH}.3`);
  assert.equal(buildUrl(`ws://h/?since=r.${EPOCH}.1&room=x`, new Positions()), 'ws://h/?room=x');
  assert.equal(buildUrl('ws://h/path', new Positions()), 'ws://h/path');
  assert.equal(buildUrl('ws://h/path#frag', one), `ws://h/path?since=r.${EPOCH}.3`);
  assert.equal(buildUrl('ws://h/?sincere=1', one, 'since'), `ws://h/?sincere=1&since=r.${EPOCH}.3`);
  assert.equal(buildUrl('ws://h/?p=1', one, 'pos'), `ws://h/?p=1&pos=r.${EPOCH}.3`);
});

test('a reader splitting at the last two dots gets every channel back', () => {
  const names = ['room:lobby', 'a.b.c', 'ünï cödé', '..', 'x,y'];
  const positions = new Positions(Object.fromEntries(names.map((n, i) => [n, { epoch: EPOCH, offset: i }])));
  const back = positionsParam(positions).split(',').map((entry) => {
    const offsetAt = entry.lastIndexOf('.');
    const epochAt = entry.lastIndexOf('.', offsetAt - 1);
    return [decodeURIComponent(entry.slice(0, epochAt)), entry.slice(epochAt + 1, offsetAt), Number(entry.slice(offsetAt + 1))];
  });
  assert.deepEqual(back, names.map((n, i) => [n, EPOCH, i]));
});

test('envelopes are recognised as the server writes them; anything else is the app\'s', () => {
  assert.deepEqual(
    parseEnvelope(`{"type":"subscribed","channel":"room","epoch":"${EPOCH}","offset":41,"recovered":true}`),
    { type: 'subscribed', channel: 'room', epoch: EPOCH, offset: 41, recovered: true },
  );
  assert.deepEqual(
    parseEnvelope(`{"type":"publication","channel":"room","epoch":"${EPOCH}","offset":42,"data":"hello"}`),
    { type: 'publication', channel: 'room', epoch: EPOCH, offset: 42, binary: false, data: 'hello' },
  );
  const binary = parseEnvelope(`{"type":"publication","channel":"room","epoch":"${EPOCH}","offset":43,"data_b64":"AP8="}`);
  assert.deepEqual([binary.binary, [...binary.data]], [true, [0, 255]]);
  assert.deepEqual(parseEnvelope('{"type":"unsubscribed","channel":"room"}'), { type: 'unsubscribed', channel: 'room' });
  for (const other of ['hello', '{"kind":"chat"}', '{"type":"publication"}', '{"type":"x","channel":"c"}', '{"type":"broken',
    `{"type":"publication","channel":"c","epoch":"${EPOCH}","offset":-1,"data":"x"}`, ' {"type":"subscribed"}']) {
    assert.equal(parseEnvelope(other), null, other);
  }
});
