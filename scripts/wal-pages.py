#!/usr/bin/env python3
"""Which B-trees a courier server's commits write, from its write-ahead log.

    scripts/wal-pages.py DATA_DIR

Reads DATA_DIR/courier.db-wal frame by frame (only the frames of the current WAL
generation: their salts match the header's), groups them into commits, and names the table
or index every page belongs to (SQLite's dbstat, on a copy of the database and its WAL).
Prints the frames per commit, per B-tree. Divide by the messages per commit (the server's
`courier_store_jobs_total` over `courier_store_batches_total` on /metrics) for the pages
per message.

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


def commits(wal):
    """Page numbers of the WAL's frames, one list per commit, in commit order."""
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(
        ">8I", wal[:WAL_HEADER]
    )
    done, current = [], []
    offset = WAL_HEADER
    while offset + FRAME_HEADER + page_size <= len(wal):
        page, size_after_commit, s1, s2 = struct.unpack(">4I", wal[offset : offset + 16])
        # Frames of an earlier generation (left behind past the current end) have old salts.
        if (s1, s2) != (salt1, salt2):
            break
        current.append(page)
        if size_after_commit:
            done.append(current)
            current = []
        offset += FRAME_HEADER + page_size
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
    with open(db + "-wal", "rb") as f:
        wal = f.read()
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
