#!/usr/bin/env python3
"""Which B-trees a courier server's commits write, from its write-ahead log.

    scripts/wal-pages.py DATA_DIR

Reads DATA_DIR/courier.db-wal frame by frame (only the frames of the current WAL
generation: their salts match the header's), groups them into commits, and names the table
or index every page belongs to (SQLite's dbstat, on a copy of the database and its WAL).
Prints the frames per commit, per B-tree. For pages per message, divide by the messages
per commit around the same moment: the growth of `courier_store_jobs_total` over that of
`courier_store_batches_total` on /metrics in the second before the stop (their totals since
start are a different average).

The store's cost per message is the pages it writes: each frame is written to the WAL,
checksummed, and copied back by the next checkpoint. This is how BENCHMARKS.md's notes
count them. Run it on a server that is not writing: stopped with `kill -STOP PID` in the
middle of a load (then `kill -CONT PID`), or after `kill -9`. A clean shutdown checkpoints
and leaves nothing to read. Needs Python's sqlite3 with dbstat (Debian's has it).
"""

import collections
import os
import shutil
import sqlite3
import struct
import sys
import tempfile

WAL_HEADER = 32
FRAME_HEADER = 24


def checksum(data, s1, s2, byteorder):
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from (s1, s2)."""
    words = struct.unpack(("<" if byteorder == "little" else ">") + f"{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def commits(wal):
    """Page numbers of the WAL's valid frames, one list per commit, in commit order. A frame
    is valid as SQLite's recovery sees it: the header's salts and a checksum chained from
    the header through every frame before it, so a torn tail after `kill -9` stops it."""
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(
        ">8I", wal[:WAL_HEADER]
    )
    if magic not in (0x377F0682, 0x377F0683):
        sys.exit(f"not a WAL file (magic {magic:#x})")
    # The low bit of the magic says in which byte order the checksums read the words.
    order = "big" if magic & 1 else "little"
    s1, s2 = checksum(wal[:24], 0, 0, order)
    if (s1, s2) != (c1, c2):
        sys.exit("the WAL header's checksum does not match: nothing in it is valid")
    done, current = [], []
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(wal):
        header = wal[offset : offset + FRAME_HEADER]
        page, size_after_commit, f1, f2, k1, k2 = struct.unpack(">6I", header)
        # Frames of an earlier generation (left behind past the current end) have old salts.
        if (f1, f2) != (salt1, salt2):
            break
        body = wal[offset + FRAME_HEADER : offset + FRAME_HEADER + page_size]
        t1, t2 = checksum(header[:8] + body, s1, s2, order)
        if (t1, t2) != (k1, k2):
            break
        s1, s2 = t1, t2
        current.append(page)
        if size_after_commit:
            done.append(current)
            current = []
        offset += FRAME_HEADER + page_size
    # Frames after the last commit frame belong to no commit: recovery ignores them too.
    return page_size, done


def owners(db):
    """Page number -> name of the table or index it belongs to, from copies (opening the
    original would run recovery on it)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "copy.db")
        shutil.copy(db, copy)
        shutil.copy(db + "-wal", copy + "-wal")
        conn = sqlite3.connect(copy)
        try:
            return dict(conn.execute("SELECT pageno, name FROM dbstat"))
        finally:
            conn.close()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    db = os.path.join(sys.argv[1], "courier.db")
    try:
        with open(db + "-wal", "rb") as f:
            wal = f.read()
    except FileNotFoundError:
        sys.exit(f"no {db}-wal: not a courier data folder, or cleanly shut down (no WAL left)")
    if len(wal) < WAL_HEADER:
        sys.exit("the WAL is empty: nothing committed since the last checkpoint restarted it")
    page_size, groups = commits(wal)
    if not groups:
        sys.exit("no complete commit in the WAL")
    names = owners(db)
    per_tree = collections.Counter()
    for group in groups:
        for page in group:
            per_tree[names.get(page, "(free or new)")] += 1
    frames = sum(len(g) for g in groups)
    print(f"{len(groups)} commits, {frames} frames of {page_size} B, "
          f"{frames / len(groups):.1f} frames per commit")
    for name, count in per_tree.most_common():
        print(f"  {name:32} {count / len(groups):7.2f} per commit")


if __name__ == "__main__":
    main()
