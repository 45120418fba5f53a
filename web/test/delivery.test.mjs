// The cursor, sync, dedupe, gaps and acks: PROTOCOL.md "Delivery guarantees" and
// docs/PROTOCOL.md "Delivery".

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStorage } from '../courier.js';
import { harness, msg } from './fakes.mjs';

const ACK_DELAY = 20;

test('after the welcome the client syncs from its cursor (0 for a new device)', () => {
  const h = harness();
  h.client.connect();
  h.welcome();
  assert.deepEqual(
    h.ws.frames.map((f) => [f.type, f.after]),
    [['sync', 0]],
  );
});

test('in-order pushes are handed out once each, in seq order', () => {
  const h = harness();
  h.online();
  for (const seq of [1, 2, 3]) h.ws.receive(msg(seq));
  assert.deepEqual(h.seqs(), [1, 2, 3]);
  assert.equal(h.named('message')[0].body, 'm1');
  assert.equal(h.client.cursor, 3);
});

test('a msg with seq at or below the cursor is dropped: each entry shows once', () => {
  const h = harness();
  h.online();
  h.ws.receive(msg(1));
  h.ws.receive(msg(2));
  h.ws.receive(msg(1)); // a re-push
  h.ws.receive(msg(2));
  h.ws.receive(msg(3));
  h.ws.receive(msg(3));
  assert.deepEqual(h.seqs(), [1, 2, 3]);
});

test('a duplicate still earns an ack, or the server would re-push it until it closes with 4008', () => {
  const h = harness();
  h.online();
  h.ws.receive(msg(1));
  h.clock.advance(ACK_DELAY);
  h.ws.receive(msg(1));
  h.clock.advance(ACK_DELAY);
  assert.deepEqual(
    h.ws.sentOf('ack').map((a) => a.seq),
    [1, 1],
  );
});

test('ack is cumulative: one ack with the highest seq for a burst of pushes', () => {
  const h = harness();
  h.online();
  for (const seq of [1, 2, 3, 4]) h.ws.receive(msg(seq));
  assert.equal(h.ws.sentOf('ack').length, 0, 'coalesced, not one per msg');
  h.clock.advance(ACK_DELAY);
  assert.deepEqual(h.ws.sentOf('ack'), [{ type: 'ack', seq: 4 }]);
  h.clock.advance(1000);
  assert.equal(h.ws.sentOf('ack').length, 1, 'nothing new, no new ack');
});

test('a gap asks for exactly one sync from the cursor, and the replay fills it in order', () => {
  const h = harness();
  h.online();
  h.ws.receive(msg(1));
  h.ws.receive(msg(3));
  h.ws.receive(msg(4));
  h.ws.receive(msg(6));
  assert.deepEqual(h.seqs(), [1], 'nothing above the gap is handed out');
  const syncs = h.ws.sentOf('sync');
  assert.equal(syncs.length, 2, 'the resume sync and one for the gap');
  assert.equal(syncs[1].after, 1);
  h.clock.advance(ACK_DELAY);
  assert.deepEqual(h.ws.lastOf('ack'), { type: 'ack', seq: 1 }, 'acks only what is held with no gap below');

  for (const seq of [2, 3, 4, 5, 6]) h.ws.receive(msg(seq));
  h.synced({ seq: 6, head: 6 });
  assert.deepEqual(h.seqs(), [1, 2, 3, 4, 5, 6]);
  assert.equal(h.client.cursor, 6);
  assert.equal(h.ws.sentOf('sync').length, 2, 'no further sync once the gap is closed');
  h.clock.advance(ACK_DELAY);
  assert.deepEqual(h.ws.lastOf('ack'), { type: 'ack', seq: 6 });
});

test('sync pages: more = true asks for the next page from the cursor until the last', () => {
  const h = harness({ syncLimit: 2 });
  h.client.connect();
  h.welcome({ inbox_seq: 5 });
  assert.deepEqual(h.ws.lastOf('sync'), { type: 'sync', after: 0, rid: h.ws.lastOf('sync').rid, limit: 2 });
  h.ws.receive(msg(1));
  h.ws.receive(msg(2));
  h.synced({ seq: 2, head: 5, more: true });
  assert.equal(h.ws.lastOf('sync').after, 2);
  h.ws.receive(msg(3));
  h.ws.receive(msg(4));
  h.synced({ seq: 4, head: 5, more: true });
  assert.equal(h.ws.lastOf('sync').after, 4);
  h.ws.receive(msg(5));
  h.synced({ seq: 5, head: 5, more: false });
  assert.equal(h.ws.sentOf('sync').length, 3);
  assert.deepEqual(h.seqs(), [1, 2, 3, 4, 5]);
  assert.deepEqual(h.named('synced'), [{ cursor: 5, head: 5 }], 'caught up is told once, at the end');
});

