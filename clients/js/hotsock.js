// hotsock-client: a small browser client for a hotsock server whose
// channels use the JSON envelope (`[channels] envelope = "json"`).
//
// It keeps one WebSocket open, reconnects with bounded exponential back-off
// and jitter, tracks the last (epoch, offset) it saw per channel, drops
// publications it already has, reports gaps, and on every reconnect puts
// its positions in the URL so the app's worker can subscribe it "from"
// there (see README.md for the format). It never reads the clock except
// through the timers it schedules, and the parts that decide (back-off,
// positions, URL, envelope parsing) are plain functions exported for tests.
//
// No dependencies, no build step: an ES module for browsers and Node 20+.

/** Back-off defaults: the first retry after about 250 ms, doubling up to 10 s. */
export const DEFAULT_BACKOFF = Object.freeze({
  // The first delay: short, because most drops are a blip.
  initialMs: 250,
  // The ceiling: a server that is down for long is asked at most this often
  // by each client, so a restart is not met by a stampede.
  maxMs: 10000,
  factor: 2,
  // Each delay is cut by up to this fraction at random, so clients dropped
  // together do not come back together.
  jitter: 0.5,
});

/** The query parameter that carries the positions on reconnect. */
export const DEFAULT_POSITIONS_PARAM = 'since';

/** Longest exponent the back-off computes; past it the ceiling holds anyway. */
const BACKOFF_EXPONENT_MAX = 30;

const EPOCH_RE = /^[0-9a-f]{1,16}$/;

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry):
 * min(maxMs, initialMs * factor^attempt), less up to `jitter` of it.
 * Always within [ceiling * (1 - jitter), ceiling], never above maxMs.
 */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const { initialMs, maxMs, factor, jitter } = backoff;
  const exponent = Math.min(Math.max(0, Math.floor(attempt)), BACKOFF_EXPONENT_MAX);
  const ceiling = Math.min(maxMs, initialMs * factor ** exponent);
  // A random() that returns NaN or leaves [0, 1] must not unbound the delay.
  const drawn = random();
  const r = Number.isFinite(drawn) ? Math.min(Math.max(drawn, 0), 1) : 0;
  return Math.round(ceiling * (1 - jitter * r));
}

/** Throws a TypeError unless `backoff` is usable (bounded, positive). */
export function checkBackoff(backoff) {
  const { initialMs, maxMs, factor, jitter } = backoff;
  const finite = (n) => typeof n === 'number' && Number.isFinite(n);
  if (!finite(initialMs) || initialMs <= 0) throw new TypeError('backoff.initialMs must be a positive number');
  if (!finite(maxMs) || maxMs < initialMs) throw new TypeError('backoff.maxMs must be a number >= initialMs');
  if (!finite(factor) || factor < 1) throw new TypeError('backoff.factor must be a number >= 1');
  if (!finite(jitter) || jitter < 0 || jitter > 1) throw new TypeError('backoff.jitter must be between 0 and 1');
  return backoff;
}

/**
 * What the client knows per channel: the last epoch and offset it saw.
 * `subscribed` sets a channel's position; `publication` decides whether a
 * publication is new, a duplicate (at or below the position in the same
 * epoch: dropped) or after a gap (offsets skipped: reported, then kept).
 */
export class Positions {
  constructor(initial) {
    this.map = new Map();
    for (const [channel, { epoch, offset }] of Object.entries(initial || {})) this.set(channel, epoch, offset);
  }

  get(channel) {
    return this.map.get(channel);
  }

