// Connecting, liveness and reconnecting: PROTOCOL.md "Liveness" and "Reconnect".

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKOFF_MS, backoffDelay } from '../courier.js';
import { harness } from './fakes.mjs';

/** Fails the newest connection attempt and returns the wait the client chose before the next. */
function failAttempt(h) {
  h.ws.drop(1006);
  const last = h.named('state').at(-1);
  assert.equal(last.state, 'reconnecting');
  assert.equal(h.client.nextRetryAt - h.clock.now(), last.inMs, 'nextRetryAt is when the retry fires');
  return last.inMs;
}

test('connects to /ws with the token and offers courier.v1', () => {
  const h = harness();
  h.client.connect();
  const url = new URL(h.ws.url);
  assert.equal(url.pathname, '/ws');
  assert.equal(url.searchParams.get('token'), h.client.token);
  assert.deepEqual(h.ws.protocols, ['courier.v1']);
  assert.equal(h.client.state, 'connecting');
  h.welcome();
  assert.equal(h.client.state, 'online');
});

test('backoff follows 1, 2, 3, 5, 10, 20, 20 s and reconnects when each wait is over', () => {
  const h = harness({ random: () => 0.5 });
  h.client.connect();
  const waits = [];
  for (let i = 0; i < 8; i++) {
    const wait = failAttempt(h);
    waits.push(wait);
    const before = h.sockets.length;
    h.clock.advance(wait - 1);
    assert.equal(h.sockets.length, before, 'no attempt before the wait is over');
    h.clock.advance(1);
    assert.equal(h.sockets.length, before + 1, 'an attempt when the wait is over');
  }
  assert.deepEqual(waits, [1000, 2000, 3000, 5000, 10000, 20000, 20000, 20000]);
});

test('backoff jitter stays within ±20 % and uses the injected randomness', () => {
  assert.deepEqual(BACKOFF_MS, [1000, 2000, 3000, 5000, 10000, 20000]);
  for (let attempt = 0; attempt < 8; attempt++) {
    const base = BACKOFF_MS[Math.min(attempt, 5)];
    assert.equal(backoffDelay(attempt, () => 0), base * 0.8);
    assert.equal(backoffDelay(attempt, () => 0.999999), Math.round(base * 1.2 - base * 0.4 * 0.000001));
  }
  const h = harness({ random: () => 0 });
  h.client.connect();
  assert.deepEqual([failAttempt(h), (h.clock.advance(800), failAttempt(h))], [800, 1600]);
});

test('a welcome resets the backoff to its first step', () => {
  const h = harness();
  h.client.connect();
  for (const wait of [1000, 2000, 3000]) {
    assert.equal(failAttempt(h), wait);
    h.clock.advance(wait);
  }
  h.welcome();
  assert.equal(failAttempt(h), 1000);
});

test('the online event resets the backoff and reconnects at once', () => {
  const h = harness();
  h.client.connect();
  for (const wait of [1000, 2000, 3000, 5000, 10000]) {
    assert.equal(failAttempt(h), wait);
    h.clock.advance(wait);
  }
  assert.equal(failAttempt(h), 20000);
  const before = h.sockets.length;
  h.window.dispatchEvent(new Event('online'));
  assert.equal(h.sockets.length, before + 1, 'connecting again without waiting the 20 s');
  assert.equal(failAttempt(h), 1000, 'the backoff starts over');
  h.clock.advance(1000);
  assert.equal(h.sockets.length, before + 2);
  h.welcome();
  h.clock.advance(20000);
  assert.equal(h.sockets.length, before + 2, 'the old 20 s timer was cancelled, not left to fire');
});

test('the online event while connected opens no second socket', () => {
  const h = harness();
  h.online();
  h.window.dispatchEvent(new Event('online'));
  assert.equal(h.sockets.length, 1);
});

test('becoming visible while disconnected counts as a wake: reconnect at once', () => {
  const h = harness();
  h.client.connect();
  for (const wait of [1000, 2000, 3000, 5000]) {
    failAttempt(h);
    h.clock.advance(wait);
  }
  assert.equal(failAttempt(h), 10000);
  h.document.visibilityState = 'hidden';
  h.document.dispatchEvent(new Event('visibilitychange'));
  assert.equal(h.sockets.length, 5, 'hiding the page does nothing');
  h.document.visibilityState = 'visible';
  h.document.dispatchEvent(new Event('visibilitychange'));
  assert.equal(h.sockets.length, 6);
  assert.equal(failAttempt(h), 1000);
});

test('a wall-clock jump between ticks (sleep) resets the backoff and reconnects at once', () => {
  const h = harness();
  h.client.connect();
  for (const wait of [1000, 2000, 3000, 5000, 10000]) {
    failAttempt(h);
    h.clock.advance(wait);
  }
  assert.equal(failAttempt(h), 20000);
  h.clock.jump(17000); // slept; the 20 s retry is not due yet
  const before = h.sockets.length;
  h.clock.advance(1000); // the first tick after waking
  assert.equal(h.sockets.length, before + 1, 'reconnected before the 20 s were over');
  assert.equal(failAttempt(h), 1000);
});

