// The end-to-end harness: a real `courier serve` per test, Debian's Chromium driven by
// playwright-core, and the few page actions the scenarios share. Not a test file itself
// (node --test picks up only *.test.mjs).
//
// Every wait here is bounded and driven by what the page shows (locator.waitFor, or
// `eventually`, a poll with a deadline); none is a fixed sleep. A scenario runs inside
// `scenario()`, which owns its servers and browser contexts, closes them whatever
// happens, and on failure adds to the error what the pages and the server said.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = resolve(ROOT, process.env.COURIER_BIN ?? 'target/debug/courier');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const SHOTS = resolve(ROOT, process.env.E2E_SCREENSHOTS ?? 'target/e2e-screenshots');

/** The default bound of one wait: generous for a loaded 2-core CI machine, short for a hang. */
export const WAIT_MS = 15_000;
/** How long a server may take to print `listening on`. */
const START_MS = 15_000;
const LOG_LINES = 200;

/**
 * Server timings for the tests: a 1 s heartbeat (the page pings every second or two) and
 * a 4 s idle timeout, so a connection whose frames stop (context.setOffline) is cut by the
 * server within seconds instead of the 75 s default.
 */
const SERVER_TIMINGS = ['--heartbeat', '1s', '--idle-timeout', '4s'];

const LAUNCH_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

// Servers still running when this process goes (a test runner's timeout, a crash) are
// not left behind holding ports.
const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

// ---- the server ----

/** The test's environment minus a token secret: dev login refuses to start with one. */
function serverEnv() {
  const env = { ...process.env };
  delete env.COURIER_JWT_SECRET;
  delete env.COURIER_JWT_SECRET_FILE;
  return env;
}

/** A token secret for a server without dev login (at least 32 bytes). */
export const TEST_SECRET = 'e2e-secret-0123456789abcdef0123456789abcdef';

/** A token for `user` signed with `secret`, made by `courier token` as an operator would. */
export function mintToken(user, secret = TEST_SECRET) {
  return execFileSync(BIN, ['token', user, '--ttl', '1h'], {
    env: { ...serverEnv(), COURIER_JWT_SECRET: secret },
    encoding: 'utf8',
  }).trim();
}

/**
 * A `courier serve` on loopback, with dev login on unless `secret` is given. Dev login
 * signs with the secret it keeps in the data folder (and refuses a configured one), so
 * tokens the pages hold stay valid across a kill and restart on the same folder. start()
 * may be called again after kill(), on the same data folder and port.
 */
export class Server {
  constructor({ data, log = [], secret = null } = {}) {
    this.data = data;
    this.secret = secret;
    this.port = 0;
    this.addr = null;
    this.child = null;
    this.log = log;
    this.starts = 0;
  }

  get base() {
    return `http://${this.addr}/`;
  }

  async start() {
    const deadline = Date.now() + START_MS;
    for (;;) {
      try {
        return await this.startOnce();
      } catch (err) {
        // A restart on the same port can lose a race with the kernel letting it go.
        if (!this.port || !/in use/i.test(err.message) || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100)); // polling a port, no page state
      }
    }
  }

  startOnce() {
    if (!existsSync(BIN)) throw new Error(`no courier binary at ${BIN} (cargo build --bin courier)`);
    const n = ++this.starts;
    const login = this.secret ? [] : ['--dev-login', 'on'];
    const args = ['serve', ...login, '--listen', `127.0.0.1:${this.port}`, '--data', this.data, ...SERVER_TIMINGS];
    const env = { ...serverEnv(), RUST_BACKTRACE: '1' };
    if (this.secret) env.COURIER_JWT_SECRET = this.secret;
    const child = spawn(BIN, args, {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    live.add(child);
    const record = (stream) => (chunk) => {
      for (const line of String(chunk).split('\n')) {
        if (!line) continue;
        this.log.push(`[server#${n} ${stream}] ${line}`);
        if (this.log.length > LOG_LINES) this.log.shift();
      }
    };
    child.stderr.on('data', record('err'));
    return new Promise((resolveStart, rejectStart) => {
      let out = '';
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        rejectStart(new Error(`courier did not print 'listening on' within ${START_MS} ms\n${this.tail()}`));
      }, START_MS);
      child.stdout.on('data', (chunk) => {
        record('out')(chunk);
        out += chunk;
        const m = /listening on (\S+)/.exec(out);
        if (m && !this.addr) {
          clearTimeout(timer);
          this.addr = m[1];
          this.port = Number(m[1].slice(m[1].lastIndexOf(':') + 1));
          resolveStart(this);
        } else if (m) {
          clearTimeout(timer);
          resolveStart(this);
        }
      });
      child.once('exit', (code, signal) => {
        live.delete(child);
        clearTimeout(timer);
        rejectStart(new Error(`courier exited (${signal ?? code}) before listening\n${this.tail()}`));
      });
    });
  }

  /** Stops the server with `signal` and waits for the process to be gone. */
  async kill(signal = 'SIGTERM') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
    live.delete(child);
    this.log.push(`[harness] server stopped with ${signal}`);
  }

  tail(lines = 40) {
    return this.log.slice(-lines).join('\n');
  }
}

