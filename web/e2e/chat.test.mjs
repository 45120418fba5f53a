// End to end: the chat page served by a real `courier serve`, in Debian's Chromium, driven
// by playwright-core (issue 5). One browser for the file; every test has its own server,
// data folder and browser contexts (one per user, so each is a separate device with its
// own localStorage). Run by scripts/e2e.sh: `node --test web/e2e/`.
//
// Screenshots of the main states go to target/e2e-screenshots/ (E2E_SCREENSHOTS), and a
// failing test leaves FAILED-*.png there beside a report of what each page and the server
// said.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { mkdirSync, rmSync } from 'node:fs';
import {
  SHOTS,
  TEST_SECRET,
  WAIT_MS,
  assertExactlyOnce,
  eventually,
  expectText,
  launchBrowser,
  mintToken,
  scenario,
} from './harness.mjs';

/** One test's bound: a hang fails here, with its report, long before CI's own limit. */
const TEST_MS = 90_000;

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  console.log(`e2e screenshots: ${SHOTS}`);
});

function e2e(name, fn, options = {}) {
  const label = options.todo ? 'TODO' : 'FAILED';
  test(name, { timeout: TEST_MS, ...options }, (t) => scenario(browser, name, (sc) => fn(sc, t), { label }));
}

/**
 * `from` sends `text` and waits until `to` shows it and `from` has its `sent`: every frame
 * the server wrote to either page before those has arrived.
 */
async function barrier(from, to, text) {
  await from.send(text);
  await to.waitMessages([text], { states: ['received'] });
  await from.waitMessages([text], { states: ['sent', 'read'] });
}

async function expectContains(locator, text, timeout = WAIT_MS) {
  await eventually(async () => ((await locator.textContent({ timeout: 1000 })) ?? '').includes(text), {
    timeout,
    what: `${locator} to contain "${text}"`,
  });
}

async function expectGone(locator, timeout = WAIT_MS) {
  await locator.waitFor({ state: 'detached', timeout });
}

const DM = 'dm:alice:bob';
/** Any state but pending or failed: own messages sent or read, others' received. */
const NOT_PENDING = ['sent', 'read', 'received'];

/**
 * Reloads `u`'s page and opens `conv` again: the view is rebuilt from the server's
 * `history`, so what was stored (not what the page remembered) is checked.
 */
async function reloadAndCheck(u, conv, texts) {
  await u.page.reload();
  await u.waitOnline();
  await u.convItem(conv).click();
  assertExactlyOnce(`${u.name} (after a reload)`, await u.waitMessages(texts, { states: NOT_PENDING }), texts);
}

e2e('1. two users in two browsers chat both ways', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');

  await alice.page.goto(server.base);
  await alice.t('signin-name').waitFor();
  await alice.screenshot('01-sign-in');
  await alice.signIn(server.base);
  await bob.signIn(server.base);

  await alice.openDm('bob');
  await alice.send('Hello Bob!');
  await alice.waitMessages(['Hello Bob!'], { states: ['sent', 'read'] });

  // Bob did nothing: the conversation appears in his list, with the message as its preview.
  const item = bob.convItem(DM);
  await item.waitFor();
  await expectContains(item, 'Hello Bob!');
  await item.click();
  await expectText(bob.t('conv-title'), 'alice');
  await bob.waitMessages(['Hello Bob!'], { states: ['received'] });

  await bob.send('Hi Alice, got it.', { enter: true });
  await bob.waitMessages(['Hi Alice, got it.'], { states: ['sent', 'read'] });
  await alice.waitMessages(['Hi Alice, got it.'], { states: ['received'] });

  await alice.send('Great, talk later.');
  await bob.waitMessages(['Great, talk later.'], { states: ['received'] });

  const all = ['Hello Bob!', 'Hi Alice, got it.', 'Great, talk later.'];
  assertExactlyOnce('alice', await alice.waitMessages(all, { states: NOT_PENDING }), all);
  assertExactlyOnce('bob', await bob.waitMessages(all, { states: NOT_PENDING }), all);
  // Both see the conversation in the same order.
  const order = (items) => items.map((m) => m.body);
  assert.deepEqual(order(await alice.messages()), all);
  assert.deepEqual(order(await bob.messages()), all);
});

