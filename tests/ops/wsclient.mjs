// A WebSocket client for node, with the browser's interface as far as courier.js uses
// it (constructor(url, protocols), readyState, send, close, onopen, onmessage, onclose),
// so the real client library can be driven over wss:// from a test.
//
// Why not node's own WebSocket (node 22) or the `ws` package: the proxy test must choose
// the source address of the TCP connection (127.0.0.2, to tell the client's address from
// the proxy's in courier's log) and trust a self-signed certificate without turning
// verification off; node's WebSocket can do neither, and a package would be a dependency
// for one test. RFC 6455's client side is small: a masked text frame out, frames in, the
// close handshake. Certificates are verified (host name or IP against the SAN) as a
// browser would.

import net from 'node:net';
import tls from 'node:tls';
import { createHash, randomBytes } from 'node:crypto';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/**
 * A WebSocket class bound to `options`:
 *   ca            PEM text of the certificates to trust for wss://
 *   localAddress  source address of the TCP connection (e.g. '127.0.0.2')
 *   headers       extra request headers, { name: value }
 *   gate          optional async () => void, awaited before each connection is made
 *                 (a test holds reconnects back with it while it acts)
 *   onCreate      optional (ws) => void, called with every socket made
 */
export function socketClass(options = {}) {
  return class NodeWebSocket {
    static CONNECTING = CONNECTING;
    static OPEN = OPEN;
    static CLOSING = CLOSING;
    static CLOSED = CLOSED;

    constructor(url, protocols = []) {
      this.url = url;
      this.protocols = typeof protocols === 'string' ? [protocols] : protocols;
      this.readyState = CONNECTING;
      this.protocol = '';
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      /** The HTTP status of the handshake response (101 when it upgraded). */
      this.status = null;
      /** Every frame this socket sent, parsed (the test reads the syncs out of it). */
      this.sentFrames = [];
      this.closeCode = null;
      this.socket = null;
      this.closedFired = false;
      this.abortBeforeConnect = false;
      options.onCreate?.(this);
      Promise.resolve(options.gate?.()).then(
        () => this.connect(),
        () => this.finish(1006),
      );
    }

    connect() {
      if (this.abortBeforeConnect) return this.finish(1006);
      const u = new URL(this.url);
      const secure = u.protocol === 'wss:';
      const port = Number(u.port) || (secure ? 443 : 80);
      const host = u.hostname.replace(/^\[|\]$/g, '');
      const common = { host, port, localAddress: options.localAddress };
      this.socket = secure
        ? tls.connect({
            ...common,
            ca: options.ca,
            // SNI takes host names only; an IP literal is checked against the IP SAN.
            servername: net.isIP(host) ? undefined : host,
          })
        : net.connect(common);
      this.socket.setNoDelay(true);
      this.buf = Buffer.alloc(0);
      this.fragments = null;
      this.key = randomBytes(16).toString('base64');
      this.socket.once(secure ? 'secureConnect' : 'connect', () => this.sendHandshake(u));
      this.socket.on('data', (chunk) => this.onData(chunk));
      this.socket.on('error', (err) => {
        this.error = err;
        this.onerror?.({ error: err });
      });
      this.socket.on('close', () => this.finish(this.closeCode ?? 1006));
    }

    sendHandshake(u) {
      const lines = [
        `GET ${u.pathname}${u.search} HTTP/1.1`,
        `Host: ${u.host}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        `Sec-WebSocket-Key: ${this.key}`,
        'Sec-WebSocket-Version: 13',
      ];
      if (this.protocols.length) lines.push(`Sec-WebSocket-Protocol: ${this.protocols.join(', ')}`);
      for (const [name, value] of Object.entries(options.headers ?? {})) lines.push(`${name}: ${value}`);
      this.socket.write(lines.join('\r\n') + '\r\n\r\n');
    }

    onData(chunk) {
      this.buf = Buffer.concat([this.buf, chunk]);
      if (this.readyState === CONNECTING) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = this.buf.subarray(0, end).toString('latin1').split('\r\n');
        this.buf = this.buf.subarray(end + 4);
        this.status = Number(head[0].split(' ')[1]);
        const headers = new Map();
        for (const line of head.slice(1)) {
          const at = line.indexOf(':');
          headers.set(line.slice(0, at).trim().toLowerCase(), line.slice(at + 1).trim());
        }
        const accept = createHash('sha1').update(this.key + GUID).digest('base64');
        if (this.status !== 101 || headers.get('sec-websocket-accept') !== accept) {
          // A browser reports a refused upgrade as an error, then a close 1006.
          this.onerror?.({ status: this.status });
          this.socket.destroy();
          return;
        }
        this.protocol = headers.get('sec-websocket-protocol') ?? '';
        this.readyState = OPEN;
        this.onopen?.({});
      }
      this.parseFrames();
    }

    parseFrames() {
      for (;;) {
        if (this.buf.length < 2) return;
        const b0 = this.buf[0];
        const b1 = this.buf[1];
        let len = b1 & 0x7f;
        let at = 2;
        if (len === 126) {
          if (this.buf.length < 4) return;
          len = this.buf.readUInt16BE(2);
          at = 4;
        } else if (len === 127) {
          if (this.buf.length < 10) return;
          len = Number(this.buf.readBigUInt64BE(2));
          at = 10;
        }
        if (b1 & 0x80) return this.fail(1002, 'a server must not mask its frames');
        if (this.buf.length < at + len) return;
        const payload = this.buf.subarray(at, at + len);
        this.buf = this.buf.subarray(at + len);
        this.onFrame((b0 & 0x80) !== 0, b0 & 0x0f, Buffer.from(payload));
        if (this.readyState === CLOSED) return;
      }
    }

    onFrame(fin, opcode, payload) {
      switch (opcode) {
        case 0x0: // continuation
        case 0x1: // text
        case 0x2: {
          // binary
          if (opcode !== 0) this.fragments = { opcode, parts: [] };
          if (!this.fragments) return this.fail(1002, 'continuation without a start');
          this.fragments.parts.push(payload);
          if (!fin) return;
          const data = Buffer.concat(this.fragments.parts);
          const text = this.fragments.opcode === 0x1;
          this.fragments = null;
          if (this.readyState === OPEN) this.onmessage?.({ data: text ? data.toString('utf8') : data });
          return;
        }
        case 0x8: {
          const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
          this.closeCode = code;
          if (this.readyState === OPEN) {
            // Echo the close (RFC 6455 §5.5.1); the server then closes TCP first.
            this.writeFrame(0x8, payload.subarray(0, 2));
            this.readyState = CLOSING;
          }
          this.lingerThenDestroy();
          return;
        }
        case 0x9:
          return this.writeFrame(0xa, payload);
        case 0xa:
          return;
        default:
          return this.fail(1002, `unknown opcode ${opcode}`);
      }
    }

    writeFrame(opcode, payload) {
      if (!this.socket || this.socket.destroyed) return;
      const len = payload.length;
      const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
      const head = Buffer.alloc(2 + ext + 4);
      head[0] = 0x80 | opcode;
      head[1] = 0x80 | (ext === 0 ? len : ext === 2 ? 126 : 127);
      if (ext === 2) head.writeUInt16BE(len, 2);
      if (ext === 8) head.writeBigUInt64BE(BigInt(len), 2);
      const mask = randomBytes(4);
      mask.copy(head, 2 + ext);
      const body = Buffer.from(payload);
      for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
      this.socket.write(Buffer.concat([head, body]));
    }

    send(text) {
      if (this.readyState !== OPEN) throw new Error('send on a socket that is not open');
      try {
        this.sentFrames.push(JSON.parse(text));
      } catch {
        this.sentFrames.push(text);
      }
      this.writeFrame(0x1, Buffer.from(text, 'utf8'));
    }

    close(code) {
      if (this.readyState === CLOSING || this.readyState === CLOSED) return;
      if (this.readyState === CONNECTING) {
        this.abortBeforeConnect = true;
        this.socket?.destroy();
        return;
      }
      const payload = Buffer.alloc(code ? 2 : 0);
      if (code) payload.writeUInt16BE(code, 0);
      this.writeFrame(0x8, payload);
      this.readyState = CLOSING;
      this.lingerThenDestroy();
    }

    /** The server closes TCP after the close handshake; a server that does not is cut off. */
    lingerThenDestroy() {
      clearTimeout(this.linger);
      this.linger = setTimeout(() => this.socket?.destroy(), 2000);
      this.linger.unref();
    }

    fail(code, why) {
      this.failure = why;
      this.closeCode = code;
      this.socket?.destroy();
    }

    finish(code) {
      if (this.closedFired) return;
      this.closedFired = true;
      clearTimeout(this.linger);
      this.readyState = CLOSED;
      this.closeCode = code;
      this.onclose?.({ code, wasClean: code !== 1006 });
    }
  };
}
