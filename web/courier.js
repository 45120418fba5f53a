// courier.js: the browser side of docs/PROTOCOL.md for one device.
//
// One dependency-free ES module, served as is and imported by node for the unit tests.
// Everything that touches the outside (the WebSocket class, timers, the clock, storage,
// the window and document event targets, randomness) comes in through the constructor,
// with the browser's own as defaults, so the tests drive time and the network by hand.
//
// What outlives a connection, kept in storage per user and device: the cursor (the
// highest inbox seq held with no gap below it), the outbox (sends without their `sent`)
// and the member list of each group (kept from its change entries). After each `welcome`
// the client syncs from the cursor and sends the outbox again; the server is idempotent
// on (sender, cid), so a resend of a stored message costs one `sent` and stores nothing.
//
// A group's change entry tells the change only (who joined or left, the owner after it),
// since the whole list pushed to every member on every change grows with the square of
// the group. The client applies each change to the list it keeps, and asks for the list
// with `group_info` when it has none to apply it to.

/** PROTOCOL.md "Reconnect": 1, 2, 3, 5, 10, 20, 20, … seconds. */
export const BACKOFF_MS = Object.freeze([1000, 2000, 3000, 5000, 10000, 20000]);

export const DEFAULTS = Object.freeze({
  /** Used until a `welcome` says otherwise; the protocol's default. */
  heartbeatMs: 25000,
  /** How long past a heartbeat the server may stay silent before the link is taken for dead. */
  graceMs: 10000,
  /** A socket that has not been greeted by then is given up and tried again. */
  connectTimeoutMs: 10000,
  /** The liveness timer's period. */
  tickMs: 1000,
  /** A gap this much longer than a tick between two ticks means the machine slept. */
  wakeJumpMs: 15000,
  /** Backoff jitter, a fraction either way. */
  jitter: 0.2,
  requestTimeoutMs: 10000,
  /** Wait before resending after `unavailable` / `rate_limited`, for a send or a sync. */
  retryMs: 2000,
  /** Acks are coalesced over this window: one cumulative ack per burst of pushes. */
  ackDelayMs: 20,
  /** `typing` goes out at most this often per target. */
  typingEveryMs: 3000,
  /** Page size asked for in `sync`; undefined leaves it to the server. */
  syncLimit: undefined,
  /** Entries kept above a gap until it fills; the sync the gap asks for brings the rest. */
  maxHeld: 1000,
  /** Sent messages whose read receipt is still awaited, kept in memory only. */
  maxTracked: 200,
});

/** Send errors worth trying again: the server was busy, not the message at fault. */
const TRANSIENT = new Set(['unavailable', 'rate_limited']);

const OPEN = 1; // WebSocket.OPEN, spelled out so any WebSocket-like class will do

export class CourierError extends Error {
  constructor(code, message, reply) {
    super(message || code);
    this.name = 'CourierError';
    this.code = code;
    this.reply = reply;
  }
}

/** The wait before reconnect attempt `attempt` (0-based), jittered with `random()` in [0, 1). */
export function backoffDelay(attempt, random = Math.random, jitter = DEFAULTS.jitter) {
  const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
  // Jitter spreads the reconnects of the many clients one outage cut off.
  return Math.round(base * (1 + jitter * (2 * random() - 1)));
}

/** The conversation a send `to` lands in: `user:bob` → `dm:<sorted pair>`, `group:7` as is. */
export function convOf(me, to) {
  if (!to.startsWith('user:')) return to;
  return 'dm:' + [me, to.slice('user:'.length)].sort().join(':');
}

/** The other user of a dm (`me` for a note to self); null for a group. */
export function peerOf(me, conv) {
  if (!conv.startsWith('dm:')) return null;
  const [a, b] = conv.slice('dm:'.length).split(':');
  return a === me ? b : a;
}

/** The `to` of a send into `conv`. */
export function toOf(me, conv) {
  return conv.startsWith('dm:') ? 'user:' + peerOf(me, conv) : conv;
}