e2e('2. unread badge appears and clears on read; the read receipt reaches the sender', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);

  await alice.openDm('bob');
  const first = ['one', 'two', 'three'];
  for (const text of first) await alice.send(text);
  await alice.waitMessages(first, { states: ['sent'] });

  const item = bob.convItem(DM);
  const badge = item.getByTestId('unread-badge');
  await expectText(badge, '3');
  await expectContains(item, 'three');
  await bob.screenshot('02-conversation-list-unread-badge');
  // Nobody has read them yet.
  assert.deepEqual((await alice.messages()).map((m) => m.state), ['sent', 'sent', 'sent']);

  await item.click();
  await bob.waitMessages(first, { states: ['received'] });
  await expectGone(badge);
  // Bob's read reaches Alice as a receipt: her messages turn read.
  await alice.waitMessages(first, { states: ['read'] });

  // Bob looks elsewhere; a new message is unread again, one only.
  await bob.openDm('carol');
  await alice.send('four');
  await expectText(badge, '1');
  await alice.waitMessages(['four'], { states: ['sent'] });
  await alice.screenshot('03-conversation-delivery-states');

  // The unread count is the server's too: after a reload the list comes from `convs`.
  await bob.page.reload();
  await bob.waitOnline();
  await expectText(badge, '1');
  await item.click();
  await bob.waitMessages([...first, 'four'], { states: ['received'] });
  await expectGone(badge);
  await alice.waitMessages(['four'], { states: ['read'] });

  // And the read cursor is stored: no badge after another reload.
  await bob.page.reload();
  await bob.waitOnline();
  await item.waitFor();
  await expectContains(item, 'four');
  // The list is drawn from `convs` once the page has caught up (a replayed entry would
  // have drawn the item first, with a count the `convs` answer then replaces).
  await eventually(async () => (await badge.count()) === 0, { what: 'no unread badge on a read conversation after a reload' });
});

e2e('3. a user who was away gets every message on return, once', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);

  await alice.openDm('bob');
  await alice.send('before you left');
  await bob.convItem(DM).click();
  await bob.waitMessages(['before you left'], { states: ['received'] });

  // Bob closes his browser.
  const saved = await bob.context.storageState();
  await sc.leave(bob);

  const away = ['while away 1', 'while away 2', 'while away 3'];
  for (const text of away) await alice.send(text);
  await alice.waitMessages(away, { states: ['sent'] });

  // He comes back on the same browser profile: the page signs him in with its saved token
  // and catches up from its stored cursor.
  const back = await sc.user('bob', { storageState: saved });
  await back.page.goto(server.base);
  await expectText(back.t('me'), 'bob');
  await back.waitOnline();
  const item = back.convItem(DM);
  await expectText(item.getByTestId('unread-badge'), '3');
  await item.click();
  const all = ['before you left', ...away];
  assertExactlyOnce('bob (back)', await back.waitMessages(all, { states: ['received'] }), all);
  await alice.waitMessages(away, { states: ['read'] });

  // And on a new device (a fresh context: cursor 0) he sees the same conversation.
  const other = await sc.user('bob');
  await other.signIn(server.base);
  await other.convItem(DM).click();
  assertExactlyOnce('bob (new device)', await other.waitMessages(all, { states: ['received'] }), all);
});

e2e('4. setOffline mid-conversation: pending sends go out on return, no loss, no duplicate', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);
  await alice.openDm('bob');
  await bob.openDm('alice');
  await barrier(alice, bob, 'a: are you there?');
  await barrier(bob, alice, 'b: yes');

  await bob.context.setOffline(true);
  // Typed the moment the network went: the frame is swallowed, the outbox keeps it.
  await bob.send('b: sent as the network dropped');
  // The server cuts the silent connection (idle timeout), or the page notices the silence.
  await bob.waitConn('reconnecting', 30_000);
  await bob.send('b: sent while offline');
  const bobOffline = ['b: sent as the network dropped', 'b: sent while offline'];
  const pending = await bob.waitMessages(bobOffline, { states: ['pending'] });
  for (const m of pending.filter((m) => bobOffline.includes(m.body))) {
    assert.ok(m.cid && !m.mid, `an unsent message has a cid and no mid: ${JSON.stringify(m)}`);
  }

  const aliceMeanwhile = ['a: you went quiet', 'a: still there?'];
  for (const text of aliceMeanwhile) await alice.send(text);
  await alice.waitMessages(aliceMeanwhile, { states: ['sent'] });
  const shown = (await bob.messages()).map((m) => m.body);
  assert.ok(!shown.some((b) => aliceMeanwhile.includes(b)), `offline bob already shows alice's new messages: ${shown}`);
  assert.ok(!(await alice.messages()).some((m) => bobOffline.includes(m.body)), 'bob’s offline sends reached alice');
  await bob.screenshot('04-offline-pending-messages');

  await bob.context.setOffline(false);
  // The page's `online` listener reconnects at once; no user action.
  await bob.waitOnline();
  await bob.waitMessages([...bobOffline, ...aliceMeanwhile], { states: NOT_PENDING });
  await alice.waitMessages(bobOffline, { states: ['received'] });

  await barrier(alice, bob, 'a: welcome back');
  await barrier(bob, alice, 'b: thanks');
  const all = ['a: are you there?', 'b: yes', ...bobOffline, ...aliceMeanwhile, 'a: welcome back', 'b: thanks'];
  assertExactlyOnce('alice', await alice.messages(), all);
  assertExactlyOnce('bob', await bob.messages(), all);
  await reloadAndCheck(bob, DM, all);
});

