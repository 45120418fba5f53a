// A token the server refuses: the browser's WebSocket shows a 401 at the upgrade exactly as
// it shows a server that is down (a close, no status), so after an upgrade that failed the
// client asks `GET /ws` over plain HTTP, and only courier's own 401 there stops it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tokenCheckUrl } from '../courier.js';
import { harness, settle } from './fakes.mjs';

const BEARER = { 'WWW-Authenticate': 'Bearer' };

/** Connects and fails the first upgrade; returns the token check it caused. */
function refusedUpgrade(h) {
  h.client.connect();
  h.ws.drop(1006);
  assert.equal(h.client.state, 'reconnecting');
  assert.equal(h.fetches.length, 1, 'one token check per failed upgrade');
  return h.fetches[0];
}

test('the check asks /ws over http(s) with the token in the query, as the socket does', () => {
  assert.equal(tokenCheckUrl('ws://example.test:8080/ws'), 'http://example.test:8080/ws');
  assert.equal(tokenCheckUrl('wss://example.test/chat/ws?x=1'), 'https://example.test/chat/ws?x=1');
  const h = harness();
  const check = refusedUpgrade(h);
  const url = new URL(check.url);
  assert.equal(url.origin + url.pathname, 'http://courier.test/ws');
  assert.equal(url.searchParams.get('token'), h.client.token);
  assert.equal(check.init.cache, 'no-store');
});

test('courier’s 401 stops the client in state refused: no retry, ever', async () => {
  const h = harness();
  refusedUpgrade(h).respond(401, BEARER);
  await settle();
  assert.equal(h.client.state, 'refused');
  assert.equal(h.named('state').at(-1).state, 'refused');
  assert.equal(h.client.stopped, true);
  const sockets = h.sockets.length;
  h.clock.advance(120_000);
  h.window.dispatchEvent(new Event('online'));
  assert.equal(h.sockets.length, sockets, 'no socket after a refusal');
});

test('a server that is down, busy or does not answer the check keeps the backoff going', async () => {
  for (const answer of [
    (c) => c.fail(), // connection refused: the server is down
    (c) => c.respond(426), // the token is good; the upgrade failed for another cause
    (c) => c.respond(404), // a server from before the check
    (c) => c.respond(429, { 'Retry-After': '30' }),
    (c) => c.respond(503),
    (c) => c.respond(401, { 'WWW-Authenticate': 'Basic realm="proxy"' }), // a proxy's, not courier's
    (c) => c.respond(401), // no challenge: not courier's either
  ]) {
    const h = harness();
    answer(refusedUpgrade(h));
    await settle();
    assert.equal(h.client.state, 'reconnecting');
    const sockets = h.sockets.length;
    h.clock.advance(1000);
    assert.equal(h.sockets.length, sockets + 1, 'the next attempt comes after the backoff');
    h.welcome();
    assert.equal(h.client.state, 'online');
  }
});

test('a connection that was upgraded and then dropped is not checked', () => {
  const h = harness();
  h.online();
  h.ws.drop(1006);
  h.clock.advance(1000);
  h.ws.accept();
  h.ws.drop(1001); // upgraded, then closed before the welcome (a server shutting down)
  assert.equal(h.fetches.length, 0);
});

test('a 401 that arrives after a later attempt was welcomed is stale and ignored', async () => {
  const h = harness();
  const check = refusedUpgrade(h);
  h.clock.advance(1000);
  h.welcome();
  check.respond(401, BEARER);
  await settle();
  assert.equal(h.client.state, 'online');
  assert.equal(h.client.stopped, false);
});

test('one check at a time; the next failed upgrade after it is checked again', async () => {
  const h = harness();
  const first = refusedUpgrade(h);
  h.clock.advance(1000);
  h.ws.drop(1006);
  assert.equal(h.fetches.length, 1, 'no second check while the first is out');
  first.fail();
  await settle();
  h.clock.advance(2000);
  h.ws.drop(1006);
  assert.equal(h.fetches.length, 2);
  h.fetches[1].respond(401, BEARER);
  await settle();
  assert.equal(h.client.state, 'refused');
});

test('a 401 after the app closed the client changes nothing', async () => {
  const h = harness();
  const check = refusedUpgrade(h);
  h.client.close();
  check.respond(401, BEARER);
  await settle();
  assert.equal(h.client.state, 'offline');
  assert.deepEqual(
    h.named('state').map((e) => e.state),
    ['connecting', 'reconnecting', 'offline'],
  );
});

test('without fetch (an old runtime) the client only reconnects', () => {
  const h = harness({ fetch: null });
  h.client.connect();
  h.ws.drop(1006);
  assert.equal(h.client.state, 'reconnecting');
});
