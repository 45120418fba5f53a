#!/usr/bin/env python3
"""Issue 13's attacks against a running `courier serve`, measured from outside.

    scripts/abuse.py history-flood --addr 127.0.0.1:8080 --secret S --pid PID [--conns 40]
    scripts/abuse.py half-messages --addr 127.0.0.1:8080 --pid PID [--conns 300] [--path /echo]
                                   [--announce BYTES] [--send BYTES]
    scripts/abuse.py bystander --addr 127.0.0.1:8080 --secret S [--flooders 4] [--seconds 10]
    scripts/abuse.py invented-users --addr 127.0.0.1:8080 --secret S --pid PID [--count 1000000]

invented-users: one user creates groups naming 999 users nobody has seen, until COUNT
users exist; reports the server's RSS before and after (restart the server on the same
data folder and read its RSS to see what they cost at start).

Each prints one JSON line of figures. Only loopback addresses are accepted, every loop is
bounded in count and time, and every socket is closed at the end.

history-flood: as one user, stores 100 messages of 16 KiB of U+0001 (JSON writes each
character as six bytes) in the note-to-self conversation; then CONNS connections with a
4 KiB receive buffer each ask for `history {limit: 100}` 100 times and never read. Reports
the server's peak RSS over the baseline, and `/healthz` latency meanwhile.

half-messages: CONNS connections each start a message of ANNOUNCE bytes (1 MiB) and send
SEND bytes of it (64 KiB), then stall. Reports how the server's RSS grew, and how many connections it closed (1008 at the
message timeout, 1009 at the endpoint's limit) or refused.

bystander: FLOODERS connections send requests of REQUEST_BYTES (16000) as fast as the server takes them
(the byte budget and the request budget both apply) while one bystander pings once every
10 ms; reports the bystander's ping round trip p50/p99/max.
"""

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def loopback(addr):
    host, port = addr.rsplit(":", 1)
    if not (host.startswith("127.") or host in ("localhost", "[::1]", "::1")):
        sys.exit("abuse.py: loopback addresses only")
    return host, int(port)


