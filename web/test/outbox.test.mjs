// The outbox: a cid per message, kept until its `sent`, resent after every reconnect.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStorage } from '../courier.js';
import { harness, msg } from './fakes.mjs';

function sent(entry, seq, extra = {}) {
  return { type: 'sent', cid: entry.cid, mid: 500 + seq, conv: entry.conv, seq, ts: 7, ...extra };
}

function storedOutbox(h) {
  return JSON.parse(h.storage.getItem(`courier.outbox.alice.${h.client.deviceId}`) ?? '[]');
}

test('send: one cid of at most 64 bytes, a send frame, state pending', () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:bob', 'hi');
  const b = h.client.send('group:7', 'all');
  assert.notEqual(a.cid, b.cid);
  assert.ok(a.cid.length > 0 && new TextEncoder().encode(a.cid).length <= 64);
  assert.deepEqual(h.ws.sentOf('send'), [
    { type: 'send', cid: a.cid, to: 'user:bob', body: 'hi' },
    { type: 'send', cid: b.cid, to: 'group:7', body: 'all' },
  ]);
  assert.deepEqual([a.conv, b.conv], ['dm:alice:bob', 'group:7']);
  assert.equal(a.state, 'pending');
  assert.deepEqual(
    storedOutbox(h).map((e) => e.cid),
    [a.cid, b.cid],
  );
});

test('sent clears the entry, stands for the own inbox entry and advances the cursor', () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:bob', 'hi');
  h.ws.receive(sent(a, 1));
  assert.equal(a.state, 'sent');
  assert.equal(a.mid, 501);
  assert.deepEqual(storedOutbox(h), []);
  assert.equal(h.client.cursor, 1);
  const [m] = h.named('message');
  assert.deepEqual(
    { seq: m.seq, mid: m.mid, from: m.from, body: m.body, conv: m.conv, cid: m.cid },
    { seq: 1, mid: 501, from: 'alice', body: 'hi', conv: 'dm:alice:bob', cid: a.cid },
  );
  h.ws.receive(msg(2));
  assert.equal(h.ws.sentOf('sync').length, 1, 'seq 2 follows the sent seq 1: no gap');
  assert.deepEqual(h.seqs(), [1, 2]);
});

test('a sent above a gap is held and the gap synced, like a msg', () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:bob', 'hi');
  h.ws.receive(sent(a, 2));
  assert.equal(a.state, 'sent', 'the send is confirmed at once');
  assert.deepEqual(h.seqs(), [], 'but its entry waits for seq 1');
  assert.equal(h.ws.lastOf('sync').after, 0);
  h.ws.receive(msg(1));
  h.synced({ seq: 2, head: 2 });
  assert.deepEqual(h.seqs(), [1, 2]);
});

test('pending sends go out again after a reconnect with the same cid, after the sync', () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:bob', 'one');
  const b = h.client.send('user:bob', 'two');
  h.ws.drop(1006);
  h.clock.advance(1000);
  h.welcome();
  assert.deepEqual(
    h.ws.frames.map((f) => f.type),
    ['sync', 'send', 'send'],
  );
  assert.deepEqual(
    h.ws.sentOf('send').map((s) => s.cid),
    [a.cid, b.cid],
  );
  h.synced({ seq: 0, head: 0 });
  h.ws.receive(sent(a, 1));
  h.ws.receive(sent(b, 2));
  assert.deepEqual([a.state, b.state], ['sent', 'sent']);
  h.ws.drop(1006);
  h.clock.advance(1000);
  h.welcome();
  assert.deepEqual(h.ws.sentOf('send'), [], 'nothing left to resend');
});

test('a send made while offline waits for the connection', () => {
  const h = harness();
  h.client.connect();
  const a = h.client.send('user:bob', 'later');
  assert.equal(h.ws.frames.length, 0);
  h.welcome();
  assert.deepEqual(h.ws.lastOf('send').cid, a.cid);
});

