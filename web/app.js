// The chat page: courier.js keeps the connection, the cursor and the outbox; this file
// turns its events into DOM. The conversation list comes from `convs` after every
// catch-up and is kept live from `message` events in between; the open conversation is
// built from `history` pages plus the live entries of that conversation.

import { CourierClient, convOf, peerOf, toOf } from './courier.js';

const TOKEN_KEY = 'courier.token';
/** The server's default --recall-window; the server decides, this only hides the button. */
const RECALL_WINDOW_MS = 2 * 60 * 1000;
const TYPING_SHOWN_MS = 5000;
const PAGE_SIZE = 50;
/** The server bounds a watch list; more peers than this are not watched. */
const MAX_WATCHED = 100;
const NOTICE_MS = 6000;
/** Within this many pixels of the bottom, new messages keep the view scrolled down. */
const STICKY_PX = 48;
const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;
/** Hours without a leading zero where the locale has none ("9:18 PM", "21:18"). */
const TIME_FORMAT = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'),
  connText: $('conn-text'),
  retryNow: $('retry-now'),
  me: $('me'),
  signOut: $('sign-out'),
  signin: $('signin'),
  signinForm: $('signin-form'),
  signinName: $('signin-name'),
  tokenForm: $('token-form'),
  tokenInput: $('signin-token'),
  signinError: $('signin-error'),
  chat: $('chat'),
  newDmForm: $('new-dm-form'),
  newDmInput: $('new-dm-input'),
  groupForm: $('new-group-form'),
  groupName: $('group-name'),
  groupMembers: $('group-members'),
  convList: $('conv-list'),
  convListEmpty: $('conv-list-empty'),
  convNone: $('conv-none'),
  convView: $('conv-view'),
  back: $('back'),
  convPresence: $('conv-presence'),
  convTitle: $('conv-title'),
  convSub: $('conv-sub'),
  leaveGroup: $('leave-group'),
  blockUser: $('block-user'),
  messages: $('messages'),
  loadOlder: $('load-older'),
  messageList: $('message-list'),
  typing: $('typing'),
  composer: $('composer'),
  input: $('send-input'),
  announcer: $('announcer'),
  notice: $('notice'),
};

let client = null;
let me = null;
/** Where the token in use came from: 'form' (pasted), 'dev' (dev login) or 'saved'. */
let tokenSource = null;
let s = freshState();
/** Bumped per sign-in screen, so only the newest dev-login check picks the form. */
let formCheck = 0;

function freshState() {
  return {
    /** conv → { conv, last, unread, read_mid } */
    convs: new Map(),
    /** The open conversation: { conv, msgs: Map<mid, msg>, oldest, more, loaded, loading } */
    open: null,
    /** dm conv → the highest mid the peer has read */
    peerRead: new Map(),
    /** conv → the highest mid this page told the server it read */
    readSent: new Map(),
    /** conv → { from, until } */
    typing: new Map(),
    /** user → online */
    presence: new Map(),
    /** Users this user blocks (the server's list, read at every catch-up); null until read. */
    blocked: null,
    /** mid → the `group` object of a group entry seen live, for when history brings it bare. */
    groupOps: new Map(),
    /** The watch list last sent, joined, so an unchanged list is not sent again. */
    watched: '',
    /** The earliest time a recall button on screen runs out, so the view redraws then. */
    recallExpiry: Infinity,
    /** The client has been online at least once since sign-in. */
    everOnline: false,
  };
}

// ---- signing in and out ----

async function signInByName(name) {
  ui.signinError.textContent = '';
  let res;
  try {
    res = await fetch(`dev/token?user=${encodeURIComponent(name)}`);
  } catch {
    ui.signinError.textContent = 'The server could not be reached.';
    return;
  }
  // Dev login was turned off since the form was chosen: the only way in is a token
  // minted by the operator.
  if (res.status === 404) {
    showSignInForm(false);
    return;
  }
  if (!res.ok) {
    ui.signinError.textContent = `Sign-in failed (${res.status}).`;
    return;
  }
  start((await res.json()).token, 'dev');
}