e2e('5. server killed and restarted mid-conversation: the page reconnects, every message once', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);
  await alice.openDm('bob');
  await bob.openDm('alice');
  await barrier(alice, bob, 'a: hi');
  await barrier(bob, alice, 'b: hi');
  await alice.send('a: stored before the crash');
  await alice.waitMessages(['a: stored before the crash'], { states: ['sent', 'read'] });

  // A send in flight when the server dies: it may or may not have been stored.
  await alice.t('send-input').fill('a: in flight at the crash');
  await alice.t('send-button').click();
  await server.kill('SIGKILL');

  await alice.waitConn('reconnecting');
  await bob.waitConn('reconnecting');
  await expectContains(bob.t('conn-state'), 'Reconnecting in');
  await bob.send('b: sent while the server is down');
  await bob.waitMessages(['b: sent while the server is down'], { states: ['pending'] });
  await bob.screenshot('05-reconnecting-banner');

  // Same data folder, same port, same token secret; the pages are left alone.
  await server.start();
  await alice.waitOnline(20_000);
  await bob.waitOnline(20_000);

  const all = ['a: hi', 'b: hi', 'a: stored before the crash', 'a: in flight at the crash', 'b: sent while the server is down'];
  await alice.waitMessages(all, { states: NOT_PENDING });
  await bob.waitMessages(all, { states: NOT_PENDING });
  await barrier(alice, bob, 'a: back');
  await barrier(bob, alice, 'b: back too');
  all.push('a: back', 'b: back too');
  assertExactlyOnce('alice', await alice.messages(), all);
  assertExactlyOnce('bob', await bob.messages(), all);
  // Stored exactly once, whether or not the in-flight send had committed before the kill.
  await reloadAndCheck(alice, DM, all);
});

e2e('6. a group of three: created on the page, everyone sees everyone', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  const carol = await sc.user('carol');
  for (const u of [alice, bob, carol]) await u.signIn(server.base);

  await alice.t('group-name-input').fill('Trio');
  await alice.t('group-members-input').fill('bob, carol');
  await alice.t('group-create-button').click();
  await expectText(alice.t('conv-title'), 'Trio');
  const conv = await alice.page.locator('[data-testid="conv-item"][aria-current="true"]').getAttribute('data-conv');
  assert.match(conv, /^group:\d+$/);

  for (const u of [bob, carol]) {
    const item = u.convItem(conv);
    await expectContains(item, 'Trio');
    await item.click();
    await expectText(u.t('conv-title'), 'Trio');
  }
  // Every page knows the members: the creator from its reply, the others from the
  // create entry, which names them all (a change entry holds the change only).
  for (const u of [alice, bob, carol]) await expectText(u.t('conv-sub'), '3 members: alice, bob, carol');

  const lines = { alice: 'alice: hello both', bob: 'bob: hi alice, hi carol', carol: 'carol: hello from me' };
  await alice.send(lines.alice);
  await bob.send(lines.bob);
  await carol.send(lines.carol);
  const all = Object.values(lines);
  for (const u of [alice, bob, carol]) {
    const items = await u.waitMessages(all, { states: NOT_PENDING });
    assertExactlyOnce(u.name, items, all);
    const created = items.filter((m) => m.kind === 'group');
    assert.equal(created.length, 1, `${u.name} sees the group's creation once: ${JSON.stringify(created)}`);
    assert.match(created[0].body, /alice created .Trio./);
  }
  await alice.screenshot('06-group-of-three');
});