test('a synced of some other sync does not end ours', () => {
  const h = harness();
  h.client.connect();
  h.welcome();
  h.ws.receive({ type: 'synced', rid: 'by-hand', seq: 0, head: 3, more: true });
  assert.equal(h.ws.sentOf('sync').length, 1);
  assert.deepEqual(h.named('synced'), []);
});

test('a failed sync is tried again after the retry delay', () => {
  const h = harness({ retryMs: 2000 });
  h.client.connect();
  h.welcome();
  const rid = h.ws.lastOf('sync').rid;
  h.ws.receive({ type: 'error', code: 'unavailable', message: 'busy', rid });
  h.clock.advance(1000);
  assert.equal(h.ws.sentOf('sync').length, 1);
  h.clock.advance(1000);
  assert.equal(h.ws.sentOf('sync').length, 2);
  assert.deepEqual(h.named('error'), [], 'handled, not reported');
});

test('a welcome head below the cursor (a restored database) makes the head the cursor', () => {
  const storage = memoryStorage();
  const first = harness({ storage });
  first.online();
  for (const seq of [1, 2, 3, 4, 5, 6, 7, 8]) first.ws.receive(msg(seq));
  first.client.close();

  const h = harness({ storage });
  h.client.connect();
  h.welcome({ inbox_seq: 4 });
  assert.equal(h.client.cursor, 4);
  assert.equal(h.ws.lastOf('sync').after, 4, 'synced from the server head');
  // Committed between the welcome and the synced: the new seq 5, not an old one.
  h.ws.receive(msg(5));
  h.synced({ seq: 4, head: 4 });
  assert.deepEqual(h.seqs(), [5], 'live pushes continue from the head');
});

test('the cursor is stored per user and device and resumes a new client on the same storage', () => {
  const storage = memoryStorage();
  const first = harness({ storage });
  first.online();
  for (const seq of [1, 2, 3]) first.ws.receive(msg(seq));
  first.clock.advance(ACK_DELAY);
  const device = first.client.deviceId;
  assert.equal(storage.getItem(`courier.cursor.alice.${device}`), '3');

  // A page reload: a new client on the same storage, the same device.
  const again = harness({ storage });
  assert.equal(again.client.deviceId, device);
  again.client.connect();
  again.welcome({ inbox_seq: 3 });
  assert.equal(again.ws.lastOf('sync').after, 3);
  again.ws.receive(msg(3));
  again.ws.receive(msg(4));
  assert.deepEqual(again.seqs(), [4]);

  // Another user on the same browser has a cursor of their own.
  const bob = harness({ user: 'bob', storage });
  bob.client.connect();
  bob.welcome();
  assert.equal(bob.ws.lastOf('sync').after, 0);
});

test('a reconnect syncs from the cursor reached on the old connection', () => {
  const h = harness();
  h.online();
  h.ws.receive(msg(1));
  h.ws.receive(msg(2));
  h.ws.drop(1006);
  h.clock.advance(1000);
  h.welcome({ inbox_seq: 5 });
  assert.equal(h.ws.lastOf('sync').after, 2);
});

test('entries held above a gap are bounded, keeping the lowest', () => {
  const h = harness({ maxHeld: 3 });
  h.online();
  for (const seq of [6, 5, 4, 3, 2]) h.ws.receive(msg(seq));
  assert.deepEqual([...h.client.held.keys()].sort((a, b) => a - b), [2, 3, 4]);
  h.ws.receive(msg(1));
  assert.deepEqual(h.seqs(), [1, 2, 3, 4]);
});

test('recall and group entries are messages like any other, with their fields', () => {
  const h = harness();
  h.online();
  const group = { op: 'create', gid: '7', name: 'team', owner: 'bob', members: ['alice', 'bob'], users: ['alice', 'bob'] };
  h.ws.receive(msg(1, { kind: 'group', conv: 'group:7', body: '', group }));
  h.ws.receive(msg(2, { kind: 'recall', ref: 100, body: '' }));
  const [g, r] = h.named('message');
  assert.deepEqual([g.kind, g.group], ['group', group]);
  assert.deepEqual([r.kind, r.ref], ['recall', 100]);
});