function start(token, source) {
  try {
    client = new CourierClient({ url: socketUrl(), token });
  } catch (err) {
    localStorage.removeItem(TOKEN_KEY);
    if (ui.signin.hidden) showSignIn('');
    // Unreadable (no `sub`): whatever is wrong with it, the person can only use another.
    ui.signinError.textContent = err.code === 'bad_token' ? 'This sign-in token is not valid.' : `That token can't be used: ${err.message}.`;
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  me = client.user;
  tokenSource = source;
  ui.signinError.textContent = '';
  s = freshState();
  // Group names were kept here before courier.js kept whole groups (with its cursor).
  localStorage.removeItem(`courier.groups.${me}`);
  client.on('state', onState);
  client.on('group', onGroup);
  client.on('synced', onCaughtUp);
  client.on('message', onMessage);
  client.on('outbox', onOutbox);
  client.on('read', onRead);
  client.on('presence', onPresence);
  client.on('typing', onTyping);
  client.on('error', (e) => notify(`${e.code}: ${e.message}`));
  ui.me.textContent = me;
  ui.signOut.hidden = false;
  ui.signin.hidden = true;
  ui.chat.hidden = false;
  renderConvList();
  renderOpen();
  client.connect();
  route();
}

/** Forgets the signed-in user, here and in storage. */
function endSession() {
  client?.close();
  client = null;
  me = null;
  tokenSource = null;
  s = freshState();
  localStorage.removeItem(TOKEN_KEY);
}

function signOut() {
  endSession();
  // The open conversation was this user's; the next one starts at the list.
  setFragment(null, 'replace');
  showSignIn('');
}

/**
 * The server refused the token (expired, or signed with a secret it no longer has, as
 * after the dev data folder was deleted): no reconnect can help, so back to sign-in. The
 * fragment stays, so signing in again lands where the person was.
 */
function tokenRefused() {
  const name = me;
  const pasted = tokenSource === 'form';
  endSession();
  showSignIn(pasted ? 'This sign-in token is not valid.' : 'Your sign-in is no longer valid. Please sign in again.', name);
}

function showSignIn(error, name = '') {
  ui.chat.hidden = true;
  ui.signOut.hidden = true;
  ui.me.textContent = '';
  ui.signin.hidden = false;
  ui.signinError.textContent = error;
  ui.signinName.value = name ?? '';
  renderConn({ state: 'offline' });
  chooseSignInForm();
}

/**
 * Shows the name form when the server has dev login, else the token form. `/dev/token`
 * without a name answers 400 where dev login is on and 404 where it is off; asking first
 * means nobody types a name that a server without dev login would throw away.
 */
async function chooseSignInForm() {
  const check = ++formCheck;
  ui.signinForm.hidden = ui.tokenForm.hidden = true;
  let devLogin = true;
  try {
    const res = await fetch('dev/token', { cache: 'no-store' });
    devLogin = res.ok || res.status === 400;
  } catch {
    // Unreachable: the name form is the first-run path, and its submit says what failed.
  }
  if (check !== formCheck || ui.signin.hidden) return;
  showSignInForm(devLogin);
}

function showSignInForm(devLogin) {
  ui.signinForm.hidden = !devLogin;
  ui.tokenForm.hidden = devLogin;
  (devLogin ? ui.signinName : ui.tokenInput).focus();
}

function socketUrl() {
  const url = new URL('ws', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

// ---- events from the client ----

function onState(ev) {
  if (ev.state === 'refused') return tokenRefused();
  const was = ui.conn.dataset.state;
  if (ev.state === 'online') s.everOnline = true;
  // Presence is only known while connected: the watch snapshot refills it on reconnect.
  if (ev.state !== 'online' && s.presence.size > 0) {
    s.presence.clear();
    renderConvList();
    renderHeader();
  }
  renderConn(ev);
  // Said once per change, not once per failed attempt.
  if (ev.state === 'online') announce('Connected');
  else if (ev.state === 'reconnecting' && was === 'online') announce('Connection lost, reconnecting');
}

/** Caught up with the inbox: the server's view of the conversations is now worth asking for. */
function onCaughtUp() {
  refreshConvs();
  refreshBlocked();
  if (s.open && !s.open.loaded) loadOlder();
}

async function refreshConvs() {
  let items;
  try {
    items = await client.convs();
  } catch {
    return; // dropped; the next catch-up asks again
  }
  const fresh = new Map(items.map((item) => [item.conv, { ...item }]));
  // A dm opened here that has no message yet is not on the server's list.
  for (const [conv, c] of s.convs) if (!fresh.has(conv) && !c.last) fresh.set(conv, c);
  s.convs = fresh;
  // A receipt that arrived while this page was away is state on the server, not an event.
  for (const item of items) {
    if (item.peer_read_mid) {
      s.peerRead.set(item.conv, Math.max(s.peerRead.get(item.conv) ?? 0, item.peer_read_mid));
    }
  }
  markRead();
  renderConvList();
  if (s.open) renderMessages();
  watchPeers();
}

/** Another device may have blocked or unblocked someone while this page was away. */
async function refreshBlocked() {
  try {
    s.blocked = new Set(await client.blocked());
  } catch {
    return; // dropped; the next catch-up asks again
  }
  renderHeader();
}

function onMessage(m) {
  if (m.kind === 'group' && applyGroupEntry(m)) return;
  const c = convEntry(m.conv);
  const open = s.open?.conv === m.conv;
  if (m.kind === 'recall') {
    if (c.last?.mid === m.ref) c.last = { ...c.last, body: '', recalled: true };
  } else {
    if (!c.last || m.mid >= c.last.mid) c.last = m;
    if (m.from !== me && m.kind !== 'group' && !(open && pageVisible())) c.unread += 1;
    if (m.from !== me) announce(m.kind === 'group' ? groupLine(m) : `${m.from}: ${m.body}`);
  }
  if (m.from !== me) s.typing.delete(m.conv);
  if (open) {
    addToView(m);
    renderMessages();
    renderTyping();
    markRead();
  }
  renderConvList();
  if (m.conv.startsWith('dm:')) watchPeers();
}

function onOutbox(entry) {
  if (entry.state === 'failed') notify(`Not sent: ${entry.error.message || entry.error.code}`);
  if (s.open?.conv === entry.conv) renderMessages();
}

function onRead({ conv, user, mid }) {
  if (user === me) {
    // Read on another of my devices.
    const c = s.convs.get(conv);
    if (c) {
      c.read_mid = Math.max(c.read_mid ?? 0, mid);
      if (!c.last || mid >= c.last.mid) c.unread = 0;
      renderConvList();
    }
    return;
  }
  s.peerRead.set(conv, Math.max(s.peerRead.get(conv) ?? 0, mid));
  if (s.open?.conv === conv) renderMessages();
}

function onPresence({ user, online }) {
  s.presence.set(user, online);
  renderConvList();
  renderHeader();
}

function onTyping({ conv, from }) {
  if (from === me) return;
  s.typing.set(conv, { from, until: Date.now() + TYPING_SHOWN_MS });
  renderTyping();
}

// ---- conversations ----

function convEntry(conv) {
  let c = s.convs.get(conv);
  if (!c) {
    c = { conv, last: null, unread: 0, read_mid: 0 };
    s.convs.set(conv, c);
  }
  return c;
}

/** Takes in a group change (courier.js keeps the member list); true when it took this user out of the group. */
function applyGroupEntry(m) {
  const g = m.group;
  if (!g) return false;
  s.groupOps.set(m.mid, g);
  if (g.op === 'leave' && g.users?.includes(me)) {
    forgetConv(m.conv);
    return true;
  }
  return false;
}

/** A group's member list (or name, or owner) changed, or arrived from `group_info`. */
function onGroup({ gid }) {
  if (s.open?.conv === `group:${gid}`) renderHeader();
  renderConvList();
}

function forgetConv(conv) {
  s.convs.delete(conv);
  if (s.open?.conv === conv) {
    closeConv();
    setFragment(null, 'replace');
  }
  renderConvList();
}

function convTitle(conv) {
  const peer = peerOf(me, conv);
  if (peer) return peer === me ? `${me} (you)` : peer;
  const gid = conv.slice('group:'.length);
  // The `convs` list names groups too, for one whose changes this device has not kept.
  return client?.group(gid)?.name ?? s.convs.get(conv)?.name ?? `Group ${gid}`;
}

function groupLine(m) {
  const g = m.group ?? s.groupOps.get(m.mid);
  switch (g?.op) {
    case 'create':
      return `${m.from} created “${g.name}”`;
    case 'add':
      return `${m.from} added ${g.users.join(', ')}`;
    case 'leave':
      return `${g.users.join(', ')} left`;
    default:
      return `${m.from} changed the group`;
  }
}

function preview(c) {
  const m = c.last;
  if (!m) return 'No messages yet';
  if (m.kind === 'group') return groupLine(m);
  if (m.recalled) return 'Message recalled';
  const who = m.from === me ? 'You: ' : c.conv.startsWith('group:') ? `${m.from}: ` : '';
  return who + m.body;
}

function watchPeers() {
  const peers = new Set();
  for (const conv of s.convs.keys()) {
    const peer = peerOf(me, conv);
    if (peer && peer !== me) peers.add(peer);
  }
  const list = [...peers].sort().slice(0, MAX_WATCHED);
  const key = list.join(',');
  if (key === s.watched) return;
  s.watched = key;
  client.watch(list).catch(() => {
    s.watched = ''; // try again at the next change
  });
}

// ---- the open conversation, kept in the URL ----
//
// The fragment names the open conversation, so a reload lands on it and back, forward and
// links move between conversations: `#dm:bob` (the peer, as a person thinks of it; user
// ids are [A-Za-z0-9_.-], nothing to escape) and `#group:7`.

function fragmentOf(conv) {
  const peer = peerOf(me, conv);
  return peer ? `#dm:${peer}` : `#${conv}`;
}

/** The conversation a fragment names, or null. A dm's own id (`dm:alice:bob`) is taken too. */
function convOfFragment(hash) {
  let f;
  try {
    f = decodeURIComponent(hash.replace(/^#/, ''));
  } catch {
    return null;
  }
  const [kind, ...rest] = f.split(':');
  if (kind === 'group' && rest.length === 1 && /^\d{1,20}$/.test(rest[0])) return f;
  if (kind !== 'dm' || !rest.every((u) => USER_RE.test(u))) return null;
  if (rest.length === 1) return convOf(me, `user:${rest[0]}`);
  if (rest.length === 2 && rest.includes(me)) return convOf(me, `user:${rest[0] === me ? rest[1] : rest[0]}`);
  return null;
}

/** Puts `conv` (null: none) in the URL: a new history entry ('push') or in place ('replace'). */
function setFragment(conv, how) {
  const hash = conv ? fragmentOf(conv) : '';
  if (location.hash === hash) return;
  const url = hash || location.pathname + location.search;
  if (how === 'push') history.pushState(null, '', url);
  else history.replaceState(null, '', url);
}

/** Opens `conv` on a person's action: a new history entry, so back returns to the last one. */
function navigate(conv) {
  setFragment(conv, 'push');
  openConv(conv);
}

/** Shows what the URL names: at sign-in, and after back, forward or a followed link. */
function route() {
  if (!client) return;
  const conv = convOfFragment(location.hash);
  if (conv === (s.open?.conv ?? null)) return;
  if (!conv) return closeConv();
  // A dm need not have a message yet: it is listed, as one opened from the sidebar is.
  if (conv.startsWith('dm:')) {
    convEntry(conv);
    watchPeers();
  }
  openConv(conv);
}

function openConv(conv) {
  if (s.open?.conv !== conv) {
    s.open = { conv, msgs: new Map(), oldest: Infinity, more: true, loaded: false, loading: false };
    ui.messageList.replaceChildren();
    loadOlder();
  }
  ui.chat.classList.add('viewing');
  renderOpen();
  renderConvList();
  ui.input.focus();
}

function closeConv() {
  s.open = null;
  ui.chat.classList.remove('viewing');
  renderOpen();
}

async function loadOlder() {
  const open = s.open;
  if (!open || open.loading || !open.more) return;
  open.loading = true;
  ui.loadOlder.disabled = true;
  try {
    const before = open.loaded ? open.oldest : undefined;
    const page = await client.history(open.conv, before, PAGE_SIZE);
    if (s.open !== open) return;
    for (const m of page.msgs) addToView(m);
    open.more = page.more;
    // The first page starts at the bottom; older pages keep what was on screen in place.
    renderMessages(open.loaded ? 'keep-bottom-distance' : 'to-bottom');
    open.loaded = true;
    markRead();
  } catch (err) {
    if (s.open !== open) return;
    if (err.code === 'forbidden' || err.code === 'not_found') {
      // A link or an old URL to a group this user is not in (any more).
      notify('That conversation is not open to you.');
      forgetConv(open.conv);
    } else if (err.code !== 'disconnected') {
      // Offline: the next catch-up loads the page.
      notify(`Could not load messages: ${err.message}`);
    }
  } finally {
    open.loading = false;
    ui.loadOlder.disabled = false;
  }
}

function addToView(m) {
  const open = s.open;
  open.oldest = Math.min(open.oldest, m.mid);
  if (m.kind === 'recall') {
    const target = open.msgs.get(m.ref);
    if (target) open.msgs.set(m.ref, { ...target, body: '', recalled: true });
    return;
  }
  if (!open.msgs.has(m.mid)) open.msgs.set(m.mid, m);
}

/** Tells the server the open conversation is read, when someone can see it. */
function markRead() {
  const open = s.open;
  if (!open?.loaded || !pageVisible() || !client) return;
  const c = s.convs.get(open.conv);
  if (c?.unread) {
    c.unread = 0;
    renderConvList();
  }
  const newest = Math.max(0, ...open.msgs.keys());
  if (newest <= Math.max(s.readSent.get(open.conv) ?? 0, c?.read_mid ?? 0)) return;
  s.readSent.set(open.conv, newest);
  client.read(open.conv, newest).catch(() => {
    if (s.readSent.get(open.conv) === newest) s.readSent.delete(open.conv);
  });
}

function pageVisible() {
  return document.visibilityState === 'visible';
}

function send() {
  const body = ui.input.value;
  if (!s.open || !body.trim()) return;
  client.send(toOf(me, s.open.conv), body);
  ui.input.value = '';
  renderMessages('to-bottom');
}

/** An own message in the list is stored; it is read once the dm peer's receipt covers it. */
function ownState(m) {
  return (s.peerRead.get(m.conv) ?? 0) >= m.mid ? 'read' : 'sent';
}

// ---- rendering ----

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function button(label, attrs, onClick) {
  const b = el('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', onClick);
  return b;
}

/** Redraws `list` with `fn` and puts the focus back on the element with the same `attr` value. */
function keepingFocus(list, attr, fn) {
  const had = document.activeElement;
  const key = list.contains(had) ? had.getAttribute(attr) : null;
  const testid = key !== null ? had.dataset.testid : null;
  fn();
  if (key === null) return;
  const again = [...list.querySelectorAll(`[data-testid="${testid}"]`)].find((n) => n.getAttribute(attr) === key);
  again?.focus();
}

function renderConn({ state, at, attempt }) {
  ui.conn.dataset.state = state;
  ui.retryNow.hidden = state !== 'reconnecting';
  if (state === 'reconnecting') {
    const secs = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    const hint = !s.everOnline && attempt >= 3 ? ' (check your sign-in)' : '';
    ui.connText.textContent = `Reconnecting in ${secs} s${hint}`;
  } else {
    ui.connText.textContent = { connecting: 'Connecting…', online: 'Online', offline: 'Offline' }[state];
  }
}

function renderConvList() {
  const items = [...s.convs.values()].sort(
    (a, b) => (b.last?.mid ?? Infinity) - (a.last?.mid ?? Infinity) || a.conv.localeCompare(b.conv),
  );
  keepingFocus(ui.convList, 'data-conv', () => ui.convList.replaceChildren(...items.map(convItem)));
  ui.convListEmpty.hidden = items.length > 0;
}

function convItem(c) {
  const peer = peerOf(me, c.conv);
  const item = el(
    'button',
    {
      type: 'button',
      class: 'conv-item',
      'data-testid': 'conv-item',
      'data-conv': c.conv,
      'aria-current': s.open?.conv === c.conv ? 'true' : null,
    },
    peer ? presenceDot(peer, 'presence-dot') : el('span', { class: 'dot group', 'aria-hidden': 'true' }),
    el('span', { class: 'conv-title' }, convTitle(c.conv)),
    el('span', { class: 'conv-last' }, preview(c)),
  );
  if (c.unread > 0) {
    item.append(el('span', { class: 'badge', 'data-testid': 'unread-badge', 'aria-label': `${c.unread} unread` }, String(c.unread)));
  }
  item.addEventListener('click', () => navigate(c.conv));
  return el('li', {}, item);
}

function presenceDot(user, testid) {
  return setPresence(el('span', { class: 'dot', 'data-testid': testid, role: 'img' }), user);
}

function setPresence(dot, user) {
  const online = s.presence.get(user) === true;
  dot.dataset.online = String(online);
  dot.setAttribute('aria-label', `${user} is ${online ? 'online' : 'offline'}`);
  return dot;
}

function renderOpen() {
  ui.convNone.hidden = !!s.open;
  ui.convView.hidden = !s.open;
  if (!s.open) return;
  renderHeader();
  renderMessages();
  renderTyping();
}

function renderHeader() {
  if (!s.open) return;
  const { conv } = s.open;
  const peer = peerOf(me, conv);
  ui.convTitle.textContent = convTitle(conv);
  ui.convPresence.hidden = !peer || peer === me;
  if (peer) setPresence(ui.convPresence, peer);
  const gid = conv.startsWith('group:') ? conv.slice('group:'.length) : null;
  const group = gid ? client.group(gid) : null;
  // Not known here (another device's join, a cleared storage): asked for, shown on arrival.
  if (gid && !group) client.ensureGroup(gid);
  ui.convSub.textContent = group ? `${group.members.length} members: ${group.members.join(', ')}` : '';
  ui.leaveGroup.hidden = !conv.startsWith('group:');
  // Offered once the list is known, so the button never says the opposite of the truth.
  const blocked = s.blocked?.has(peer);
  ui.blockUser.hidden = !peer || peer === me || !s.blocked;
  ui.blockUser.textContent = blocked ? 'Unblock' : 'Block';
  ui.blockUser.setAttribute('aria-label', `${blocked ? 'Unblock' : 'Block'} ${peer}`);
  if (peer && blocked) ui.convSub.textContent = `You blocked ${peer}: neither of you can message the other.`;
}

/**
 * Redraws the open conversation. `scroll`: 'to-bottom' (opened, or a message sent),
 * 'keep-bottom-distance' (older messages went in above), or by default stay put unless
 * the reader was at the bottom, where new messages keep them.
 */
function renderMessages(scroll) {
  const open = s.open;
  if (!open) return;
  const box = ui.messages;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const atBottom = fromBottom - box.clientHeight < STICKY_PX;
  const msgs = [...open.msgs.values()].sort((a, b) => a.mid - b.mid);
  const shown = new Set(open.msgs.keys());
  // Sends not yet in the list: pending or failed (no mid yet), or confirmed while their
  // entry waits above a gap. A confirmed one older than the loaded pages is not news.
  const outgoing = client
    .outbox()
    .filter((e) => e.conv === open.conv && (e.mid == null || (e.mid > open.oldest && !shown.has(e.mid))));
  s.recallExpiry = Infinity;
  keepingFocus(ui.messageList, 'data-mid', () =>
    ui.messageList.replaceChildren(...msgs.map(messageItem), ...outgoing.map(outboxItem)),
  );
  ui.loadOlder.hidden = !open.more || !open.loaded;
  if (scroll === 'to-bottom' || (!scroll && atBottom)) box.scrollTop = box.scrollHeight;
  else if (scroll === 'keep-bottom-distance') box.scrollTop = box.scrollHeight - fromBottom;
}

function messageItem(m) {
  if (m.kind === 'group') {
    return el('li', { class: 'msg system', 'data-testid': 'message', 'data-mid': m.mid, 'data-kind': 'group' }, groupLine(m));
  }
  const mine = m.from === me;
  const state = mine ? ownState(m) : 'received';
  const li = el('li', { class: mine ? 'msg mine' : 'msg', 'data-testid': 'message', 'data-mid': m.mid, 'data-state': state });
  li.append(meta(m.from, m.ts));
  li.append(
    m.recalled
      ? el('p', { class: 'msg-body recalled' }, mine ? 'You recalled this message' : 'Message recalled')
      : el('p', { class: 'msg-body' }, m.body),
  );
  if (!mine) return li;
  const foot = el('div', { class: 'msg-foot' }, statusLabel(state));
  const expiry = m.ts + RECALL_WINDOW_MS;
  if (!m.recalled && Date.now() < expiry) {
    s.recallExpiry = Math.min(s.recallExpiry, expiry);
    foot.append(button('Recall', { class: 'secondary', 'data-testid': 'recall-button', 'data-mid': m.mid, 'aria-label': 'Recall this message' }, () => recall(m.mid)));
  }
  li.append(foot);
  return li;
}

function outboxItem(e) {
  const li = el('li', { class: 'msg mine', 'data-testid': 'message', 'data-mid': e.mid ?? '', 'data-cid': e.cid, 'data-state': e.state });
  li.append(meta(me, e.ts ?? e.createdAt), el('p', { class: 'msg-body' }, e.body));
  const foot = el('div', { class: 'msg-foot' }, statusLabel(e.state, e.error));
  if (e.state === 'failed') {
    foot.append(
      button('Retry', { class: 'secondary', 'data-testid': 'retry-button' }, () => client.retry(e.cid)),
      button('Discard', { class: 'secondary', 'data-testid': 'discard-button' }, () => {
        client.dismiss(e.cid);
        renderMessages();
      }),
    );
  }
  li.append(foot);
  return li;
}

function meta(from, ts) {
  const when = new Date(ts);
  return el(
    'div',
    { class: 'msg-meta' },
    el('span', { class: 'msg-from' }, from === me ? 'You' : from),
    el('time', { datetime: when.toISOString() }, TIME_FORMAT.format(when)),
  );
}

const STATUS = {
  pending: ['○', 'Sending'],
  sent: ['✓', 'Sent'],
  read: ['✓✓', 'Read'],
  failed: ['!', 'Not sent'],
};

function statusLabel(state, error) {
  const [icon, text] = STATUS[state];
  const detail = error && state === 'failed' ? ` (${error.code})` : '';
  return el('span', { class: 'status', 'data-testid': 'message-status' }, el('span', { 'aria-hidden': 'true' }, `${icon} `), text + detail);
}

function renderTyping() {
  const t = s.open && s.typing.get(s.open.conv);
  ui.typing.textContent = t && t.until > Date.now() ? `${t.from} is typing…` : '';
}

async function recall(mid) {
  try {
    await client.recall(mid);
  } catch (err) {
    notify(err.code === 'forbidden' ? 'Too late to recall that message.' : `Recall failed: ${err.message}`);
  }
}

let noticeTimer = null;

function notify(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (ui.notice.hidden = true), NOTICE_MS);
}

function announce(text) {
  ui.announcer.textContent = text;
}

// The countdown, typing that stopped and recall buttons that ran out need time to pass.
setInterval(() => {
  if (!client) return;
  if (client.state === 'reconnecting') renderConn({ state: 'reconnecting', at: client.nextRetryAt, attempt: client.attempt });
  renderTyping();
  if (Date.now() >= s.recallExpiry) renderMessages();
}, 1000);

// ---- wiring ----

ui.signinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  signInByName(ui.signinName.value.trim());
});

ui.tokenForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  start(ui.tokenInput.value.trim(), 'form');
});