test('ordinary ticks are no wake: the backoff keeps its step', () => {
  const h = harness();
  h.client.connect();
  failAttempt(h);
  h.clock.advance(1000);
  failAttempt(h);
  h.clock.advance(1500); // ticks come a second apart, the 2 s wait is not over
  assert.equal(h.sockets.length, 2);
  h.clock.advance(500);
  assert.equal(h.sockets.length, 3);
});

test('after a sleep a probe ping goes out at once; unanswered for the grace, the link is replaced', () => {
  const h = harness({ graceMs: 10000 });
  h.online();
  h.clock.jump(60000);
  h.clock.advance(0); // the overdue tick runs on waking
  assert.equal(h.ws.sentOf('ping').length, 1, 'probed at once');
  h.clock.advance(10000);
  assert.equal(h.sockets[0].closedWith, null, 'the probe still has its grace');
  h.clock.advance(1000);
  assert.notEqual(h.sockets[0].closedWith, null, 'unanswered: closed');
  h.clock.advance(1000);
  assert.equal(h.sockets.length, 2, 'and replaced after the first backoff step');
});

test('after a sleep an answered probe keeps the link', () => {
  const h = harness({ graceMs: 10000 });
  h.online();
  h.clock.jump(60000);
  h.clock.advance(0);
  h.ws.receive({ type: 'pong', heartbeat_ms: 25000 });
  h.clock.advance(30000);
  assert.equal(h.sockets.length, 1);
  assert.equal(h.ws.closedWith, null);
});

test('ticks a minute late (a throttled background tab) do not drop a link whose pings are answered', () => {
  const h = harness({ graceMs: 10000 });
  h.online({ heartbeat_ms: 25000 });
  for (let minute = 0; minute < 10; minute++) {
    h.clock.jump(60000);
    h.clock.advance(0); // the tick that was due a minute ago runs now
    assert.equal(h.ws.frames.at(-1).type, 'ping', `minute ${minute}: a ping on the late tick`);
    h.ws.receive({ type: 'pong', heartbeat_ms: 25000 });
  }
  assert.equal(h.sockets.length, 1);
  assert.equal(h.ws.closedWith, null);
});

test('no frame from the server for heartbeat + grace: close and reconnect', () => {
  const h = harness({ graceMs: 10000 });
  h.online({ heartbeat_ms: 20000 });
  const first = h.ws;
  h.clock.advance(30000);
  assert.equal(first.closedWith, null, 'still within heartbeat + grace');
  h.clock.advance(1000);
  assert.notEqual(first.closedWith, null, 'silent past 20 s + 10 s: closed');
  assert.equal(h.client.state, 'reconnecting');
  h.clock.advance(1000);
  assert.equal(h.sockets.length, 2, 'a new connection after the first backoff step');
});

test('any frame from the server resets the silence deadline', () => {
  const h = harness({ graceMs: 10000 });
  h.online({ heartbeat_ms: 20000 });
  const first = h.ws;
  h.clock.advance(25000);
  first.receive({ type: 'presence', user: 'bob', online: true });
  h.clock.advance(29000);
  assert.equal(first.closedWith, null, '29 s after the last frame');
  h.clock.advance(2000);
  assert.notEqual(first.closedWith, null, '31 s after the last frame');
});

test('a pong can change the heartbeat the deadline is counted from', () => {
  const h = harness({ graceMs: 10000 });
  h.online({ heartbeat_ms: 20000 });
  h.ws.receive({ type: 'pong', heartbeat_ms: 60000 });
  h.clock.advance(65000);
  assert.equal(h.ws.closedWith, null);
  assert.equal(h.client.heartbeatMs, 60000);
});

test('a socket that is never greeted is given up after the connect timeout', () => {
  const h = harness({ connectTimeoutMs: 5000 });
  h.client.connect();
  h.ws.accept(); // upgraded, but no welcome
  h.clock.advance(6000);
  assert.notEqual(h.sockets[0].closedWith, null);
  assert.equal(h.client.state, 'reconnecting');
});

test('an app ping goes out every heartbeat while there is nothing else to send', () => {
  const h = harness();
  h.online({ heartbeat_ms: 10000 });
  h.ws.frames.length = 0;
  h.clock.advance(9000);
  assert.equal(h.ws.sentOf('ping').length, 0);
  h.clock.advance(1000);
  assert.equal(h.ws.sentOf('ping').length, 1);
  h.ws.receive({ type: 'pong', heartbeat_ms: 10000 });
  h.clock.advance(10000);
  assert.equal(h.ws.sentOf('ping').length, 2);
});

test('close() stops for good: state offline, socket closed, no reconnect', () => {
  const h = harness();
  h.online();
  h.client.close();
  assert.equal(h.client.state, 'offline');
  assert.equal(h.sockets[0].closedWith, 1000);
  h.clock.advance(120000);
  h.window.dispatchEvent(new Event('online'));
  assert.equal(h.sockets.length, 1);
});