// ---- the browser ----

export function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  return chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: 30_000 });
}

/** One person at one browser: a context, its page, and what the page said. */
export class User {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.console = [];
    this.errors = [];
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') this.console.push(`${msg.type()}: ${msg.text()}`);
    });
    page.on('pageerror', (err) => this.errors.push(String(err.stack ?? err)));
  }

  t(testid) {
    return this.page.getByTestId(testid);
  }

  /** Signs in by name on the page and waits until the connection is online. */
  async signIn(base) {
    await this.page.goto(base);
    await this.t('signin-name').fill(this.name);
    await this.t('signin-button').click();
    await expectText(this.t('me'), this.name);
    await this.waitOnline();
  }

  connState() {
    return this.t('conn-state').getAttribute('data-state');
  }

  async waitConn(state, timeout = WAIT_MS) {
    await this.page.locator(`[data-testid="conn-state"][data-state="${state}"]`).waitFor({ timeout });
  }

  waitOnline(timeout = WAIT_MS) {
    return this.waitConn('online', timeout);
  }

  /** Opens (or starts) the dm with `peer` from the sidebar. */
  async openDm(peer) {
    await this.t('new-dm-input').fill(peer);
    await this.t('new-dm-button').click();
    await expectText(this.t('conv-title'), peer);
  }

  convItem(conv) {
    return this.page.locator(`[data-testid="conv-item"][data-conv="${conv}"]`);
  }

  /** Types `text` in the composer and sends it (Enter when `enter`, else the Send button). */
  async send(text, { enter = false } = {}) {
    await this.waitConvOpen();
    await this.t('send-input').fill(text);
    if (enter) await this.t('send-input').press('Enter');
    else await this.t('send-button').click();
    await expectValue(this.t('send-input'), '');
  }

  async waitConvOpen() {
    await this.t('send-input').waitFor({ state: 'visible', timeout: WAIT_MS });
  }

  /** The items of the open conversation, in page order. */
  messages() {
    return this.page.locator('[data-testid="message-list"] [data-testid="message"]').evaluateAll((items) =>
      items.map((li) => ({
        mid: li.getAttribute('data-mid') || null,
        cid: li.getAttribute('data-cid'),
        state: li.getAttribute('data-state'),
        kind: li.getAttribute('data-kind') ?? 'text',
        body: (li.querySelector('.msg-body') ?? li).textContent.trim(),
        status: li.querySelector('[data-testid="message-status"]')?.textContent.trim() ?? null,
      })),
    );
  }

  /**
   * Waits until the open conversation holds every text of `texts` exactly once (and, when
   * `states` is given, each of them in one of those states). Returns the items.
   */
  async waitMessages(texts, { states, timeout = WAIT_MS } = {}) {
    return eventually(
      async () => {
        const items = await this.messages();
        const problems = [];
        for (const text of texts) {
          const found = items.filter((m) => m.body === text);
          if (found.length !== 1) problems.push(`"${text}" shown ${found.length} times`);
          else if (states && !states.includes(found[0].state)) problems.push(`"${text}" is ${found[0].state}, want ${states.join('|')}`);
        }
        return problems.length ? { fail: problems.join('; '), items } : { ok: items };
      },
      { timeout, what: `${this.name}'s conversation to show ${JSON.stringify(texts)}${states ? ` as ${states}` : ''}` },
    );
  }

  async screenshot(name) {
    mkdirSync(SHOTS, { recursive: true });
    const path = join(SHOTS, `${name}.png`);
    await this.page.screenshot({ path, fullPage: true });
    return path;
  }

  /** What a failure report says about this user. */
  async report() {
    const lines = [`--- ${this.name}`];
    try {
      const connText = (await this.page.locator('#conn-text').textContent({ timeout: 1000 })) ?? '';
      lines.push(`conn-state: ${await this.connState()} ("${connText.trim()}")`);
      const notice = this.t('notice');
      if (await notice.isVisible()) lines.push(`notice: ${await notice.textContent()}`);
      lines.push(`conversation: ${JSON.stringify(await this.messages())}`);
    } catch (err) {
      lines.push(`(page not readable: ${err.message.split('\n')[0]})`);
    }
    lines.push(`page errors: ${this.errors.length ? '\n  ' + this.errors.join('\n  ') : 'none'}`);
    lines.push(`console errors and warnings: ${this.console.length ? '\n  ' + this.console.slice(-30).join('\n  ') : 'none'}`);
    return lines.join('\n');
  }
}

// ---- waits ----

/**
 * Polls `probe` until it returns `{ ok: value }` (resolves with value) or the deadline
 * passes (rejects with what the last probe said). `probe` may also return a plain truthy
 * value for success. Polling a page's DOM every 50 ms is the `expect.poll` of this harness.
 */