ui.signOut.addEventListener('click', signOut);
ui.retryNow.addEventListener('click', () => client?.reconnectNow());

ui.newDmForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = ui.newDmInput.value.trim();
  if (!USER_RE.test(name)) return notify('A user name is 1 to 64 letters, digits, dots, dashes or underscores.');
  const conv = convOf(me, `user:${name}`);
  convEntry(conv);
  ui.newDmInput.value = '';
  navigate(conv);
  watchPeers();
});

ui.groupForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = ui.groupName.value.trim();
  const members = ui.groupMembers.value
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean);
  const bad = members.find((m) => !USER_RE.test(m));
  if (bad) return notify(`“${bad}” is not a user name.`);
  try {
    const g = await client.groupCreate(name, members);
    convEntry(`group:${g.gid}`);
    ui.groupName.value = ui.groupMembers.value = '';
    navigate(`group:${g.gid}`);
  } catch (err) {
    notify(`Could not create the group: ${err.message}`);
  }
});

ui.leaveGroup.addEventListener('click', async () => {
  const conv = s.open?.conv;
  if (!conv?.startsWith('group:')) return;
  try {
    await client.groupLeave(conv.slice('group:'.length));
    forgetConv(conv);
  } catch (err) {
    notify(`Could not leave the group: ${err.message}`);
  }
});