e2e('7. a read receipt survives a reload of the sender’s page', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);
  await alice.openDm('bob');
  await alice.send('read me');
  await bob.convItem(DM).click();
  await bob.waitMessages(['read me'], { states: ['received'] });
  await alice.waitMessages(['read me'], { states: ['read'] });

  // The receipt is the server's (`convs` gives peer_read_mid), not only a live event.
  await alice.page.reload();
  await alice.waitOnline();
  await alice.convItem(DM).click();
  await alice.waitMessages(['read me'], { states: ['read'], timeout: 5000 });
});

e2e('8. a token the server refuses (its dev data folder deleted) leads back to sign-in, not to endless reconnects', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  await alice.signIn(server.base);
  await alice.openDm('bob');
  await alice.send('before the reset');

  // A server that is only down is waited for: the page reconnects, and stays signed in.
  await server.kill('SIGKILL');
  await alice.waitConn('reconnecting');
  // Deleting the folder deletes the dev-login secret: the restarted server makes a new
  // one, and the token the page holds is signed with the old.
  rmSync(sc.data, { recursive: true, force: true });
  mkdirSync(sc.data);
  await server.start();

  // At the next attempt, which the backoff may have put 20 s after the last.
  await alice.t('signin-name').waitFor({ state: 'visible', timeout: 30_000 });
  await expectText(alice.t('signin-error'), 'Your sign-in is no longer valid. Please sign in again.');
  assert.equal(await alice.t('signin-name').inputValue(), 'alice', 'the name is kept for signing in again');
  assert.equal(await alice.page.evaluate(() => localStorage.getItem('courier.token')), null, 'the refused token is forgotten');
  await alice.screenshot('08-token-refused-sign-in');

  await alice.t('signin-button').click();
  await alice.waitOnline();
  // The fragment was kept: signing in again lands on the conversation that was open.
  await expectText(alice.t('conv-title'), 'bob');
});

e2e('9. without dev login the page asks for a token from the start, and says when one is not valid', async (sc) => {
  const server = await sc.server({ secret: TEST_SECRET });
  const alice = await sc.user('alice');
  await alice.page.goto(server.base);
  await alice.t('signin-token').waitFor({ state: 'visible' });
  assert.equal(await alice.t('signin-name').isVisible(), false, 'no name form where no name can sign in');
  await alice.screenshot('09-sign-in-with-token');

  await alice.t('signin-token').fill('not-a-token');
  await alice.t('signin-token-button').click();
  await expectText(alice.t('signin-error'), 'This sign-in token is not valid.');
  assert.equal(await alice.t('signin-token').isVisible(), true);

  // Readable, but signed with another secret: only the server can tell.
  await alice.t('signin-token').fill(mintToken('alice', 'another-secret-0123456789abcdef0123456789'));
  await alice.t('signin-token-button').click();
  await expectText(alice.t('signin-error'), 'This sign-in token is not valid.');
  await alice.t('signin-token').waitFor({ state: 'visible' });

  await alice.t('signin-token').fill(mintToken('alice'));
  await alice.t('signin-token-button').click();
  await expectText(alice.t('me'), 'alice');
  await alice.waitOnline();
  await expectText(alice.t('signin-error'), '');
});

e2e('10. the open conversation is in the URL: reload, back, forward and links', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);
  await alice.openDm('bob');
  await alice.send('hi bob');
  // A name with every character a user id may hold besides letters and digits.
  const odd = 'carol.x-y_z';
  await alice.openDm(odd);
  assert.equal(new URL(alice.page.url()).hash, `#dm:${odd}`);

  await alice.page.reload();
  await alice.waitOnline();
  await expectText(alice.t('conv-title'), odd);

  await alice.page.goBack();
  await expectText(alice.t('conv-title'), 'bob');
  await alice.waitMessages(['hi bob'], { states: ['sent', 'read'] });
  await alice.page.goForward();
  await expectText(alice.t('conv-title'), odd);
  await alice.page.goBack();
  await alice.page.goBack();
  await alice.page.locator('#conv-none').waitFor({ state: 'visible' });

  // A link followed on the page, and a link opened by someone not yet signed in.
  await alice.page.goto(`${server.base}#dm:bob`);
  await expectText(alice.t('conv-title'), 'bob');
  const bob2 = await sc.user('bob');
  await bob2.page.goto(`${server.base}#dm:alice`);
  await bob2.t('signin-name').fill('bob');
  await bob2.t('signin-button').click();
  await expectText(bob2.t('conv-title'), 'alice');
  await bob2.waitMessages(['hi bob'], { states: ['received'] });

  // A group this user is not in: a note, and back to the list.
  await bob2.page.goto(`${server.base}#group:999`);
  await expectContains(bob2.t('notice'), 'not open to you');
  await bob2.page.locator('#conv-none').waitFor({ state: 'visible' });
  assert.equal(new URL(bob2.page.url()).hash, '');
});