  set(channel, epoch, offset) {
    if (typeof epoch !== 'string' || !EPOCH_RE.test(epoch)) throw new TypeError(`bad epoch for ${channel}: ${epoch}`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new TypeError(`bad offset for ${channel}: ${offset}`);
    this.map.set(channel, { epoch, offset });
  }

  delete(channel) {
    this.map.delete(channel);
  }

  clear() {
    this.map.clear();
  }

  /** A copy: `{channel: {epoch, offset}}`. */
  toObject() {
    const out = {};
    for (const [channel, position] of this.map) out[channel] = { ...position };
    return out;
  }

  /**
   * Records a publication. Returns `{accept, gap}`: `accept` false for a
   * duplicate; `gap` `{from, to}` (the offsets never seen) or null. A new
   * epoch without a `subscribed` first (which the server never sends)
   * is taken as the new truth, with no gap claimed.
   */
  publication(channel, epoch, offset) {
    const known = this.map.get(channel);
    let gap = null;
    if (known && known.epoch === epoch) {
      if (offset <= known.offset) return { accept: false, gap: null };
      if (offset > known.offset + 1) gap = { from: known.offset + 1, to: offset - 1 };
    }
    this.set(channel, epoch, offset);
    return { accept: true, gap };
  }
}

/**
 * The positions as the URL carries them: `CHANNEL.EPOCH.OFFSET` joined by
 * commas, CHANNEL percent-encoded (encodeURIComponent, so it holds no comma,
 * `&`, `=` or `#`; it may hold dots, so a reader splits each entry at its
 * last two dots). Empty when there is nothing to recover.
 */
export function positionsParam(positions) {
  const entries = positions instanceof Positions ? positions.map : new Map(Object.entries(positions || {}));
  const parts = [];
  for (const [channel, { epoch, offset }] of entries) parts.push(`${encodeURIComponent(channel)}.${epoch}.${offset}`);
  return parts.join(',');
}

/**
 * `base` with the positions parameter replaced (or removed when there are
 * no positions); every other parameter is kept as it was.
 */
export function buildUrl(base, positions, param = DEFAULT_POSITIONS_PARAM) {
  const hashAt = base.indexOf('#');
  const withoutHash = hashAt === -1 ? base : base.slice(0, hashAt);
  const queryAt = withoutHash.indexOf('?');
  const path = queryAt === -1 ? withoutHash : withoutHash.slice(0, queryAt);
  const query = queryAt === -1 ? '' : withoutHash.slice(queryAt + 1);
  const kept = query.split('&').filter((pair) => pair !== '' && pair.split('=')[0] !== param);
  const value = positionsParam(positions);
  if (value !== '') kept.push(`${param}=${value}`);
  return kept.length ? `${path}?${kept.join('&')}` : path;
}

/**
 * The envelope a text message carries, or null for an app message. Only
 * text that starts as the server writes envelopes (`{"type":"`) is parsed,
 * so an app's own messages cost nothing and are passed on as they are.
 */
export function parseEnvelope(text) {
  if (typeof text !== 'string' || !text.startsWith('{"type":"')) return null;
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof message.channel !== 'string') return null;
  const { type, channel } = message;
  if (type === 'unsubscribed') return { type, channel };
  if (typeof message.epoch !== 'string' || !EPOCH_RE.test(message.epoch)) return null;
  if (!Number.isSafeInteger(message.offset) || message.offset < 0) return null;
  const { epoch, offset } = message;
  if (type === 'subscribed') return { type, channel, epoch, offset, recovered: message.recovered === true };
  if (type !== 'publication') return null;
  if (typeof message.data_b64 === 'string') {
    return { type, channel, epoch, offset, binary: true, data: decodeBase64(message.data_b64) };
  }
  return { type, channel, epoch, offset, binary: false, data: message.data };
}

function decodeBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

const HANDLERS = ['onOpen', 'onClose', 'onReconnecting', 'onSubscribed', 'onUnsubscribed', 'onPublication', 'onGap', 'onMessage'];

/**
 * One connection to a hotsock server that comes back by itself.
 *
 *   const client = new HotsockClient('wss://example.com/chat?room=lobby');
 *   client.onPublication = (channel, data, { epoch, offset }) => ...;
 *   client.onSubscribed = (channel, { recovered, resumed }) => ...;
 *
 * Options: `WebSocket` (the constructor; default the global one),
 * `backoff` ({initialMs, maxMs, factor, jitter}), `maxAttempts` (failed
 * reconnects in a row before giving up; default no limit), `positions`
 * ({channel: {epoch, offset}} to start from, e.g. kept in sessionStorage),
 * `positionsParam` (default `since`), `connect` (false: call connect()
 * yourself), and any of the handlers.
 */