ui.blockUser.addEventListener('click', async () => {
  const peer = s.open && peerOf(me, s.open.conv);
  if (!peer || !s.blocked) return;
  const list = s.blocked;
  const blocking = !list.has(peer);
  ui.blockUser.disabled = true;
  try {
    await (blocking ? client.block(peer) : client.unblock(peer));
    if (blocking) list.add(peer);
    else list.delete(peer);
    announce(blocking ? `${peer} is blocked` : `${peer} is unblocked`);
  } catch (err) {
    notify(`Could not ${blocking ? 'block' : 'unblock'} ${peer}: ${err.message}`);
  } finally {
    ui.blockUser.disabled = false;
  }
  renderHeader();
});

ui.back.addEventListener('click', () => {
  const conv = s.open?.conv;
  ui.chat.classList.remove('viewing');
  ui.convList.querySelector(`[data-conv="${CSS.escape(conv ?? '')}"]`)?.focus();
});

ui.loadOlder.addEventListener('click', loadOlder);
ui.messages.addEventListener('scroll', () => {
  if (ui.messages.scrollTop < STICKY_PX && s.open?.loaded) loadOlder();
});

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  send();
});

ui.input.addEventListener('keydown', (ev) => {
  // isComposing: Enter that confirms an IME composition is not a send.
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    send();
  }
});

ui.input.addEventListener('input', () => {
  if (s.open && ui.input.value) client.typing(toOf(me, s.open.conv));
});

document.addEventListener('visibilitychange', markRead);
window.addEventListener('focus', markRead);

window.addEventListener('popstate', route);
window.addEventListener('hashchange', route);

const saved = localStorage.getItem(TOKEN_KEY);
if (saved) start(saved, 'saved');
else showSignIn('');