/**
 * A group as `me` knows it after `change` (the `group` of a `kind: "group"` entry), from
 * `known` (its state before; undefined when unknown). Returns `{ name, owner, members }`;
 * null when `me` left (nothing more of the group will come); undefined when the change
 * alone does not tell the member list, which `group_info` then has to.
 *
 * Applying a change again, or one the list already reflects, gives the same list: an add
 * makes its users members, a leave makes its user not one. So a list fetched at any point
 * can have every change received since applied over it, in order.
 */
export function groupAfter(known, change, me) {
  const users = Array.isArray(change.users) ? change.users : [];
  if (change.op === 'leave' && users.includes(me)) return null;
  const name = change.name ?? known?.name;
  const owner = change.owner !== undefined ? change.owner : (known?.owner ?? null);
  // Entries stored by servers from before issue 13 carry the whole list: it replaces ours.
  if (Array.isArray(change.members)) return { name, owner, members: [...change.members] };
  // A create names every first member.
  if (change.op === 'create') return { name, owner, members: [...new Set(users)] };
  if (!known) return undefined;
  if (change.op === 'add') {
    const members = new Set(known.members);
    for (const u of users) members.add(u);
    return { name, owner, members: [...members] };
  }
  if (change.op === 'leave') return { name, owner, members: known.members.filter((u) => !users.includes(u)) };
  return undefined;
}

/**
 * Where the server answers whether it takes a token, over plain HTTP: the `/ws` URL with
 * an http(s) scheme. A `GET` there without an upgrade is `401` for a token the upgrade
 * would refuse and `426` for one it would take (PROTOCOL.md "Endpoints").
 */
export function tokenCheckUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  return url.href;
}

/** The `sub` of a JWT, read without checking it: the server checks, this only names storage keys. */
export function tokenUser(token) {
  const payload = String(token).split('.')[1];
  if (!payload) return null;
  try {
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const sub = JSON.parse(json).sub;
    return typeof sub === 'string' && sub ? sub : null;
  } catch {
    return null;
  }
}

/** A Storage-like map for when there is no localStorage (tests, node). */
export function memoryStorage() {
  const items = new Map();
  return {
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => void items.set(key, String(value)),
    removeItem: (key) => void items.delete(key),
  };
}