test('the outbox survives a page reload and is resent by the new client', () => {
  const storage = memoryStorage();
  const first = harness({ storage });
  first.online();
  const a = first.client.send('user:bob', 'kept');
  first.client.close();

  const again = harness({ storage });
  assert.deepEqual(
    again.client.outbox().map((e) => [e.cid, e.state, e.body]),
    [[a.cid, 'pending', 'kept']],
  );
  again.client.connect();
  again.welcome();
  assert.deepEqual(again.ws.lastOf('send'), { type: 'send', cid: a.cid, to: 'user:bob', body: 'kept' });
});

test('the own entry replayed by a sync confirms a send whose sent was lost', () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:bob', 'hi');
  h.ws.drop(1006); // the sent never came
  h.clock.advance(1000);
  h.welcome({ inbox_seq: 1 });
  h.ws.receive(msg(1, { from: 'alice', body: 'hi', cid: a.cid, mid: 501 }));
  assert.equal(a.state, 'sent');
  assert.equal(a.mid, 501);
  h.synced({ seq: 1, head: 1 });
  h.ws.receive(sent(a, 1)); // the resend's answer
  assert.deepEqual(h.seqs(), [1], 'shown once');
  assert.equal(h.named('outbox').filter((e) => e.state === 'sent').length, 1, 'confirmed once');
});

test('unavailable and rate_limited keep the message pending and retry it later', () => {
  for (const code of ['unavailable', 'rate_limited']) {
    const h = harness({ retryMs: 2000 });
    h.online();
    const a = h.client.send('user:bob', 'hi');
    h.ws.receive({ type: 'error', code, message: 'later', cid: a.cid });
    assert.equal(a.state, 'pending', code);
    assert.equal(storedOutbox(h).length, 1);
    h.clock.advance(1000);
    assert.equal(h.ws.sentOf('send').length, 1);
    h.clock.advance(1000);
    assert.equal(h.ws.sentOf('send').length, 2, `${code}: retried`);
    assert.equal(h.ws.lastOf('send').cid, a.cid);
  }
});

test('any other refusal fails the message; retry() sends it again with its cid', () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:nobody', 'hi');
  h.ws.receive({ type: 'error', code: 'not_found', message: 'no such user', cid: a.cid });
  assert.equal(a.state, 'failed');
  assert.equal(a.error.code, 'not_found');
  assert.deepEqual(storedOutbox(h), [], 'a failed message is not resent after a reload');
  h.clock.advance(10000);
  assert.equal(h.ws.sentOf('send').length, 1);
  h.client.retry(a.cid);
  assert.equal(a.state, 'pending');
  assert.equal(h.ws.sentOf('send').length, 2);
  assert.equal(h.ws.lastOf('send').cid, a.cid);
  h.ws.receive({ type: 'error', code: 'not_found', message: 'no such user', cid: a.cid });
  h.client.dismiss(a.cid);
  assert.deepEqual(h.client.outbox(), []);
});

test("the peer's read receipt moves sent messages up to its mid to read", () => {
  const h = harness();
  h.online();
  const a = h.client.send('user:bob', 'one');
  const b = h.client.send('user:bob', 'two');
  const c = h.client.send('user:carol', 'three');
  h.ws.receive(sent(a, 1));
  h.ws.receive(sent(b, 2));
  h.ws.receive(sent(c, 3));
  h.ws.receive({ type: 'read', conv: 'dm:alice:bob', user: 'alice', mid: 502 });
  assert.equal(a.state, 'sent', 'my own other device reading is no receipt');
  h.ws.receive({ type: 'read', conv: 'dm:alice:bob', user: 'bob', mid: 501 });
  assert.deepEqual([a.state, b.state, c.state], ['read', 'sent', 'sent']);
  h.ws.receive({ type: 'read', conv: 'dm:alice:bob', user: 'bob', mid: 502 });
  assert.deepEqual([a.state, b.state, c.state], ['read', 'read', 'sent']);
  assert.deepEqual(
    h.named('outbox').map((e) => `${e.body}:${e.state}`),
    ['one:pending', 'two:pending', 'three:pending', 'one:sent', 'two:sent', 'three:sent', 'one:read', 'two:read'],
  );
  assert.equal(h.named('read').length, 3);
});
