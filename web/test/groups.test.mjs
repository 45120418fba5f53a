// Group member lists: kept from the change entries (docs/PROTOCOL.md, `kind: "group"`),
// which carry the change only, and asked for with `group_info` when there is no list to
// apply a change to.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { groupAfter, memoryStorage } from '../courier.js';
import { harness, msg } from './fakes.mjs';

const ACK_DELAY = 20;

/** Lets every promise callback queued so far run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A change entry of group 7 pushed to alice. */
function change(seq, group) {
  return msg(seq, { conv: 'group:7', kind: 'group', body: '', from: 'bob', group: { gid: '7', name: 'team', ...group } });
}

const create = { op: 'create', owner: 'bob', users: ['bob', 'alice'] };

test('a change gives the list after it, or says the list is needed', () => {
  const me = 'alice';
  const known = { name: 'team', owner: 'bob', members: ['bob', 'alice'] };
  assert.deepEqual(groupAfter(undefined, { ...create, gid: '7', name: 'team' }, me), known);
  const add = { op: 'add', gid: '7', name: 'team', owner: 'bob', users: ['carol', 'alice'] };
  assert.deepEqual(groupAfter(known, add, me).members, ['bob', 'alice', 'carol'], 'no one twice');
  assert.equal(groupAfter(undefined, add, me), undefined, 'an add to a list not known');
  const handOver = { op: 'leave', gid: '7', name: 'team', owner: 'alice', users: ['bob'] };
  assert.deepEqual(groupAfter(known, handOver, me), { name: 'team', owner: 'alice', members: ['alice'] });
  assert.equal(groupAfter(undefined, handOver, me), undefined);
  assert.equal(groupAfter(known, { ...handOver, users: ['alice'] }, me), null, 'left: nothing more comes');
  const ended = { op: 'leave', gid: '7', name: 'team', owner: null, users: ['alice'] };
  assert.equal(groupAfter(undefined, ended, me), null);
  assert.equal(groupAfter(known, { op: 'rename', gid: '7', name: 'x' }, me), undefined, 'an op not known');
  // An entry an older server stored carries the whole list: it replaces whatever was known.
  const old = { op: 'add', gid: '7', name: 'team', owner: 'bob', members: ['bob', 'dave', 'alice'], users: ['dave'] };
  assert.deepEqual(groupAfter(undefined, old, me).members, ['bob', 'dave', 'alice']);
  assert.deepEqual(groupAfter({ ...known, members: ['zed'] }, old, me).members, ['bob', 'dave', 'alice']);
  // Applying changes the list already reflects changes nothing.
  const after = groupAfter(groupAfter(known, add, me), handOver, me);
  assert.deepEqual(groupAfter(groupAfter(after, add, me), handOver, me), after);
});

test('the list follows the change entries, and each change is a group event before its message', () => {
  const h = harness();
  h.online();
  h.ws.receive(change(1, create));
  h.ws.receive(change(2, { op: 'add', owner: 'bob', users: ['carol', 'dave'] }));
  h.ws.receive(change(3, { op: 'leave', owner: 'alice', users: ['bob'] }));
  assert.deepEqual(h.client.group('7'), { name: 'team', owner: 'alice', members: ['alice', 'carol', 'dave'] });
  assert.deepEqual(
    h.events.filter(([name]) => name === 'group' || name === 'message').map(([name, d]) => `${name}:${d.seq ?? d.group.members.length}`),
    ['group:2', 'message:1', 'group:4', 'message:2', 'group:3', 'message:3'],
  );
  assert.equal(h.ws.sentOf('group_info').length, 0, 'nothing to ask: the create named everyone');
});

test('a change to a group not known asks for it once; changes meanwhile go over the answer', async () => {
  const h = harness();
  h.online();
  h.ws.receive(change(1, { op: 'add', owner: 'bob', users: ['alice'] }));
  h.ws.receive(change(2, { op: 'add', owner: 'bob', users: ['erin'] }));
  h.ws.receive(change(3, { op: 'leave', owner: 'carol', users: ['bob'] }));
  assert.equal(h.client.group('7'), undefined);
  const asked = h.ws.sentOf('group_info');
  assert.deepEqual(
    asked.map(({ rid, ...f }) => f),
    [{ type: 'group_info', gid: '7' }],
  );
  assert.deepEqual(h.seqs(), [1, 2, 3], 'the entries themselves are not held back');
  // The answer is from before the last two changes; they are applied over it.
  h.ws.receive({ type: 'group', rid: asked[0].rid, gid: '7', name: 'team', owner: 'bob', members: ['bob', 'carol', 'alice'] });
  await settle();
  assert.deepEqual(h.client.group('7'), { name: 'team', owner: 'carol', members: ['carol', 'alice', 'erin'] });
  h.ws.receive(change(4, { op: 'leave', owner: 'carol', users: ['erin'] }));
  assert.deepEqual(h.client.group('7').members, ['carol', 'alice']);
  assert.equal(h.ws.sentOf('group_info').length, 1);
});

