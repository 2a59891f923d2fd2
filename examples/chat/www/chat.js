// The chat page: one HotsockClient (clients/js, served at /hotsock.js by
// server.static_files) per room. Everything shown comes from the room's
// channel, so the client's offset tracking is what keeps the list exact
// across reconnects: nothing missed (the worker subscribes the reconnect
// from the client's position), nothing twice (duplicates are dropped).
// Text from others is only ever set as textContent: never parsed as HTML.
import { HotsockClient } from '/hotsock.js';

/** A typing signal goes out at most this often while the user types. */
const TYPING_SEND_EVERY_MS = 2000;
/** How long "X is typing" stays without a new signal. */
const TYPING_SHOW_MS = 4000;
/** Typing signals older than this (a history replay) are not shown. */
const TYPING_STALE_MS = 5000;
const ROOM_RE = /^[a-z0-9-]{1,32}$/;

const $ = (id) => document.getElementById(id);
let client = null;
let me = null;
let lastTypingSent = 0;
const typing = new Map(); // nick -> timer that hides it

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function setNotice(text) {
  $('notice').textContent = text;
}

function append(kind, from, text, offset) {
  const li = document.createElement('li');
  li.className = kind === 'chat' ? 'chat' : 'notice';
  li.dataset.kind = kind;
  li.dataset.offset = String(offset);
  if (from !== null) {
    const name = document.createElement('span');
    name.className = 'from';
    name.textContent = from;
    li.append(name);
  }
  li.append(document.createTextNode(text));
  $('messages').append(li);
  li.scrollIntoView({ block: 'end' });
}

function showPresence(members) {
  const list = $('presence');
  list.replaceChildren(...members.map((nick) => {
    const li = document.createElement('li');
    li.textContent = nick;
    return li;
  }));
}

function showTyping() {
  const nicks = [...typing.keys()];
  $('typing').textContent = nicks.length === 0 ? '' : `${nicks.join(', ')} ${nicks.length === 1 ? 'is' : 'are'} typing…`;
}

function typingFrom(nick, at) {
  if (nick === me || Date.now() - at > TYPING_STALE_MS) return;
  clearTimeout(typing.get(nick));
  typing.set(nick, setTimeout(() => {
    typing.delete(nick);
    showTyping();
  }, TYPING_SHOW_MS));
  showTyping();
}

function stopTyping(nick) {
  if (!typing.has(nick)) return;
  clearTimeout(typing.get(nick));
  typing.delete(nick);
  showTyping();
}

function publication(channel, data, { offset }) {
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return;
  }
  switch (message.kind) {
    case 'chat':
      stopTyping(message.from);
      append('chat', message.from, message.text, offset);
      break;
    case 'join':
      append('join', null, `${message.nick} joined`, offset);
      showPresence(message.members);
      break;
    case 'leave':
      append('leave', null, `${message.nick} left`, offset);
      showPresence(message.members);
      break;
    case 'typing':
      typingFrom(message.from, message.at);
      break;
    default:
  }
}

function subscribed(channel, { recovered, resumed }) {
  $('messages').dataset.subscriptions = String(Number($('messages').dataset.subscriptions || 0) + 1);
  if (resumed && recovered) {
    setNotice('');
    $('status').dataset.recovered = 'true';
  } else if (resumed) {
    // The server could not replay the gap (the history no longer reaches
    // back, or the server restarted): start over from the recent history.
    $('status').dataset.recovered = 'false';
    setNotice('You were away too long to catch up: reloading the recent history.');
    $('messages').replaceChildren();
    client.reconnect({ fresh: true, channels: [channel] });
  }
}

function start(room, name) {
  if (client !== null) client.close();
  me = name;
  $('messages').replaceChildren();
  $('presence').replaceChildren();
  setNotice('');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`;
  client = new HotsockClient(url, {
    // A chat wants to be back quickly; 5 s is the longest a reader waits.
    backoff: { maxMs: 5000 },
    onOpen: () => {
      setStatus('open', `in ${room} as ${name}`);
      $('text').disabled = false;
      $('send').disabled = false;
    },
    onClose: ({ willReconnect }) => {
      setStatus(willReconnect ? 'reconnecting' : 'closed', willReconnect ? 'connection lost' : 'not connected');
      $('text').disabled = true;
      $('send').disabled = true;
    },
    onReconnecting: ({ attempt, delayMs }) => setStatus('reconnecting', `reconnecting in ${delayMs} ms (attempt ${attempt})`),
    onSubscribed: subscribed,
    onPublication: publication,
    onGap: (channel, { from, to }) => setNotice(`messages ${from} to ${to} were lost`),
    onMessage: (data) => {
      try {
        const message = JSON.parse(data);
        if (message.kind === 'error') setNotice(message.error);
      } catch {
        // Not ours: ignore.
      }
    },
  });
}

$('join').addEventListener('submit', (event) => {
  event.preventDefault();
  const room = $('room').value.trim();
  const name = $('name').value.trim();
  if (!ROOM_RE.test(room) || name === '') {
    setNotice('A room is 1 to 32 of a-z, 0-9 and -; a name is 1 to 24 letters, digits, spaces, _ - or .');
    return;
  }
  history.replaceState(null, '', `?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  start(room, name);
});

$('say').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (text === '') return;
  if (client !== null && client.send(JSON.stringify({ kind: 'chat', text }))) {
    $('text').value = '';
    lastTypingSent = 0;
  } else {
    setNotice('Not connected: the message was not sent.');
  }
});

$('text').addEventListener('input', () => {
  // Throttled: one signal per TYPING_SEND_EVERY_MS however fast one types.
  const now = Date.now();
  if (client === null || now - lastTypingSent < TYPING_SEND_EVERY_MS) return;
  if (client.send(JSON.stringify({ kind: 'typing' }))) lastTypingSent = now;
});

// For tests and the curious: the client in use.
window.chat = { get client() { return client; } };

const query = new URLSearchParams(location.search);
if (query.get('room')) $('room').value = query.get('room');
if (query.get('name')) $('name').value = query.get('name');
if (query.get('room') && query.get('name')) $('join').requestSubmit();
