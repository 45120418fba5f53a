// Requests with a rid, and the helpers built on them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CourierClient, CourierError, convOf, peerOf, toOf, tokenUser } from '../courier.js';
import { harness, makeToken } from './fakes.mjs';

/** Lets every promise callback queued so far run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test('replies are matched to their requests by rid, in whatever order they come', async () => {
  const h = harness();
  h.online();
  const convs = h.client.convs();
  const history = h.client.history('dm:alice:bob', 40, 20);
  const [c, hi] = h.ws.frames.slice(-2);
  assert.deepEqual(
    { ...hi, rid: undefined },
    { type: 'history', conv: 'dm:alice:bob', before: 40, limit: 20, rid: undefined },
  );
  assert.notEqual(c.rid, hi.rid);
  h.ws.receive({ type: 'history', rid: hi.rid, conv: 'dm:alice:bob', msgs: [{ mid: 39 }], more: false });
  h.ws.receive({ type: 'convs', rid: c.rid, items: [{ conv: 'dm:alice:bob', last: null, unread: 0, read_mid: 0 }] });
  assert.deepEqual(await history, { msgs: [{ mid: 39 }], more: false });
  assert.deepEqual(await convs, [{ conv: 'dm:alice:bob', last: null, unread: 0, read_mid: 0 }]);
});

test('history without before asks for the newest page', () => {
  const h = harness();
  h.online();
  h.client.history('group:7');
  assert.deepEqual(Object.keys(h.ws.frames.at(-1)).sort(), ['conv', 'rid', 'type']);
});

test('an error reply rejects its request with the code', async () => {
  const h = harness();
  h.online();
  const p = h.client.recall(12);
  const { rid } = h.ws.lastOf('recall');
  h.ws.receive({ type: 'error', code: 'forbidden', message: 'recall window passed', rid });
  await assert.rejects(p, (err) => err instanceof CourierError && err.code === 'forbidden');
  assert.deepEqual(h.named('error'), [], 'answered to the caller, not broadcast');
});

test('a request with no reply in time rejects with timeout; a late reply is ignored', async () => {
  const h = harness({ requestTimeoutMs: 5000 });
  h.online();
  let outcome = 'pending';
  h.client.read('dm:alice:bob', 9).then(
    () => (outcome = 'resolved'),
    (err) => (outcome = err.code),
  );
  h.clock.advance(4999);
  await settle();
  assert.equal(outcome, 'pending');
  h.clock.advance(1);
  await settle();
  assert.equal(outcome, 'timeout');
  h.ws.receive({ type: 'ok', rid: h.ws.lastOf('read').rid });
  await settle();
  assert.equal(outcome, 'timeout');
});

test('a dropped connection rejects every request in flight', async () => {
  const h = harness();
  h.online();
  const outcomes = [];
  for (const p of [h.client.groupCreate('team', ['bob', 'carol']), h.client.convs()]) {
    p.then(
      () => outcomes.push('resolved'),
      (err) => outcomes.push(err.code),
    );
  }
  h.ws.drop(1006);
  await settle();
  assert.deepEqual(outcomes, ['disconnected', 'disconnected']);
});

test('a request while offline rejects at once', async () => {
  const h = harness();
  h.client.connect();
  await assert.rejects(h.client.convs(), { code: 'disconnected' });
});

test('group requests carry their fields and resolve with the group reply', async () => {
  const h = harness();
  h.online();
  const created = h.client.groupCreate('team', ['bob']);
  const req = h.ws.lastOf('group_create');
  assert.deepEqual({ name: req.name, members: req.members }, { name: 'team', members: ['bob'] });
  const reply = { type: 'group', rid: req.rid, gid: '7', name: 'team', owner: 'alice', members: ['alice', 'bob'] };
  h.ws.receive(reply);
  assert.deepEqual(await created, reply);
  h.client.groupAdd('7', ['carol']);
  h.client.groupLeave('7');
  assert.deepEqual(
    h.ws.frames.slice(-2).map(({ rid, ...f }) => f),
    [
      { type: 'group_add', gid: '7', members: ['carol'] },
      { type: 'group_leave', gid: '7' },
    ],
  );
});

test('watch: presence snapshot as events, ok resolves, the list is sent again after a reconnect', async () => {
  const h = harness();
  h.online();
  const p = h.client.watch(['bob', 'carol']);
  const { rid, users } = h.ws.lastOf('watch');
  assert.deepEqual(users, ['bob', 'carol']);
  h.ws.receive({ type: 'presence', user: 'bob', online: true });
  h.ws.receive({ type: 'presence', user: 'carol', online: false });
  h.ws.receive({ type: 'ok', rid });
  await p;
  assert.deepEqual(
    h.named('presence').map((x) => [x.user, x.online]),
    [
      ['bob', true],
      ['carol', false],
    ],
  );
  h.ws.drop(1006);
  h.clock.advance(1000);
  h.welcome();
  assert.deepEqual(h.ws.lastOf('watch').users, ['bob', 'carol']);
});

test('typing goes out at most once per 3 s per target', () => {
  const h = harness();
  h.online();
  assert.equal(h.client.typing('user:bob'), true);
  assert.equal(h.client.typing('user:bob'), false);
  assert.equal(h.client.typing('group:7'), true);
  h.clock.advance(2999);
  assert.equal(h.client.typing('user:bob'), false);
  h.clock.advance(1);
  assert.equal(h.client.typing('user:bob'), true);
  assert.deepEqual(
    h.ws.sentOf('typing').map((t) => t.to),
    ['user:bob', 'group:7', 'user:bob'],
  );
  h.ws.receive({ type: 'typing', conv: 'dm:alice:bob', from: 'bob' });
  assert.deepEqual(h.named('typing'), [{ type: 'typing', conv: 'dm:alice:bob', from: 'bob' }]);
});

test('a typing refused as out of reach is not reported', async () => {
  const h = harness();
  h.online();
  h.client.typing('user:stranger');
  const sent = h.ws.lastOf('typing');
  h.ws.receive({ type: 'error', code: 'forbidden', message: 'cannot reach this user', rid: sent.rid });
  await Promise.resolve();
  assert.deepEqual(h.named('error'), []);
});

test('block, unblock and the block list are requests answered by the server', async () => {
  const h = harness();
  h.online();
  const blocking = h.client.block('mallory');
  assert.deepEqual({ ...h.ws.lastOf('block'), rid: undefined }, { type: 'block', user: 'mallory', rid: undefined });
  h.ws.receive({ type: 'ok', rid: h.ws.lastOf('block').rid });
  assert.equal((await blocking).type, 'ok');
  const list = h.client.blocked();
  h.ws.receive({ type: 'blocked', users: ['mallory'], rid: h.ws.lastOf('blocked').rid });
  assert.deepEqual(await list, ['mallory']);
  const unblocking = h.client.unblock('mallory');
  h.ws.receive({ type: 'ok', rid: h.ws.lastOf('unblock').rid });
  await unblocking;
});

test('an error that answers nothing of ours is reported as an error event', () => {
  const h = harness();
  h.online();
  h.ws.receive({ type: 'error', code: 'bad_request', message: 'unknown type' });
  assert.deepEqual(
    h.named('error').map((e) => e.code),
    ['bad_request'],
  );
});

test('conversation ids: dm pairs sorted, groups as they are', () => {
  assert.equal(convOf('bob', 'user:alice'), 'dm:alice:bob');
  assert.equal(convOf('alice', 'user:bob'), 'dm:alice:bob');
  assert.equal(convOf('alice', 'group:7'), 'group:7');
  assert.equal(peerOf('bob', 'dm:alice:bob'), 'alice');
  assert.equal(peerOf('alice', 'dm:alice:alice'), 'alice');
  assert.equal(peerOf('alice', 'group:7'), null);
  assert.equal(toOf('bob', 'dm:alice:bob'), 'user:alice');
  assert.equal(toOf('bob', 'group:7'), 'group:7');
});

test('the user is read from the token; a token without one is refused at once', () => {
  assert.equal(tokenUser(makeToken('carol.d-1')), 'carol.d-1');
  assert.equal(tokenUser('not-a-jwt'), null);
  assert.throws(() => new CourierClient({ url: 'ws://x/ws', token: 'nope' }), { code: 'bad_token' });
});
