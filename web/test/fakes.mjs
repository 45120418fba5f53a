// Hand-driven stand-ins for what courier.js takes from the browser: a clock with timers
// that fire only when a test advances it, a WebSocket the test opens, feeds and drops,
// and a harness that wires them to a client.

import { CourierClient, memoryStorage } from '../courier.js';

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** Moves time forward by `ms`, firing every timer that falls due, in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let due = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!due || timer.at < due.at)) due = { id, ...timer };
      }
      if (!due) break;
      this.timers.delete(due.id);
      this.t = Math.max(this.t, due.at);
      due.fn();
    }
    this.t = end;
  }

  /** The wall clock jumps with no timer firing: the machine slept. */
  jump(ms) {
    this.t += ms;
  }
}

export class FakeSocket {
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.frames = [];
    this.closedWith = null;
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.frames.push(JSON.parse(text));
  }

  close(code) {
    this.readyState = 3;
    this.closedWith = code ?? 1005;
  }

  // ---- the test's side ----

  /** The upgrade succeeded. */
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }

  /** The server or the network ended the connection. */
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code });
  }

  sentOf(type) {
    return this.frames.filter((f) => f.type === type);
  }

  lastOf(type) {
    return this.sentOf(type).at(-1);
  }
}

/**
 * A `fetch` whose answers the test gives: each call is recorded with `respond(status,
 * headers)` and `fail()`, and its promise waits until one of them is called.
 */
export function fakeFetch() {
  const calls = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      calls.push({
        url,
        init,
        respond(status, headers = {}) {
          const lower = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
          resolve({ status, ok: status >= 200 && status < 300, headers: { get: (name) => lower.get(name.toLowerCase()) ?? null } });
        },
        fail() {
          reject(new TypeError('Failed to fetch'));
        },
      });
    });
  return { fetch, calls };
}

/** Lets every promise callback that is ready run (fetch answers are promises). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A JWT-shaped token naming `user`; courier.js reads its `sub` and nothing else. */
export function makeToken(user) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: user, exp: 4102444800 })}.sig`;
}

/**
 * A client on fake time and sockets. `h.ws` is the newest socket; `h.events` records
 * every event the client emitted, as [name, data].
 */
export function harness({ user = 'alice', storage = memoryStorage(), clock = new FakeClock(), ...options } = {}) {
  const sockets = [];
  const Socket = class extends FakeSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  };
  const { fetch, calls: fetches } = fakeFetch();
  const window = new EventTarget();
  const document = new EventTarget();
  document.visibilityState = 'visible';
  const client = new CourierClient({
    url: 'ws://courier.test/ws',
    token: makeToken(user),
    WebSocket: Socket,
    fetch,
    storage,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    window,
    document,
    ...options,
  });
  const events = [];
  for (const name of ['state', 'welcome', 'message', 'group', 'outbox', 'synced', 'read', 'presence', 'typing', 'error']) {
    client.on(name, (data) => events.push([name, structuredClone(data)]));
  }
  return {
    client,
    clock,
    storage,
    sockets,
    fetches,
    window,
    document,
    events,
    get ws() {
      return sockets.at(-1);
    },
    /** The newest socket is accepted and greeted. */
    welcome({ inbox_seq = 0, heartbeat_ms = 25000 } = {}) {
      this.ws.accept();
      this.ws.receive({ type: 'welcome', user, conn: '1', heartbeat_ms, inbox_seq });
    },
    /** Answers the newest sync on the newest socket. */
    synced({ seq, head = seq, more = false } = {}) {
      const sync = this.ws.lastOf('sync');
      this.ws.receive({ type: 'synced', rid: sync.rid, seq: seq ?? sync.after, head: head ?? sync.after, more });
    },
    /** Connects, greets, and answers the first sync as caught up. */
    online(opts = {}) {
      if (client.stopped) client.connect();
      this.welcome(opts);
      this.synced({ seq: client.cursor, head: client.cursor });
    },
    named(name) {
      return events.filter(([n]) => n === name).map(([, data]) => data);
    },
    seqs() {
      return this.named('message').map((m) => m.seq);
    },
  };
}

/** An inbox entry pushed to alice. */
export function msg(seq, extra = {}) {
  return {
    type: 'msg',
    seq,
    mid: 100 + seq,
    conv: 'dm:alice:bob',
    from: 'bob',
    body: `m${seq}`,
    ts: 1,
    kind: 'text',
    ...extra,
  };
}