def token(user, secret):
    courier = os.environ.get("COURIER", os.path.join(HERE, "..", "target", "release", "courier"))
    out = subprocess.run(
        [courier, "token", user, "--jwt-secret", secret, "--ttl", "1h"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def connect(addr, path, rcvbuf=None, timeout=10.0):
    host, port = loopback(addr)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    status = int(head.split(b" ", 2)[1])
    return sock, status


def frame(payload, opcode=0x1, fin=True, announced=None):
    """A masked client frame; `announced` overrides the length in the header."""
    length = len(payload) if announced is None else announced
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def read_frame(sock):
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    b0, b1 = exact(2)
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", exact(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exact(8))[0]
    return b0 & 0x0F, exact(length)


def read_json(sock, want):
    while True:
        opcode, payload = read_frame(sock)
        if opcode == 0x8:
            raise ConnectionError(f"closed: {payload[:2].hex()}")
        if opcode == 0x1:
            value = json.loads(payload)
            if value.get("type") == want:
                return value


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def healthz_ms(addr):
    host, port = loopback(addr)
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        while sock.recv(4096):
            pass
    return (time.perf_counter() - started) * 1000


def quantile(values, q):
    ordered = sorted(values)
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def history_flood(args):
    user = "mallory"
    sock, status = connect(args.addr, f"/ws?token={token(user, args.secret)}")
    assert status == 101, status
    read_json(sock, "welcome")
    body = "\u0001" * (16 * 1024)
    for i in range(100):
        request = {"type": "send", "cid": f"flood-{i}", "to": f"user:{user}", "body": body}
        sock.sendall(frame(json.dumps(request).encode()))
        read_json(sock, "sent")
    sock.close()
    baseline = rss_kib(args.pid)
    request = frame(json.dumps({"type": "history", "conv": f"dm:{user}:{user}", "limit": 100}).encode())
    tok = token(user, args.secret)
    flooders = []
    refused = 0
    for _ in range(args.conns):
        conn, status = connect(args.addr, f"/ws?token={tok}", rcvbuf=4096, timeout=60)
        if status != 101:
            refused += 1
            conn.close()
            continue
        conn.sendall(request * 100)
        flooders.append(conn)
    peak = baseline
    latencies = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(args.pid))
        latencies.append(healthz_ms(args.addr))
        time.sleep(0.1)
    for conn in flooders:
        conn.close()
    print(json.dumps({
        "attack": "history-flood",
        "connections": len(flooders),
        "refused": refused,
        "rss_baseline_mib": round(baseline / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_mib": round((peak - baseline) / 1024, 1),
        "healthz_ms_p50": quantile(latencies, 0.5),
        "healthz_ms_p99": quantile(latencies, 0.99),
        "healthz_ms_max": round(max(latencies), 2),
        "samples": len(latencies),
    }))


def half_messages(args):
    path = args.path
    if path == "/ws":
        path = f"/ws?token={token('dripper', args.secret)}"
    baseline = rss_kib(args.pid)
    conns, refused = [], {}
    for _ in range(args.conns):
        conn, status = connect(args.addr, path)
        if status != 101:
            refused[status] = refused.get(status, 0) + 1
            conn.close()
            continue
        try:
            conn.sendall(frame(b"x" * args.send, announced=args.announce))
        except OSError:
            pass
        conns.append(conn)
    peak = baseline
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(args.pid))
        time.sleep(0.2)
    closes = {}
    for conn in conns:
        conn.settimeout(0.5)
        code = "open"
        try:
            while True:
                opcode, payload = read_frame(conn)
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else "none"
                    break
        except (socket.timeout, ConnectionError, OSError):
            pass
        closes[str(code)] = closes.get(str(code), 0) + 1
        conn.close()
    print(json.dumps({
        "attack": "half-messages",
        "path": args.path,
        "announced": args.announce,
        "sent": args.send,
        "connections": len(conns),
        "refused": refused,
        "rss_baseline_mib": round(baseline / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_mib": round((peak - baseline) / 1024, 1),
        "closed_by_code": closes,
    }))


def bystander(args):
    stop = threading.Event()
    sent = [0] * args.flooders

    def flood(index):
        tok = token(f"flooder{index}", args.secret)
        conn, status = connect(args.addr, f"/ws?token={tok}")
        assert status == 101, status
        # Padded pings: each is read, parsed in full and answered.
        request = frame(json.dumps({"type": "ping", "pad": "p" * args.request_bytes}).encode())
        # Blocking sends: a send cut by a timeout would leave half a frame on the wire.
        conn.settimeout(None)
        while not stop.is_set():
            try:
                conn.sendall(request)
                sent[index] += 1
                while conn.recv(65536, socket.MSG_DONTWAIT):
                    pass
            except BlockingIOError:
                pass
            except OSError:
                break
        conn.close()

    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(args.flooders)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    conn, status = connect(args.addr, f"/ws?token={token('bystander', args.secret)}")
    assert status == 101, status
    read_json(conn, "welcome")
    rtts = []
    deadline = time.monotonic() + args.seconds
    rid = 0
    while time.monotonic() < deadline:
        rid += 1
        started = time.perf_counter()
        conn.sendall(frame(json.dumps({"type": "ping", "rid": rid}).encode()))
        while True:
            value = read_json(conn, "pong")
            if value.get("rid") == rid:
                break
        rtts.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    conn.close()
    print(json.dumps({
        "attack": "bystander",
        "flooders": args.flooders,
        "request_bytes": args.request_bytes,
        "flood_requests_sent": sum(sent),
        "pings": len(rtts),
        "ping_ms_p50": quantile(rtts, 0.5),
        "ping_ms_p99": quantile(rtts, 0.99),
        "ping_ms_max": round(max(rtts), 2),
    }))


def invented_users(args):
    tok = token("inventor", args.secret)
    conn, status = connect(args.addr, f"/ws?token={tok}", timeout=120)
    assert status == 101, status
    read_json(conn, "welcome")
    baseline = rss_kib(args.pid)
    started = time.monotonic()
    made, refused, rid = 0, 0, 0
    while made < args.count:
        rid += 1
        members = [f"n{made + i}" for i in range(min(999, args.count - made))]
        conn.sendall(frame(json.dumps({"type": "group_create", "name": "g", "members": members, "rid": rid}).encode()))
        while True:
            opcode, payload = read_frame(conn)
            value = json.loads(payload) if opcode == 0x1 else {}
            if value.get("type") == "msg":
                # The group entries pushed to the inventor: acked, or it is closed 4008.
                conn.sendall(frame(json.dumps({"type": "ack", "seq": value["seq"]}).encode()))
            if value.get("rid") == rid:
                break
        if value.get("type") == "group":
            made += len(members)
        else:
            refused += 1
            if value.get("code") == "rate_limited":
                time.sleep(0.05)
            else:
                break
    conn.close()
    print(json.dumps({
        "attack": "invented-users",
        "users_named": made,
        "refused": refused,
        "seconds": round(time.monotonic() - started, 1),
        "rss_before_mib": round(baseline / 1024, 1),
        "rss_after_mib": round(rss_kib(args.pid) / 1024, 1),
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="attack", required=True)
    for name in ("history-flood", "half-messages", "bystander", "invented-users"):
        p = sub.add_parser(name)
        p.add_argument("--addr", default="127.0.0.1:8080")
        p.add_argument("--secret", default="")
        p.add_argument("--pid", type=int)
        p.add_argument("--seconds", type=float, default=15)
    sub.choices["history-flood"].add_argument("--conns", type=int, default=40)
    sub.choices["half-messages"].add_argument("--conns", type=int, default=300)
    sub.choices["half-messages"].add_argument("--path", default="/echo")
    sub.choices["half-messages"].add_argument("--announce", type=int, default=1 << 20)
    sub.choices["half-messages"].add_argument("--send", type=int, default=64 << 10)
    sub.choices["invented-users"].add_argument("--count", type=int, default=1_000_000)
    sub.choices["bystander"].add_argument("--flooders", type=int, default=4)
    sub.choices["bystander"].add_argument("--request-bytes", type=int, default=16000)
    args = parser.parse_args()
    attacks = {
        "history-flood": history_flood,
        "half-messages": half_messages,
        "bystander": bystander,
        "invented-users": invented_users,
    }
    attacks[args.attack](args)


if __name__ == "__main__":
    main()