function randomHex(bytes) {
  const buf = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(buf);
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class CourierClient {
  /**
   * @param {object} o
   * @param {string} o.url      the `/ws` endpoint, `ws(s)://host/ws`
   * @param {string} o.token    a JWT; its `sub` names this user's storage keys
   * Injected (browser defaults): WebSocket, fetch, storage, now, setTimeout, clearTimeout,
   * random, window, document. Any key of DEFAULTS overrides that tunable.
   */
  constructor({ url, token, ...o }) {
    this.user = tokenUser(token);
    if (!this.user) throw new CourierError('bad_token', 'the token names no user (no readable sub)');
    this.url = url;
    this.token = token;
    this.WebSocket = o.WebSocket ?? globalThis.WebSocket;
    // `fetch: null` turns the token check off. The default is called unbound: the
    // browser's fetch refuses a `this` other than the window.
    this.fetch = 'fetch' in o ? o.fetch : globalThis.fetch ? (url, init) => globalThis.fetch(url, init) : null;
    this.storage = o.storage ?? globalThis.localStorage ?? memoryStorage();
    this.now = o.now ?? (() => Date.now());
    this.setTimeout = o.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.clearTimeout = o.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this.random = o.random ?? Math.random;
    this.window = o.window ?? globalThis.window;
    this.document = o.document ?? globalThis.document;
    this.opts = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) if (o[key] !== undefined) this.opts[key] = o[key];

    this.deviceId = this.load('courier.device') ?? this.save('courier.device', randomHex(8));
    this.cursor = Number(this.load(this.key('cursor'))) || 0;
    /** cid → entry: pending sends (persisted), sent ones awaiting a receipt, failed ones. */
    this.out = new Map();
    for (const entry of JSON.parse(this.load(this.key('outbox')) ?? '[]')) {
      this.out.set(entry.cid, { ...entry, state: 'pending' });
    }
    /** gid → { name, owner, members }: what the change entries up to the cursor say. */
    this.groups = this.loadGroups();
    /** Saved with the cursor, so the stored lists never lag the stored cursor. */
    this.groupsDirty = false;
    /** gid → its `group_info` in flight: `{ changes }` received meanwhile, to apply over the answer. */
    this.groupFetches = new Map();
    /** gids whose `group_info` the connection failed: asked again after the next welcome. */
    this.groupsWanted = new Set();

    this.listeners = new Map();
    this.state = 'offline';
    this.stopped = true;
    this.ws = null;
    this.welcomed = false;
    /** The current socket's upgrade went through (its `open` fired). */
    this.upgraded = false;
    /** Bumped by connect() and by every welcome: a token check begun before either is stale. */
    this.epoch = 0;
    /** A token check is in flight; one at a time is plenty. */
    this.checking = false;
    this.attempt = 0;
    this.nextRetryAt = null;
    this.heartbeatMs = this.opts.heartbeatMs;
    /** seq → msg: entries above a gap, handed out when it fills. */
    this.held = new Map();
    this.requests = new Map();
    this.ridSeq = 0;
    this.sync = null;
    this.syncRetryAt = null;
    this.ackOwed = false;
    this.watched = null;
    this.typingAt = new Map();
    this.timers = { tick: null, retry: null, ack: null };
    this.onOnline = () => this.reconnectNow();
    this.onVisibility = () => {
      if (this.document.visibilityState === 'visible') this.reconnectNow();
    };
  }

  // ---- events ----

  /** Subscribes `fn` to `event`; returns a function that unsubscribes it. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.listeners.get(event)?.delete(fn);
  }

  emit(event, data) {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(data);
      } catch (err) {
        // A listener's bug must not leave the cursor or the outbox half-updated;
        // it still surfaces, as an uncaught error of its own.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit('state', { state, ...detail });
  }

  // ---- connection lifecycle ----

  /** Starts connecting, and keeps reconnecting until close(). */
  connect() {
    if (!this.stopped) return;
    this.stopped = false;
    this.epoch++;
    this.window?.addEventListener?.('online', this.onOnline);
    this.document?.addEventListener?.('visibilitychange', this.onVisibility);
    this.lastTick = this.now();
    this.scheduleTick();
    this.open();
  }

  /** Stops for good (signed out): no reconnect until connect() is called again. */
  close() {
    this.stop('offline');
  }

  /** Stops and ends in `state`: `offline` (closed here) or `refused` (the server refused the token). */
  stop(state) {
    if (this.stopped) return;
    this.stopped = true;
    this.window?.removeEventListener?.('online', this.onOnline);
    this.document?.removeEventListener?.('visibilitychange', this.onVisibility);
    for (const name of Object.keys(this.timers)) this.cancel(name);
    this.flushAck();
    this.detach()?.close(1000);
    this.connectionGone();
    this.nextRetryAt = null;
    this.setState(state);
  }

  /** The network is known to be back (or the machine woke): drop the backoff and retry now. */
  reconnectNow() {
    this.attempt = 0;
    if (this.stopped || this.ws) return;
    this.open();
  }

  open() {
    this.cancel('retry');
    this.nextRetryAt = null;
    const ws = new this.WebSocket(this.socketUrl(this.url), ['courier.v1']);
    this.ws = ws;
    this.welcomed = false;
    this.upgraded = false;
    this.lastHeard = this.now();
    ws.onopen = () => {
      this.upgraded = true;
    };
    ws.onmessage = (ev) => this.onFrame(ev.data);
    // An error event is always followed by a close, which is where the reconnect is decided.
    ws.onclose = () => this.lost();
    this.setState('connecting', { attempt: this.attempt });
  }

  /** Unhooks the current socket so nothing it does later reaches this client. */
  detach() {
    const ws = this.ws;
    if (!ws) return null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    this.ws = null;
    return ws;
  }

  /** The connection is gone or given up: reconnect after `delayMs` (a backoff step by default). */
  lost(delayMs) {
    // A socket that closes before its upgrade went through was refused or never reached
    // the server, and the browser does not tell which: a 401 for the token looks exactly
    // like a server that is down.
    const refused = this.ws != null && !this.upgraded;
    this.detach()?.close();
    this.connectionGone();
    this.saveCursor();
    if (this.stopped) return;
    const inMs = delayMs ?? backoffDelay(this.attempt++, this.random, this.opts.jitter);
    this.nextRetryAt = this.now() + inMs;
    this.timers.retry = this.setTimeout(() => {
      this.timers.retry = null;
      this.open();
    }, inMs);
    this.setState('reconnecting', { inMs, at: this.nextRetryAt, attempt: this.attempt });
    if (refused) this.checkToken();
  }

  /**
   * Asks the server over plain HTTP whether it takes the token. Only a `401` from courier
   * itself (`WWW-Authenticate: Bearer`) is a verdict: then no retry can succeed, and the
   * client stops in state `refused`. A server that is down, busy or too old to answer the
   * check, or a proxy's own 401, leaves the backoff going.
   */
  checkToken() {
    if (!this.fetch || this.checking) return;
    const epoch = this.epoch;
    this.checking = true;
    // The token goes as the socket sends it, in the query: the check then passes through
    // whatever stands in front of the server exactly as the upgrade did (an Authorization
    // header would displace a proxy's own Basic credentials).
    // The executor runs at once, and turns a fetch that throws into a rejection.
    new Promise((resolve) => resolve(this.fetch(this.socketUrl(tokenCheckUrl(this.url)), { cache: 'no-store' })))
      .then(
        (res) => {
          const courier = /^bearer\b/i.test(res?.headers?.get?.('www-authenticate') ?? '');
          // A welcome since the check began proves the token good; a stop ends the matter.
          if (res?.status === 401 && courier && epoch === this.epoch && !this.stopped) this.stop('refused');
        },
        () => {},
      )
      .finally(() => {
        this.checking = false;
      });
  }

  /** `url` with the token in its query. */
  socketUrl(url) {
    const sep = url.includes('?') ? '&' : '?';
    return `${url}${sep}token=${encodeURIComponent(this.token)}`;
  }

  /** Resets what belongs to one connection; the cursor and the outbox stay. */
  connectionGone() {
    this.welcomed = false;
    this.sync = null;
    this.syncRetryAt = null;
    this.ackOwed = false;
    this.cancel('ack');
    for (const { reject, timer } of this.requests.values()) {
      this.clearTimeout(timer);
      reject(new CourierError('disconnected', 'the connection dropped before the reply'));
    }
    this.requests.clear();
    // Asked again after the next welcome; the answer then reflects the changes buffered
    // here, all of them received, so committed, before it is asked for.
    for (const gid of this.groupFetches.keys()) this.groupsWanted.add(gid);
    this.groupFetches.clear();
  }

  cancel(name) {
    if (this.timers[name] != null) this.clearTimeout(this.timers[name]);
    this.timers[name] = null;
  }

  scheduleTick() {
    this.timers.tick = this.setTimeout(() => this.tick(), this.opts.tickMs);
  }

  tick() {
    const t = this.now();
    // Timers stand still while the machine sleeps: a tick far later than it was due is
    // the first sign of a wake, when the old connection is likely dead and the wait of
    // the backoff is no longer worth anything.
    const woke = t - this.lastTick > this.opts.tickMs + this.opts.wakeJumpMs;
    this.lastTick = t;
    this.scheduleTick();
    if (!this.ws) {
      if (woke) this.reconnectNow();
      return;
    }
    if (this.silent(t)) return this.lost(woke ? 0 : undefined);
    if (!this.welcomed) return;
    this.maybePing(t);
    this.retryDue(t);
  }

  /** The server has been heard from too long ago: the link is taken for dead. */
  silent(t) {
    if (!this.welcomed) return t - this.lastHeard > this.opts.connectTimeoutMs;
    // Silence alone is not enough: a hidden tab's timers may run once a minute, and a
    // late tick would then see a minute of quiet on a healthy link. A probe ping left
    // unanswered for the grace is what proves it; on time it falls at heartbeat + grace.
    const unanswered = this.lastPing > this.lastHeard && t - this.lastPing > this.opts.graceMs;
    return unanswered && t - this.lastHeard > this.heartbeatMs + this.opts.graceMs;
  }

  maybePing(t) {
    const hb = this.heartbeatMs;
    // The ping keeps the server's idle timer from firing while there is nothing to say,
    // and after a heartbeat of silence it draws a pong, so a live server is heard
    // before the deadline.
    const idle = t - this.lastSent >= hb;
    const probe = t - this.lastHeard >= hb && this.lastPing <= this.lastHeard;
    if (idle || probe) {
      this.lastPing = t;
      this.write({ type: 'ping' });
    }
  }

  retryDue(t) {
    if (this.syncRetryAt != null && this.syncRetryAt <= t) {
      this.syncRetryAt = null;
      this.startSync();
    }
    for (const entry of this.out.values()) {
      if (entry.state === 'pending' && entry.retryAt != null && entry.retryAt <= t) this.transmit(entry);
    }
  }

  write(obj) {
    if (this.ws?.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    this.lastSent = this.now();
    return true;
  }

  // ---- frames from the server ----

  onFrame(text) {
    this.lastHeard = this.now();
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    if (f === null || typeof f !== 'object') return;
    switch (f.type) {
      case 'welcome':
        return this.onWelcome(f);
      case 'pong':
        if (f.heartbeat_ms > 0) this.heartbeatMs = f.heartbeat_ms;
        break;
      case 'msg':
        return this.onMsg(f);
      case 'sent':
        return this.onSent(f);
      case 'synced':
        return this.onSynced(f);
      case 'error':
        return this.onError(f);
      case 'read':
        this.onRead(f);
        break;
      case 'presence':
      case 'typing':
        this.emit(f.type, f);
        break;
    }
    if (f.rid != null) this.settle(f);
  }

  onWelcome(f) {
    // A server behind this cursor (its database restored from a backup) numbers from its
    // own head: entries pushed before the sync answers must not be dropped as old.
    if (f.inbox_seq < this.cursor) {
      this.cursor = f.inbox_seq;
      this.held.clear();
      this.saveCursor();
    }
    this.welcomed = true;
    this.epoch++;
    this.attempt = 0;
    this.heartbeatMs = f.heartbeat_ms > 0 ? f.heartbeat_ms : this.opts.heartbeatMs;
    this.lastPing = this.lastSent = this.now();
    this.setState('online');
    this.emit('welcome', f);
    // The sync goes first: the server answers a send that follows it after its `synced`,
    // so the replay reaches this client before any resend's `sent`.
    this.startSync();
    for (const entry of this.out.values()) if (entry.state === 'pending') this.transmit(entry);
    // A watch list belongs to a connection on the server; a new one starts empty.
    if (this.watched) this.request({ type: 'watch', users: this.watched }).catch(() => {});
    // The server answers these after the sync's replay, whose changes go over the answers.
    for (const gid of [...this.groupsWanted]) this.fetchGroup(gid);
  }

  onMsg(m) {
    // A duplicate wants its ack too: it is a re-push of one whose ack the server missed.
    this.oweAck();
    if (m.seq <= this.cursor || this.held.has(m.seq)) return;
    // Our own message came back as an entry (its `sent` was lost with a connection):
    // the entry confirms the send as well as a `sent` would.
    const mine = m.cid != null ? this.out.get(m.cid) : undefined;
    if (mine?.state === 'pending') this.markSent(mine, m);
    this.take(m);
  }

  onSent(s) {
    const entry = this.out.get(s.cid);
    // A `sent` for a cid this client did not make carries no body to show; leaving the
    // cursor below it makes the next entry look like a gap, and the sync brings it whole.
    if (!entry) return;
    if (entry.state === 'pending') this.markSent(entry, s);
    // On the sending connection the `sent` stands for the sender's own inbox entry.
    const { seq, mid, conv, ts } = s;
    this.take({ type: 'msg', seq, mid, conv, from: this.user, body: entry.body, ts, kind: entry.kind, cid: s.cid });
  }

  /** Takes in an entry: hands out what is now gap-free, or holds it and syncs over the gap. */
  take(m) {
    if (m.seq <= this.cursor || this.held.has(m.seq)) return;
    if (m.seq !== this.cursor + 1) {
      this.hold(m);
      // One sync at a time: its `synced` looks again at what is still missing.
      if (!this.sync) this.startSync();
      return;
    }
    this.advance(m);
    for (let next; (next = this.held.get(this.cursor + 1)); ) {
      this.held.delete(next.seq);
      this.advance(next);
    }
  }

  advance(m) {
    this.cursor = m.seq;
    // Before the message event, so a listener finds the group as the entry leaves it.
    if (m.kind === 'group' && m.group && typeof m.group === 'object') this.groupChanged(m.group);
    this.emit('message', m);
  }

  // ---- group member lists ----

  /** A group's change entry, in inbox order. */
  groupChanged(change) {
    const gid = String(change.gid);
    const fetch = this.groupFetches.get(gid);
    if (fetch) return void fetch.changes.push(change);
    const known = this.groups.get(gid);
    const next = groupAfter(known, change, this.user);
    if (next === undefined) return this.fetchGroup(gid, [change]);
    if (next === null && !known) return;
    this.setGroup(gid, next);
  }

  setGroup(gid, group) {
    if (group) this.groups.set(gid, group);
    else this.groups.delete(gid);
    this.groupsDirty = true;
    this.emit('group', { gid, group: group ?? null });
  }

  /**
   * Asks for the list of `gid`. The answer is as of some moment after `changes` (received
   * before the request); they and the ones that come meanwhile go over it, in order.
   */
  fetchGroup(gid, changes = []) {
    this.groupsWanted.delete(gid);
    const fetch = { changes };
    this.groupFetches.set(gid, fetch);
    // Whether this fetch is still the one wanted: one that connectionGone gave up on (and
    // maybe replaced) has nothing left to do.
    const current = () => {
      if (this.groupFetches.get(gid) !== fetch) return false;
      this.groupFetches.delete(gid);
      return true;
    };
    this.groupInfo(gid).then(
      (g) => {
        if (!current()) return;
        this.setGroup(gid, { name: g.name, owner: g.owner ?? null, members: [...(g.members ?? [])] });
        for (const change of fetch.changes) this.groupChanged(change);
      },
      (err) => {
        if (!current()) return;
        if (err.code === 'forbidden' || err.code === 'not_found') {
          // Not a member (any more), or no such group: there is no list to keep. A change
          // that made this user a member again asks anew when the next one comes.
          if (this.groups.has(gid)) this.setGroup(gid, null);
        } else {
          this.groupsWanted.add(gid);
        }
      },
    );
  }

  loadGroups() {
    const groups = new Map();
    try {
      for (const [gid, g] of Object.entries(JSON.parse(this.load(this.key('groups')) ?? '{}'))) {
        if (Array.isArray(g?.members)) groups.set(gid, g);
      }
    } catch {
      /* a damaged copy costs a group_info per group */
    }
    return groups;
  }

  hold(m) {
    if (this.held.size >= this.opts.maxHeld) {
      // Keep the lowest: they are the ones the gap filling releases first.
      const highest = Math.max(...this.held.keys());
      if (highest < m.seq) return;
      this.held.delete(highest);
    }
    this.held.set(m.seq, m);
  }

  startSync() {
    if (!this.welcomed) return;
    const rid = `s${++this.ridSeq}`;
    this.sync = { rid, after: this.cursor };
    const req = { type: 'sync', after: this.cursor, rid };
    if (this.opts.syncLimit) req.limit = this.opts.syncLimit;
    this.write(req);
  }

  onSynced(f) {
    if (this.sync?.rid !== f.rid) return;
    const { after } = this.sync;
    this.sync = null;
    if (f.head < after) {
      // The server's inbox ends below our cursor (a database restored from a backup):
      // its head is the truth, and live pushes continue from there.
      this.cursor = f.head;
      this.held.clear();
    } else {
      // A gap still open after a page that made progress is worth another page; one
      // that made none would only repeat, so the next gap will ask again.
      const gapLeft = this.held.size > 0 && this.cursor > after;
      if (f.more || gapLeft) return this.startSync();
    }
    this.saveCursor();
    this.emit('synced', { cursor: this.cursor, head: f.head });
  }

  onError(f) {
    if (f.rid != null && this.sync?.rid === f.rid) {
      this.sync = null;
      this.syncRetryAt = this.now() + this.opts.retryMs;
      return;
    }
    if (f.rid != null && this.requests.has(f.rid)) return this.settle(f);
    const entry = f.cid != null ? this.out.get(f.cid) : undefined;
    if (entry?.state === 'pending') return this.sendRefused(entry, f);
    this.emit('error', f);
  }

  sendRefused(entry, f) {
    entry.error = { code: f.code, message: f.message };
    if (TRANSIENT.has(f.code)) {
      entry.retryAt = this.now() + this.opts.retryMs;
    } else {
      // Refused for what it is (too large, no such user, not a member): a resend would
      // be refused again.
      entry.state = 'failed';
      this.saveOutbox();
    }
    this.emit('outbox', entry);
  }

  onRead(f) {
    if (f.user !== this.user) {
      for (const entry of this.out.values()) {
        if (entry.state === 'sent' && entry.conv === f.conv && entry.mid <= f.mid) {
          entry.state = 'read';
          this.out.delete(entry.cid);
          this.emit('outbox', entry);
        }
      }
    }
    this.emit('read', f);
  }

  settle(f) {
    const pending = this.requests.get(f.rid);
    if (!pending) return;
    this.requests.delete(f.rid);
    this.clearTimeout(pending.timer);
    if (f.type === 'error') pending.reject(new CourierError(f.code, f.message, f));
    else pending.resolve(f);
  }

  // ---- acks and the stored state ----

  oweAck() {
    this.ackOwed = true;
    this.timers.ack ??= this.setTimeout(() => {
      this.timers.ack = null;
      this.flushAck();
    }, this.opts.ackDelayMs);
  }

  flushAck() {
    this.cancel('ack');
    this.saveCursor();
    // Acks only what is held with no gap below: entries above a gap stay unacked, and
    // if the gap's sync is slow the server's re-push brings them again.
    if (this.ackOwed && this.cursor > 0) this.write({ type: 'ack', seq: this.cursor });
    this.ackOwed = false;
  }

  key(what) {
    return `courier.${what}.${this.user}.${this.deviceId}`;
  }

  load(key) {
    try {
      return this.storage.getItem(key);
    } catch {
      return null;
    }
  }

  save(key, value) {
    // A full or refused storage (a private window) costs only what a reload would keep.
    try {
      this.storage.setItem(key, value);
    } catch {
      /* kept in memory */
    }
    return value;
  }

  saveCursor() {
    this.save(this.key('cursor'), String(this.cursor));
    if (this.groupsDirty) {
      this.groupsDirty = false;
      this.save(this.key('groups'), JSON.stringify(Object.fromEntries(this.groups)));
    }
  }

  saveOutbox() {
    const pending = [];
    for (const { cid, to, conv, body, kind, createdAt, state } of this.out.values()) {
      if (state === 'pending') pending.push({ cid, to, conv, body, kind, createdAt });
    }
    this.save(this.key('outbox'), JSON.stringify(pending));
  }

  markSent(entry, { mid, seq, conv, ts }) {
    Object.assign(entry, { state: 'sent', mid, seq, conv, ts, retryAt: null, error: undefined });
    this.saveOutbox();
    this.emit('outbox', entry);
    let tracked = 0;
    for (const e of this.out.values()) if (e.state === 'sent') tracked++;
    // Forget the oldest when too many wait for a receipt (a group's never comes).
    for (const e of this.out.values()) {
      if (tracked <= this.opts.maxTracked) break;
      if (e.state === 'sent') {
        this.out.delete(e.cid);
        tracked--;
      }
    }
  }

  transmit(entry) {
    entry.retryAt = null;
    const req = { type: 'send', cid: entry.cid, to: entry.to, body: entry.body };
    if (entry.kind !== 'text') req.kind = entry.kind;
    this.write(req);
  }

  // ---- the public requests ----

  /** Sends `obj` with a fresh rid; resolves with its reply, rejects on `error`, timeout or a drop. */
  request(obj, { timeoutMs = this.opts.requestTimeoutMs } = {}) {
    if (!this.welcomed) return Promise.reject(new CourierError('disconnected', 'not connected'));
    const rid = `r${++this.ridSeq}`;
    return new Promise((resolve, reject) => {
      const timer = this.setTimeout(() => {
        this.requests.delete(rid);
        reject(new CourierError('timeout', `no reply to ${obj.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.requests.set(rid, { resolve, reject, timer });
      this.write({ ...obj, rid });
    });
  }

  /** Queues a message; it is sent now if connected, else after the next welcome. */
  send(to, body, kind = 'text') {
    const entry = {
      cid: `${this.deviceId}-${randomHex(12)}`,
      to,
      conv: convOf(this.user, to),
      body,
      kind,
      createdAt: this.now(),
      state: 'pending',
    };
    this.out.set(entry.cid, entry);
    this.saveOutbox();
    if (this.welcomed) this.transmit(entry);
    this.emit('outbox', entry);
    return entry;
  }

  /** Pending, failed and sent-but-unread sends of this session, oldest first. */
  outbox() {
    return [...this.out.values()];
  }

  /** Sends a failed message again, with the same cid. */
  retry(cid) {
    const entry = this.out.get(cid);
    if (entry?.state !== 'failed') return;
    entry.state = 'pending';
    entry.error = undefined;
    this.saveOutbox();
    if (this.welcomed) this.transmit(entry);
    this.emit('outbox', entry);
  }

  /** Forgets a failed message. */
  dismiss(cid) {
    if (this.out.get(cid)?.state === 'failed') this.out.delete(cid);
  }

  read(conv, mid) {
    return this.request({ type: 'read', conv, mid });
  }

  convs() {
    return this.request({ type: 'convs' }).then((r) => r.items);
  }

  /** One page of `conv` older than mid `before` (the newest page without it), oldest first. */
  history(conv, before, limit) {
    const req = { type: 'history', conv };
    if (before != null) req.before = before;
    if (limit != null) req.limit = limit;
    return this.request(req).then((r) => ({ msgs: r.msgs, more: r.more }));
  }

  groupCreate(name, members) {
    return this.request({ type: 'group_create', name, members }).then((g) => this.groupReplied(g));
  }

  groupAdd(gid, members) {
    return this.request({ type: 'group_add', gid, members }).then((g) => this.groupReplied(g));
  }

  groupLeave(gid) {
    return this.request({ type: 'group_leave', gid });
  }

  /** The whole group `gid` (`gid`, `name`, `owner`, `members`), for members only. */
  groupInfo(gid) {
    return this.request({ type: 'group_info', gid: String(gid) });
  }

  /** What this client knows of group `gid`: `{ name, owner, members }`, or undefined. */
  group(gid) {
    return this.groups.get(String(gid));
  }

  /** Asks for the list of `gid` unless it is known or asked for already (now, or once online). */
  ensureGroup(gid) {
    gid = String(gid);
    if (this.groups.has(gid) || this.groupFetches.has(gid)) return;
    if (this.welcomed) this.fetchGroup(gid);
    else this.groupsWanted.add(gid);
  }

  /** A create or add answered with the whole group: a list for a group not known yet. */
  groupReplied(g) {
    const gid = String(g.gid);
    // A known list is kept by the change entries, which come in order; the reply may
    // come before or after them.
    if (!this.groups.has(gid) && !this.groupFetches.has(gid) && Array.isArray(g.members)) {
      this.setGroup(gid, { name: g.name, owner: g.owner ?? null, members: [...g.members] });
    }
    return g;
  }

  recall(mid) {
    return this.request({ type: 'recall', mid });
  }

  /** Replaces the watched users; kept, and sent again after every reconnect. */
  watch(users) {
    this.watched = [...users];
    if (!this.welcomed) return Promise.resolve(null);
    return this.request({ type: 'watch', users: this.watched });
  }

  /** Keeps `user` out, both ways: no dm, no group add, no presence, no typing. */
  block(user) {
    return this.request({ type: 'block', user });
  }

  unblock(user) {
    return this.request({ type: 'unblock', user });
  }

  /** The users this user blocks, oldest block first. */
  blocked() {
    return this.request({ type: 'blocked' }).then((r) => r.users);
  }

  /** Tells `to` that this user is typing, at most once per typingEveryMs; true when sent. */
  typing(to) {
    const t = this.now();
    if (t - (this.typingAt.get(to) ?? -Infinity) < this.opts.typingEveryMs) return false;
    if (!this.welcomed) return false;
    // Answered `ok`, or `forbidden` when `to` is out of reach (no message between the two
    // yet, or a block): neither is news to show.
    this.request({ type: 'typing', to }).catch(() => {});
    this.typingAt.set(to, t);
    return true;
  }
}
