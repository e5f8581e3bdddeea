"""Convert a schema-1 store (every reading's full JSON message) to schema 2 (compact
readings, :mod:`gateway.storecodec`) in place, resumable after a kill.

Why in place and in batches: a substation's store holds millions of readings and sits on
a flash card with little free room, so a copy is out of the question, and a gateway can
lose power half-way. Each batch is one transaction that rewrites up to ``batch`` readings
and moves the progress mark (``meta.migrate_seq``, the highest seq looked at) with them,
so a kill at any moment leaves every reading either converted or not — never lost, never
doubled, ``seq`` untouched — and the next run goes on after the mark.
``meta.schema_version`` becomes 2 only after the last batch. A reading whose compact form
would not render back to exactly its stored text (an older message layout) is kept
verbatim: :data:`gateway.storecodec.PAYLOAD_SQL` passes it through.

The gateway runs this when it opens a schema-1 store (:meth:`gateway.store.Store.open`);
``python -m gateway.storemigrate STORE`` runs it alone (the gateway must be stopped: it
takes the store's lock for itself, as ``amr-gateway sink drop`` does). The freed space is
handed back to the filesystem with ``VACUUM`` at the end when the disk has room for the
copy SQLite makes; otherwise the store reuses it for new readings.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sqlite3
import sys
from pathlib import Path

from gateway.storecodec import (
    SHAPE_DDL,
    Shape,
    ShapeKey,
    compact_of_payload,
    insert_shapes,
    key_of_spec,
    shape_from_spec,
    spec_of,
)

TARGET_VERSION = 2
"""The schema this converts to (``gateway.store.SCHEMA_VERSION``)."""
PROGRESS_KEY = "migrate_seq"
"""``meta`` key of the highest seq a finished batch looked at."""
BATCH = 2000
"""Readings per transaction: about a megabyte of old text, a fraction of a second."""


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def ensure_layout(conn: sqlite3.Connection) -> None:
    """Add what schema 2 adds to the tables (the ``shape`` column, ``reading_shape``)."""
    cols = {str(r[1]) for r in conn.execute("PRAGMA table_info(outbox)")}
    if "shape" not in cols:
        conn.execute("ALTER TABLE outbox ADD COLUMN shape INTEGER")
    conn.execute(SHAPE_DDL)


def migrate(conn: sqlite3.Connection, path: Path, log: logging.Logger, batch: int = BATCH) -> int:
    """Convert the store on ``conn`` (autocommit mode) to schema 2; returns the readings
    converted by this call. A store at schema 2 already is left as it is."""
    ensure_layout(conn)
    version = _meta(conn, "schema_version")
    if version is not None and int(version) >= TARGET_VERSION:
        return 0
    done = int(_meta(conn, PROGRESS_KEY) or 0)
    shapes: dict[ShapeKey, Shape] = {}
    next_id = 1
    for shape_id, spec in conn.execute("SELECT id, spec FROM reading_shape"):
        shapes[key_of_spec(spec)] = shape_from_spec(int(shape_id), spec)
        next_id = max(next_id, int(shape_id) + 1)
    total = int(conn.execute("SELECT count(*) FROM outbox WHERE kind='reading' AND shape IS NULL AND seq > ?",
                             (done,)).fetchone()[0])
    if total:
        log.warning("converting the local store %s to the compact schema %d: %d readings to go (after seq %d); "
                    "a kill is safe, the next start resumes", path, TARGET_VERSION, total, done)
    converted = kept = 0
    new: dict[ShapeKey, Shape] = {}

    def get(key: ShapeKey, marks: tuple[str, ...]) -> Shape:
        nonlocal next_id
        got = shapes.get(key) or new.get(key)
        if got is None:
            got = new[key] = shape_from_spec(next_id, spec_of(key, marks))
            next_id += 1
        return got

    while True:
        new.clear()

        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT seq, slot, ts, quality, payload FROM outbox WHERE seq > ? AND kind='reading' "
                "AND shape IS NULL ORDER BY seq LIMIT ?", (done, batch)).fetchall()
            if not rows:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                             (str(TARGET_VERSION),))
                conn.execute("DELETE FROM meta WHERE key=?", (PROGRESS_KEY,))
                conn.execute("COMMIT")
                break
            updates = []
            for seq, slot, ts, quality, payload in rows:
                got = compact_of_payload(payload, get, int(seq), float(slot), float(ts), str(quality))
                if got is None:
                    kept += 1
                    continue
                shape, body = got
                updates.append((body, shape.id, seq))
            insert_shapes(conn, new)
            conn.executemany("UPDATE outbox SET payload=?, shape=? WHERE seq=?", updates)
            done = int(rows[-1][0])
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (PROGRESS_KEY, str(done)))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        shapes.update(new)
        converted += len(updates)
    if total:
        log.warning("the local store %s is at schema %d: %d readings converted, %d kept verbatim",
                    path, TARGET_VERSION, converted, kept)
        _compact_file(conn, path, log)
    return converted


def _compact_file(conn: sqlite3.Connection, path: Path, log: logging.Logger) -> None:
    """Give the space the conversion freed back to the filesystem (``VACUUM``) when the disk
    has room for the copy SQLite makes (at most the size of the file: the copy holds only the
    compact rows); otherwise new readings reuse it."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        size = path.stat().st_size
        st = os.statvfs(path.parent)
    except OSError:
        return
    if st.f_bavail * st.f_frsize < size:
        log.warning("not enough free disk space to hand the space the conversion freed in %s back to the "
                    "filesystem (VACUUM); new readings reuse it", path)
        return
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:   # the store is consistent either way; the pages are reused later
        log.warning("could not hand the freed space of %s back to the filesystem (%s); "
                    "new readings reuse it", path, exc)


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.storemigrate STORE [--batch N]``: convert a stopped gateway's store."""
    ap = argparse.ArgumentParser(prog="python -m gateway.storemigrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path, help="the store file (data_dir/<gateway id>.db or as configured)")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"readings per transaction (default {BATCH})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    log = logging.getLogger("amr.store")
    if not args.store.is_file():
        print(f"no store at {args.store}: give the path of the gateway's store file", file=sys.stderr)
        return 2
    fd = os.open(str(args.store) + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"{args.store} is open in a running gateway, which converts it itself; stop it to run this alone",
                  file=sys.stderr)
            return 1
        conn = sqlite3.connect(args.store, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        try:
            n = migrate(conn, args.store, log, max(1, args.batch))
        finally:
            conn.close()
        print(f"{args.store}: schema {TARGET_VERSION}, {n} readings converted by this run")
        return 0
    finally:
        os.close(fd)


if __name__ == "__main__":
    raise SystemExit(main())
