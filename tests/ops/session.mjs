// One short, ordinary session against a running courier, for scripts/systemd-verify.sh to
// trace: the page, /healthz, /metrics, two users over ws:// who exchange messages (stored,
// pushed, acked), a sync after a reconnect. Exits 0 when all of it worked.
//
//   BASE=http://127.0.0.1:PORT TOKEN_ALICE=... TOKEN_BOB=... node tests/ops/session.mjs

import { webcrypto } from 'node:crypto';
import { socketClass } from './wsclient.mjs';

globalThis.crypto ??= webcrypto;
const { CourierClient, memoryStorage } = await import('../../web/courier.js');

const base = process.env.BASE;
const url = base.replace(/^http/, 'ws') + '/ws';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function waitFor(what, cond, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(20);
  }
}

for (const path of ['/', '/healthz', '/metrics']) {
  const res = await fetch(base + path);
  if (res.status !== 200) throw new Error(`GET ${path}: ${res.status}`);
  await res.text();
}

const device = (token) => {
  const client = new CourierClient({ url, token, WebSocket: socketClass(), storage: memoryStorage() });
  const got = [];
  client.on('message', (m) => got.push(m.body));
  client.connect();
  return { client, got };
};
const alice = device(process.env.TOKEN_ALICE);
const bob = device(process.env.TOKEN_BOB);
await waitFor('both online', () => alice.client.state === 'online' && bob.client.state === 'online');
for (let i = 0; i < 20; i++) alice.client.send('user:bob', `m${i}`);
await waitFor('bob to get all 20', () => bob.got.length === 20);
// A dropped connection and its resume: the sync path of the store.
bob.client.ws.close();
for (let i = 20; i < 25; i++) alice.client.send('user:bob', `m${i}`);
await waitFor('bob to resume and get the rest', () => bob.got.length === 25, 30000);
alice.client.close();
bob.client.close();
console.log('session: ok');