e2e('11. the header’s presence dot follows the connection; times read as the locale writes them', async (sc) => {
  const server = await sc.server();
  // A zone where it is now 9 in the morning: the hour that a 2-digit format pads to "09".
  const zone = zoneAtHour(9);
  const alice = await sc.user('alice', { locale: 'en-US', timezoneId: zone });
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);
  await alice.openDm('bob');
  await bob.openDm('alice');
  await barrier(alice, bob, 'presence needs a message between the two');

  const header = alice.t('conv-presence');
  const listDot = alice.convItem(DM).getByTestId('presence-dot');
  await alice.page.locator('[data-testid="conv-presence"][data-online="true"]').waitFor();
  await server.kill('SIGKILL');
  await alice.waitConn('reconnecting');
  // Nothing is known of anyone while disconnected: the header says so as the list does.
  await alice.page.locator('[data-testid="conv-presence"][data-online="false"]').waitFor();
  assert.equal(await listDot.getAttribute('data-online'), 'false');
  assert.match(await header.getAttribute('aria-label'), /offline/);
  await server.start();
  await alice.waitOnline(20_000);
  await alice.page.locator('[data-testid="conv-presence"][data-online="true"]').waitFor({ timeout: 20_000 });

  const time = alice.page.locator('[data-testid="message"] time').first();
  const when = new Date(await time.getAttribute('datetime'));
  const want = new Intl.DateTimeFormat('en-US', { hour: 'numeric', minute: '2-digit', timeZone: zone }).format(when);
  assert.equal((await time.textContent()).trim(), want);
  assert.doesNotMatch(want, /^0/, `${zone} ${want}`);
});

/** An IANA zone (Etc/GMT±N) where the hour is now `hour`. */
function zoneAtHour(hour) {
  let offset = (hour - new Date().getUTCHours() + 24) % 24;
  if (offset > 14) offset -= 24;
  // The Etc zones' signs are POSIX's: Etc/GMT-5 is five hours ahead of UTC.
  return offset === 0 ? 'Etc/GMT' : `Etc/GMT${offset > 0 ? '-' : '+'}${Math.abs(offset)}`;
}

e2e('12. block and unblock from a dm’s header', async (sc) => {
  const server = await sc.server();
  const alice = await sc.user('alice');
  const bob = await sc.user('bob');
  await alice.signIn(server.base);
  await bob.signIn(server.base);
  await alice.openDm('bob');
  await bob.openDm('alice');
  await barrier(bob, alice, 'b: hello');
  const button = alice.t('block-button');
  await expectText(button, 'Block');
  await alice.page.locator('[data-testid="conv-presence"][data-online="true"]').waitFor();

  await button.click();
  await expectText(button, 'Unblock');
  await expectContains(alice.t('conv-sub'), 'You blocked bob');
  // Blocked both ways: bob's message is refused, and alice no longer sees him online.
  await bob.send('b: are you there?');
  await bob.waitMessages(['b: are you there?'], { states: ['failed'] });
  await alice.page.locator('[data-testid="conv-presence"][data-online="false"]').waitFor();
  await alice.screenshot('12-blocked-dm');

  // The block is the server's: a reload reads it back.
  await alice.page.reload();
  await alice.waitOnline();
  await expectText(button, 'Unblock');

  await button.click();
  await expectText(button, 'Block');
  await expectText(alice.t('conv-sub'), '');
  await bob.t('retry-button').click();
  await bob.waitMessages(['b: are you there?'], { states: ['sent', 'read'] });
  await alice.waitMessages(['b: hello', 'b: are you there?'], { states: ['received'] });
  // A group's header has no block button.
  await alice.t('group-name-input').fill('pair');
  await alice.t('group-members-input').fill('bob');
  await alice.t('group-create-button').click();
  await expectText(alice.t('conv-title'), 'pair');
  assert.equal(await button.isVisible(), false);
});
