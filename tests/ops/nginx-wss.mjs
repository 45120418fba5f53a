// courier behind real nginx over wss://, driven with the real client library (web/courier.js).
// Run by scripts/nginx-test.sh, which starts nginx and courier and passes their addresses
// in the environment; see there. Every wait is for a state, with a generous deadline;
// the only durations asked for are lower bounds (stay idle at least this long).

import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import https from 'node:https';
import http from 'node:http';
import { webcrypto } from 'node:crypto';
import { socketClass } from './wsclient.mjs';

// courier.js takes its randomness from the Web Crypto global, which node 18 hides behind
// a flag.
globalThis.crypto ??= webcrypto;
const { CourierClient, memoryStorage } = await import('../../web/courier.js');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run scripts/nginx-test.sh)`);
  return value;
};
const WSS_URL = env('WSS_URL'); // wss://127.0.0.1:PORT/ws, through nginx
const HTTPS_BASE = env('HTTPS_BASE');
const HTTP_BASE = env('HTTP_BASE'); // nginx's plain listener (the :80 of the deploy file)
const DIRECT_URL = env('DIRECT_URL'); // ws://courier/ws, not through nginx
const DIRECT_BASE = env('DIRECT_BASE');
const CA = readFileSync(env('CA_FILE'), 'utf8');
const COURIER_LOG = env('COURIER_LOG_FILE');
const NGINX_ERROR_LOG = env('NGINX_ERROR_LOG');
const NGINX_ACCESS_LOG = env('NGINX_ACCESS_LOG');
const RELOAD = JSON.parse(env('NGINX_RELOAD'));
const READ_TIMEOUT_MS = Number(env('READ_TIMEOUT_MS'));
const TOKENS = { alice: env('TOKEN_ALICE'), bob: env('TOKEN_BOB'), carol: env('TOKEN_CAROL'), idle: env('TOKEN_IDLE') };

// Each client has its own loopback source address, so each line of courier's log names
// who it is about; nginx itself connects to courier from 127.0.0.1, which therefore
// must appear in no line.
const ADDR = { alice: '127.0.0.2', bob: '127.0.0.3', carol: '127.0.0.4', idle: '127.0.0.5', bad: '127.0.0.6' };
const PROXY_ADDR = /\bfrom 127\.0\.0\.1(?!\d)/;

const started = Date.now();
const step = (what) => console.log(`-- nginx-wss: ${what} (${((Date.now() - started) / 1000).toFixed(1)}s)`);

class Failure extends Error {}
function check(ok, what) {
  if (!ok) throw new Failure(what);
}

/** Resolves when `cond()` holds; fails with `what` if it does not within `ms`. */
async function waitFor(what, cond, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > deadline) throw new Failure(`timed out after ${ms} ms waiting for: ${what}`);
    await sleep(25);
  }
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const readLog = (path) => readFileSync(path, 'utf8');

function get(base, path, localAddress) {
  const url = new URL(path, base);
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.get(url, { ca: CA, localAddress, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.setTimeout(10000, () => req.destroy(new Error(`GET ${url}: no answer in 10 s`)));
    req.on('error', reject);
  });
}

/** One device of `user`: the library over the test socket, and what it saw. */
function device(user, url, { gate } = {}) {
  const sockets = [];
  const WebSocket = socketClass({ ca: CA, localAddress: ADDR[user], gate, onCreate: (ws) => sockets.push(ws) });
  // A short tick lets the library ping on time (every heartbeat) rather than up to a
  // second late, so a heartbeat of 500 ms keeps well inside the proxy's read timeout.
  const client = new CourierClient({ url, token: TOKENS[user], WebSocket, storage: memoryStorage(), tickMs: 100 });
  const d = { user, client, sockets, messages: [], welcomes: [], losses: [], pongGapMax: 0 };
  client.on('message', (m) => d.messages.push(m));
  client.on('welcome', (w) => d.welcomes.push(w));
  client.on('state', (s) => {
    if (s.state === 'reconnecting') d.losses.push({ cursor: client.cursor, socket: sockets.at(-1) });
  });
  client.connect();
  return d;
}

const online = (d, welcomes = 1) => d.client.state === 'online' && d.welcomes.length >= welcomes;
const bodies = (d) => d.messages.map((m) => m.body);
/** Every send of `from` has its `sent`: nothing of it is pending in the outbox. */
const allSent = (d) => d.client.outbox().every((e) => e.state !== 'pending');

async function metric(name) {
  const { body } = await get(DIRECT_BASE, '/metrics');
  const line = body.split('\n').find((l) => l.startsWith(`${name} `) || l === name);
  check(line, `/metrics has ${name}`);
  return Number(line.split(' ')[1]);
}

async function main() {
  // ---- plain HTTP through the proxy
  step('https: /healthz, /metrics allow-list, :80 redirect');
  const health = await get(HTTPS_BASE, '/healthz', ADDR.alice);
  check(health.status === 200 && JSON.parse(health.body).status === 'ok', `GET /healthz over https: ${health.status} ${health.body}`);
  check(/max-age=/.test(health.headers['strict-transport-security'] ?? ''), 'https answers carry Strict-Transport-Security');
  const page = await get(HTTPS_BASE, '/', ADDR.alice);
  check(page.status === 200 && /<html/i.test(page.body), `GET / (the chat page) over https: ${page.status}`);
  const metricsFar = await get(HTTPS_BASE, '/metrics', ADDR.alice);
  check(metricsFar.status === 403, `/metrics from a client address is refused by nginx (got ${metricsFar.status})`);
  const metricsNear = await get(HTTPS_BASE, '/metrics', '127.0.0.1');
  check(metricsNear.status === 200 && metricsNear.body.includes('courier_'), `/metrics from 127.0.0.1 passes (got ${metricsNear.status})`);
  const redirect = await get(HTTP_BASE, '/ws?token=x', ADDR.alice);
  check(redirect.status === 301 && /^https:\/\/[^/]+\/ws\?token=x$/.test(redirect.headers.location ?? ''),
    `plain http redirects to https with the path (got ${redirect.status} ${redirect.headers.location})`);

  // ---- the client's address comes from X-Forwarded-For, and only nginx's part of it
  step('a refused upgrade is logged with the client\'s address, not the proxy\'s nor a forged one');
  {
    const Bad = socketClass({ ca: CA, localAddress: ADDR.bad, headers: { 'X-Forwarded-For': '203.0.113.9' } });
    const ws = new Bad(`${WSS_URL}?token=not.a.token`, ['courier.v1']);
    await waitFor('the bad-token upgrade to be answered', () => ws.readyState === 3);
    check(ws.status === 401, `a bad token gets 401 through nginx (got ${ws.status})`);
    await waitFor(`courier to log "auth failed from ${ADDR.bad}"`, () => readLog(COURIER_LOG).includes(`auth failed from ${ADDR.bad}:`));
    check(!readLog(COURIER_LOG).includes('203.0.113.9'), 'a client-written X-Forwarded-For entry is not taken for the client');
  }

  // ---- chat over wss
  step('alice and bob over wss through nginx, carol straight to courier');
  const alice = device('alice', WSS_URL);
  const bob = device('bob', WSS_URL);
  const carol = device('carol', DIRECT_URL);
  await waitFor('alice, bob and carol online', () => online(alice) && online(bob) && online(carol));
  check(alice.sockets[0].protocol === 'courier.v1', `the subprotocol crosses nginx (got '${alice.sockets[0].protocol}')`);
  for (const d of [alice, bob, carol]) {
    await waitFor(`courier to log "${d.user} connected from ${ADDR[d.user]}"`,
      () => readLog(COURIER_LOG).includes(`${d.user} connected from ${ADDR[d.user]}\n`));
  }
  const heartbeatMs = alice.welcomes[0].heartbeat_ms;
  check(heartbeatMs * 2 < READ_TIMEOUT_MS, `the heartbeat (${heartbeatMs} ms) is well inside nginx's read timeout (${READ_TIMEOUT_MS} ms)`);

  for (let i = 0; i < 5; i++) {
    alice.client.send('user:bob', `a2b-${i}`);
    bob.client.send('user:alice', `b2a-${i}`);
  }
  const expectBob = ['a2b-0', 'a2b-1', 'a2b-2', 'a2b-3', 'a2b-4'];
  const expectAlice = ['b2a-0', 'b2a-1', 'b2a-2', 'b2a-3', 'b2a-4'];
  await waitFor('bob to receive alice\'s five and alice bob\'s five', () =>
    expectBob.every((b) => bodies(bob).includes(b)) && expectAlice.every((b) => bodies(alice).includes(b)) && allSent(alice) && allSent(bob));
  // The client acks what it holds (coalesced over a few ms): its last ack on the wire
  // must come to its cursor.
  for (const d of [alice, bob]) {
    await waitFor(`${d.user}'s last ack to reach its cursor`, () => {
      const acks = d.sockets.at(-1).sentFrames.filter((f) => f.type === 'ack');
      return acks.length > 0 && acks.at(-1).seq === d.client.cursor;
    });
  }

  // ---- idle past nginx's read timeout
  const idleMs = Math.ceil(READ_TIMEOUT_MS * 3.5);
  step(`idle ${idleMs} ms: ${idleMs / READ_TIMEOUT_MS}x nginx's proxy_read_timeout of ${READ_TIMEOUT_MS} ms`);
  // The control: a connection that never pings. courier's own idle timeout is set far
  // longer, so if it goes, nginx's read timeout took it: the test's timeout is live.
  const Silent = socketClass({ ca: CA, localAddress: ADDR.idle });
  const silent = new Silent(`${WSS_URL}?token=${TOKENS.idle}`, ['courier.v1']);
  let silentClosedAt = null;
  silent.onclose = () => (silentClosedAt = Date.now());
  await waitFor('the silent control connection to open', () => silent.readyState === 1 || silentClosedAt);
  check(silent.readyState === 1, `the control connection upgraded (status ${silent.status})`);
  const idleFrom = Date.now();
  const pongAt = { alice: [], bob: [] };
  const tap = (d) => {
    const ws = d.sockets.at(-1);
    const onmessage = ws.onmessage;
    ws.onmessage = (ev) => {
      if (ev.data.includes('"pong"')) pongAt[d.user].push(Date.now());
      onmessage(ev);
    };
  };
  tap(alice);
  tap(bob);
  await waitFor('nginx to cut the silent connection at its read timeout', () => silentClosedAt, READ_TIMEOUT_MS * 5 + 20000);
  check(silent.closeCode === 1006, `the silent connection was cut without a close frame (by the proxy, not courier: got ${silent.closeCode})`);
  await waitFor('nginx to log the read timeout', () => /upstream timed out .* while proxying upgraded connection/.test(readLog(NGINX_ERROR_LOG)));
  await waitFor('the idle period to pass', () => Date.now() - idleFrom >= idleMs, idleMs + 5000);
  for (const d of [alice, bob]) {
    check(d.sockets.length === 1 && d.losses.length === 0 && d.welcomes.length === 1,
      `${d.user} kept its one connection through ${idleMs} ms of idling (sockets ${d.sockets.length}, losses ${d.losses.length})`);
    const t = [idleFrom, ...pongAt[d.user]];
    d.pongGapMax = Math.max(...t.slice(1).map((x, i) => x - t[i]));
  }
  step(`heartbeats kept both alive: ${pongAt.alice.length} and ${pongAt.bob.length} pongs, longest gap ${Math.max(alice.pongGapMax, bob.pongGapMax)} ms`);
  // Everything pushed before the idle period was acked on time: an unacked push would
  // have been re-pushed after --ack-timeout, well inside it.
  check((await metric('courier_repushes_total')) === 0, 'no re-push: every push through nginx was acked in time');
  alice.client.send('user:bob', 'after-idle');
  await waitFor('bob to receive a message sent after the idle period', () => bodies(bob).includes('after-idle'));

  // ---- nginx reload with clients connected
  step('nginx -s reload: old workers close their connections; the clients resume from their cursors');
  // The reconnects are held back until the messages below are stored, so those can only
  // reach alice and bob by the sync from their cursors.
  let release;
  const held = new Promise((resolve) => (release = resolve));
  const gateOpen = { open: false };
  const gate = () => (gateOpen.open ? undefined : held);
  for (const d of [alice, bob]) {
    // The gate belongs to sockets made from here on: the library makes one per attempt.
    const Gated = socketClass({ ca: CA, localAddress: ADDR[d.user], gate, onCreate: (ws) => d.sockets.push(ws) });
    d.client.WebSocket = Gated;
  }
  // carol talks all through the reload: some pushes go into connections nginx is closing.
  const stream = [];
  let streaming = true;
  const streamer = (async () => {
    for (let i = 0; streaming && i < 400; i++) {
      carol.client.send('user:alice', `stream-${i}`);
      carol.client.send('user:bob', `stream-${i}`);
      stream.push(`stream-${i}`);
      await sleep(50);
    }
  })();
  await waitFor('carol\'s stream to be flowing', () => bodies(alice).includes('stream-2') && bodies(bob).includes('stream-2'));
  execFileSync(RELOAD[0], RELOAD.slice(1), { stdio: 'inherit' });
  await waitFor('the old nginx worker to close alice\'s and bob\'s connections', () => alice.losses.length >= 1 && bob.losses.length >= 1, 30000);
  streaming = false;
  await streamer;
  // Sent while both are away: only their syncs can bring these.
  const away = ['away-0', 'away-1', 'away-2'];
  for (const b of away) {
    carol.client.send('user:alice', `carol-${b}`);
    carol.client.send('user:bob', `carol-${b}`);
    alice.client.send('user:bob', `alice-${b}`); // queued in alice's outbox
    bob.client.send('user:alice', `bob-${b}`);
  }
  await waitFor('carol\'s messages to be stored', () => allSent(carol));
  check(alice.client.state !== 'online' && bob.client.state !== 'online', 'alice and bob were still away when carol\'s messages were stored');
  gateOpen.open = true;
  release();
  await waitFor('alice and bob to be welcomed again through the new workers', () => online(alice, 2) && online(bob, 2), 30000);
  const wantAlice = [...stream, ...away.map((b) => `carol-${b}`), ...away.map((b) => `bob-${b}`)];
  const wantBob = [...stream, ...away.map((b) => `carol-${b}`), ...away.map((b) => `alice-${b}`)];
  await waitFor('alice and bob to hold everything sent to them, with their outboxes empty', () =>
    wantAlice.every((b) => bodies(alice).includes(b)) && wantBob.every((b) => bodies(bob).includes(b)) &&
    allSent(alice) && allSent(bob), 30000);

  for (const d of [alice, bob]) {
    const loss = d.losses[0];
    const resumed = loss.socket !== d.sockets.at(-1) && d.sockets.at(-1).sentFrames.find((f) => f.type === 'sync');
    check(resumed && resumed.after === loss.cursor && loss.cursor > 0,
      `${d.user} resumed with sync from its cursor ${loss.cursor} (sent after=${resumed?.after})`);
    const seqs = d.messages.map((m) => m.seq);
    check(new Set(seqs).size === seqs.length, `${d.user} saw no entry twice`);
    check(seqs.every((s, i) => s === i + 1), `${d.user} saw its inbox 1..${seqs.length} in order with no gap`);
    const mids = d.messages.map((m) => m.mid);
    check(new Set(mids).size === mids.length, `${d.user} saw no message twice`);
    // Each inbox: 5 + 5 before the idle period, after-idle, the stream, 3 away
    // messages from carol, 3 from the peer and 3 of its own.
    const inbox = 5 + 5 + 1 + stream.length + 3 * away.length;
    check(seqs.length === inbox, `${d.user} holds its whole inbox: ${seqs.length} entries of ${inbox}`);
  }
  const streamed = stream.length;
  for (const d of [alice, bob]) {
    const got = bodies(d).filter((b) => b.startsWith('stream-')).length;
    check(got === streamed, `${d.user} got each of carol's ${streamed} streamed messages exactly once (got ${got})`);
  }
  for (const user of ['alice', 'bob']) {
    await waitFor(`courier to log the reload's close of ${user}'s first connection`,
      () => readLog(COURIER_LOG).includes(`connection from ${ADDR[user]} closed: 1006`));
    const connected = readLog(COURIER_LOG).split(`${user} connected from ${ADDR[user]}\n`).length - 1;
    check(connected === 2, `courier logged ${user} connecting from ${ADDR[user]} twice (got ${connected})`);
  }
  // Upgraded connections are logged when they end: the reload ended the first ones.
  await waitFor('nginx to log the /ws connections the reload ended',
    () => readLog(NGINX_ACCESS_LOG).split('\n').filter((l) => l.includes('"GET /ws HTTP/1.1" 101 ')).length >= 2);
  const access = readLog(NGINX_ACCESS_LOG);
  check(access.includes('"GET /ws HTTP/1.1" 401 ') && access.includes('"GET /ws HTTP/1.1" 301 '), 'the access log has the refused upgrade and the redirect');
  check(!/token=|eyJ/.test(access), 'the access log holds no token (the courier_notoken format drops the query string)');
  const proxyLines = readLog(COURIER_LOG).split('\n').filter((l) => PROXY_ADDR.test(l));
  check(proxyLines.length === 0, `no log line names the proxy's address as a client's:\n${proxyLines.join('\n')}`);
  step(`reload: alice and bob each reconnected once and got ${streamed} streamed + ${away.length * 2} away messages exactly once`);

  for (const d of [alice, bob, carol]) d.client.close();
  step('ok');
}

try {
  await main();
  process.exit(0);
} catch (err) {
  console.error(`nginx-wss: FAILED: ${err instanceof Failure ? err.message : err.stack}`);
  process.exit(1);
}