export async function eventually(probe, { timeout = WAIT_MS, interval = 50, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last = 'never checked';
  for (;;) {
    try {
      const r = await probe();
      if (r && typeof r === 'object' && 'ok' in r) return r.ok;
      if (r && typeof r === 'object' && 'fail' in r) last = r.fail;
      else if (r) return r;
      else last = `got ${JSON.stringify(r)}`;
    } catch (err) {
      last = err.message.split('\n')[0];
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}: ${last}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export function expectText(locator, text, timeout = WAIT_MS) {
  return eventually(async () => (await locator.textContent({ timeout: 1000 }))?.trim() === text, {
    timeout,
    what: `${locator} to read "${text}"`,
  });
}

export function expectValue(locator, value, timeout = WAIT_MS) {
  return eventually(async () => (await locator.inputValue({ timeout: 1000 })) === value, {
    timeout,
    what: `${locator} to hold "${value}"`,
  });
}

/** Fails unless the items show every text once, with distinct mids, nothing pending or failed. */
export function assertExactlyOnce(who, items, texts) {
  const problems = [];
  for (const text of texts) {
    const n = items.filter((m) => m.body === text).length;
    if (n !== 1) problems.push(`"${text}" shown ${n} times`);
  }
  const mids = items.filter((m) => m.mid).map((m) => m.mid);
  const dup = mids.filter((mid, i) => mids.indexOf(mid) !== i);
  if (dup.length) problems.push(`mids shown twice: ${dup}`);
  const stuck = items.filter((m) => m.state === 'pending' || m.state === 'failed');
  if (stuck.length) problems.push(`still ${stuck.map((m) => `${m.state} "${m.body}"`).join(', ')}`);
  const unexpected = items.filter((m) => m.kind !== 'group' && !texts.includes(m.body));
  if (unexpected.length) problems.push(`unexpected items ${unexpected.map((m) => `"${m.body}"`).join(', ')}`);
  if (problems.length) throw new Error(`${who}'s conversation: ${problems.join('; ')}\nitems: ${JSON.stringify(items)}`);
}

// ---- a scenario's resources ----

/**
 * Runs `fn(sc)` with a fresh data folder; `sc.server()` and `sc.user(name)` make what it
 * needs, all of it closed afterwards. A failure is rethrown with a report appended:
 * every user's connection state, conversation, page errors and console errors (and a
 * screenshot), and the tail of the server log.
 */
export async function scenario(browser, name, fn, { label = 'FAILED' } = {}) {
  const data = mkdtempSync(join(tmpdir(), 'courier-e2e-'));
  const log = [];
  const servers = [];
  const users = [];
  const sc = {
    data,
    /** A server on the scenario's data folder; `{ secret }` runs it without dev login. */
    async server({ secret } = {}) {
      const s = new Server({ data, log, secret });
      servers.push(s);
      return s.start();
    },
    /** A person at a browser of their own; `options` go to the context (locale, timezoneId). */
    async user(userName, { storageState, ...options } = {}) {
      const context = await browser.newContext({ viewport: { width: 1000, height: 700 }, storageState, ...options });
      context.setDefaultTimeout(WAIT_MS);
      const page = await context.newPage();
      const u = new User(userName, context, page);
      users.push(u);
      return u;
    },
    /** Closes `u`'s context (the user goes away); keeps its report for a failure. */
    async leave(u) {
      await u.context.close();
      u.closed = true;
    },
  };
  try {
    await fn(sc);
    for (const u of users) {
      if (u.errors.length) throw new Error(`uncaught error on ${u.name}'s page:\n${u.errors.join('\n')}`);
    }
  } catch (err) {
    const parts = [`\n==== ${name}: what the pages and the server said`];
    for (const u of users) {
      if (!u.closed) {
        try {
          const shot = await u.screenshot(`${label}-${slug(name)}-${u.name}`);
          parts.push(`(screenshot: ${shot})`);
        } catch {
          /* the report matters more than the picture */
        }
        parts.push(await u.report());
      } else {
        parts.push(`--- ${u.name} (context closed)\npage errors: ${u.errors.join('\n') || 'none'}\nconsole: ${u.console.slice(-30).join('\n  ') || 'none'}`);
      }
    }
    parts.push(`--- server log (last lines)\n${log.slice(-40).join('\n') || '(empty)'}`);
    const report = parts.join('\n');
    // Some errors (Playwright's) have had their stack formatted already, and a reporter
    // prints the stack: the report goes on both.
    if (typeof err.stack === 'string' && !err.stack.includes(report)) err.stack += report;
    err.message += report;
    throw err;
  } finally {
    for (const u of users) if (!u.closed) await u.context.close().catch(() => {});
    for (const s of servers) await s.kill('SIGTERM').catch(() => {});
    rmSync(data, { recursive: true, force: true });
  }
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40);
}