export class HotsockClient {
  constructor(url, options = {}) {
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass one as new HotsockClient(url, { WebSocket })');
    }
    this.url = url;
    this.backoff = checkBackoff({ ...DEFAULT_BACKOFF, ...options.backoff });
    this.maxAttempts = options.maxAttempts ?? Infinity;
    this.param = options.positionsParam || DEFAULT_POSITIONS_PARAM;
    this.random = options.random || Math.random;
    this.positions = new Positions(options.positions);
    for (const name of HANDLERS) this[name] = options[name] || null;
    this.socket = null;
    // Positions this connection's URL carried, to tell a resumed
    // subscription from a fresh one.
    this.sent = new Map();
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.duplicates = 0;
    if (options.connect !== false) this.connect();
  }

  /** The URL the next connection uses: the base with the current positions. */
  currentUrl() {
    return buildUrl(this.url, this.positions, this.param);
  }

  /** Whether a connection is open now. */
  get connected() {
    return this.socket !== null && this.socket.readyState === 1;
  }

  /** Opens a connection unless one is open or opening. Undoes close(). */
  connect() {
    this.stopped = false;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.socket !== null) return;
    this.sent = new Map(this.positions.map);
    const ws = new this.WebSocket(this.currentUrl());
    ws.binaryType = 'arraybuffer';
    this.socket = ws;
    // Events of a socket that is no longer ours (replaced by reconnect())
    // are ignored, so an old close cannot schedule a second connection.
    ws.onopen = () => {
      if (this.socket !== ws) return;
      this.attempt = 0;
      this.emit('onOpen');
    };
    ws.onmessage = (event) => {
      if (this.socket === ws) this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (this.socket === ws) this.closed(event.code, event.reason);
    };
    // A failed connection also closes; the close decides what happens.
    ws.onerror = () => {};
  }

  /** Sends a message if connected; false otherwise (nothing is queued). */
  send(data) {
    if (!this.connected) return false;
    this.socket.send(data);
    return true;
  }

  /** Closes for good: no reconnect until connect() is called again. */
  close(code = 1000, reason = '') {
    this.stopped = true;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const ws = this.socket;
    if (ws !== null) {
      this.socket = null;
      ws.close(code, reason);
      this.emit('onClose', { code, reason, willReconnect: false });
    }
  }

  /**
   * Drops the connection and opens a new one at once. With `fresh`, the
   * positions are forgotten first (all of them, or the channels listed), so
   * the app subscribes those channels afresh.
   */
  reconnect({ fresh = false, channels = null } = {}) {
    if (fresh) {
      if (channels) for (const channel of channels) this.positions.delete(channel);
      else this.positions.clear();
    }
    const ws = this.socket;
    this.socket = null;
    if (ws !== null) ws.close(1000, 'reconnect');
    this.connect();
  }

  receive(data) {
    const envelope = parseEnvelope(data);
    if (envelope === null) {
      this.emit('onMessage', data);
      return;
    }
    const { type, channel } = envelope;
    if (type === 'unsubscribed') {
      this.positions.delete(channel);
      this.emit('onUnsubscribed', channel);
    } else if (type === 'subscribed') {
      const { epoch, offset, recovered } = envelope;
      const requested = this.sent.get(channel) || null;
      this.positions.set(channel, epoch, offset);
      this.emit('onSubscribed', channel, { recovered, epoch, offset, resumed: requested !== null, requested });
    } else {
      const { epoch, offset, data: payload, binary } = envelope;
      const { accept, gap } = this.positions.publication(channel, epoch, offset);
      if (!accept) {
        this.duplicates += 1;
        return;
      }
      if (gap) this.emit('onGap', channel, { epoch, ...gap });
      this.emit('onPublication', channel, payload, { epoch, offset, binary });
    }
  }

  closed(code, reason) {
    this.socket = null;
    if (this.stopped) return;
    if (this.attempt >= this.maxAttempts) {
      this.stopped = true;
      this.emit('onClose', { code, reason, willReconnect: false });
      return;
    }
    const delayMs = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    // The timer is set before the handlers run, so a handler that calls
    // close() cancels it.
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delayMs);
    this.emit('onClose', { code, reason, willReconnect: true });
    this.emit('onReconnecting', { attempt: this.attempt, delayMs });
  }

  emit(name, ...args) {
    const handler = this[name];
    if (typeof handler === 'function') handler.apply(this, args);
  }
}

export default HotsockClient;