test('an entry an older server stored replaces the list, with no request', () => {
  const h = harness();
  h.online();
  h.ws.receive(change(1, { op: 'add', owner: 'bob', members: ['bob', 'alice'], users: ['alice'] }));
  assert.deepEqual(h.client.group('7'), { name: 'team', owner: 'bob', members: ['bob', 'alice'] });
  h.ws.receive(change(2, { op: 'add', owner: 'bob', users: ['carol'] }));
  assert.deepEqual(h.client.group('7').members, ['bob', 'alice', 'carol']);
  assert.equal(h.ws.sentOf('group_info').length, 0);
});

test('leaving forgets the group; being refused its list does too', async () => {
  const h = harness();
  h.online();
  h.ws.receive(change(1, create));
  h.ws.receive(change(2, { op: 'leave', owner: 'bob', users: ['alice'] }));
  assert.equal(h.client.group('7'), undefined);
  assert.deepEqual(h.named('group').at(-1), { gid: '7', group: null });

  h.ws.receive(msg(3, { conv: 'group:8', kind: 'group', body: '', group: { op: 'add', gid: '8', name: 'x', owner: 'bob', users: ['alice'] } }));
  const { rid } = h.ws.lastOf('group_info');
  h.ws.receive({ type: 'error', rid, code: 'forbidden', message: 'not a member of this group' });
  await settle();
  assert.equal(h.client.group('8'), undefined);
  assert.deepEqual(h.named('error'), [], 'answered to the fetch, not broadcast');
});

test('the lists are kept with the cursor: a reload applies what follows to them', () => {
  const storage = memoryStorage();
  const first = harness({ storage });
  first.online();
  first.ws.receive(change(1, create));
  first.clock.advance(ACK_DELAY);
  first.client.close();

  const again = harness({ storage });
  assert.deepEqual(again.client.group('7'), { name: 'team', owner: 'bob', members: ['bob', 'alice'] });
  again.online({ inbox_seq: 2 });
  assert.equal(again.ws.lastOf('sync').after, 1);
  again.ws.receive(change(2, { op: 'add', owner: 'bob', users: ['carol'] }));
  assert.deepEqual(again.client.group('7').members, ['bob', 'alice', 'carol']);
  assert.equal(again.ws.sentOf('group_info').length, 0, 'the kept list was enough');
});

test('a fetch the connection lost is asked again after the next welcome', async () => {
  const h = harness();
  h.online();
  h.ws.receive(change(1, { op: 'add', owner: 'bob', users: ['alice'] }));
  assert.equal(h.ws.sentOf('group_info').length, 1);
  h.ws.drop(1006);
  await settle();
  h.clock.advance(1000);
  h.welcome();
  const asked = h.ws.lastOf('group_info');
  assert.equal(asked?.gid, '7', 'asked on the new connection');
  h.synced({ seq: 1, head: 1 });
  h.ws.receive({ type: 'group', rid: asked.rid, gid: '7', name: 'team', owner: 'bob', members: ['bob', 'alice'] });
  await settle();
  assert.deepEqual(h.client.group('7').members, ['bob', 'alice']);
});

test('ensureGroup asks only for what is not known, and waits for a connection', async () => {
  const h = harness();
  h.client.connect();
  h.client.ensureGroup(9);
  h.welcome();
  const asked = h.ws.lastOf('group_info');
  assert.equal(asked.gid, '9');
  h.client.ensureGroup('9');
  assert.equal(h.ws.sentOf('group_info').length, 1, 'once while in flight');
  h.ws.receive({ type: 'group', rid: asked.rid, gid: '9', name: 'n', owner: 'alice', members: ['alice'] });
  await settle();
  h.client.ensureGroup('9');
  assert.equal(h.ws.sentOf('group_info').length, 1, 'not again once known');
  assert.deepEqual(h.named('group').at(-1), { gid: '9', group: { name: 'n', owner: 'alice', members: ['alice'] } });
});

test('a create answered before its entry gives the list at once', async () => {
  const h = harness();
  h.online();
  const created = h.client.groupCreate('team', ['bob']);
  const { rid } = h.ws.lastOf('group_create');
  h.ws.receive({ type: 'group', rid, gid: '7', name: 'team', owner: 'alice', members: ['alice', 'bob'] });
  await created;
  assert.deepEqual(h.client.group('7'), { name: 'team', owner: 'alice', members: ['alice', 'bob'] });
  h.ws.receive(change(1, { op: 'create', owner: 'alice', users: ['alice', 'bob'] }));
  assert.deepEqual(h.client.group('7').members, ['alice', 'bob']);
});
